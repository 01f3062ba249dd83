"""The built-in test zoo: small models that cover the structures a structural pruner must handle.

Each model is registered by name with the structures it covers as tags, so a test can run over
the whole zoo or over the models that have, say, residual adds::

    from torchslim.models._zoo import get_zoo_model, list_zoo

    for name in list_zoo(tags=["residual"]):
        entry = get_zoo_model(name)
        model = entry.build()
        out = model(entry.example_inputs(2))  # or *inputs for a tuple, **inputs for a dict

Every model has under 200k parameters and runs a forward pass in milliseconds on a CPU. Example
inputs come from a fixed seed, so they are the same on every call and leave the global RNG alone.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import ConfigError, ModelSpecError

__all__ = ["ZOO_TAGS", "ZooModel", "get_zoo_model", "list_zoo", "register_zoo_model"]

_logger = logging.getLogger(__name__)

#: Tag -> the structure a model with that tag contains.
_TAG_MEANING = {
    "conv": "dense nn.Conv2d layers",
    "bn": "BatchNorm after conv or linear layers",
    "linear": "nn.Linear layers",
    "flatten": "a spatial feature map (C*H*W) flattened into a Linear layer",
    "residual": "residual adds (x + f(x)), through identity or projection shortcuts",
    "depthwise": "depthwise convs (groups == channels)",
    "grouped": "grouped convs (1 < groups < channels)",
    "transposed_conv": "nn.ConvTranspose2d upsampling",
    "concat": "torch.cat of branches along channels or features",
    "split": "torch.split / torch.chunk of channels",
    "channel_shuffle": "a channel shuffle by view / transpose / reshape",
    "se": "squeeze-and-excitation: pooled gates multiplied into channels",
    "attention": "hand-written multi-head attention that reshapes q, k, v into heads",
    "mha": "torch.nn.MultiheadAttention",
    "layernorm": "nn.LayerNorm",
    "free_params": "nn.Parameter used directly in forward (class token, position embedding, scale)",
    "embedding": "nn.Embedding on integer token ids",
    "recurrent": "nn.LSTM / nn.GRU",
    "multi_input": "forward takes several positional tensors",
    "dict_input": "forward takes keyword inputs (Hugging Face style)",
    "dict_output": "forward returns a dict of tensors",
    "dataclass_output": "forward returns a dataclass instance",
    "groupnorm": "nn.GroupNorm",
    "instancenorm": "nn.InstanceNorm2d with affine parameters",
    "prelu": "nn.PReLU with one slope per channel",
}

#: The tag vocabulary; registering a model with any other tag raises :class:`ConfigError`.
ZOO_TAGS: frozenset[str] = frozenset(_TAG_MEANING)


@dataclass(frozen=True)
class ZooModel:
    """A registered zoo model.

    Attributes:
        name: Registry name, e.g. ``"residual"``.
        build: Returns a fresh, randomly initialised model in eval mode; keyword arguments
            (e.g. ``num_classes=5``) are passed to the registered factory.
        example_inputs: Maps a batch size to example inputs: a tensor, a tuple of positional
            tensors, or a dict of keyword inputs. The same batch size gives the same values.
        tags: Structures the model covers, all from :data:`ZOO_TAGS`.
        description: One line on what the model is.
    """

    name: str
    build: Callable[..., nn.Module]
    example_inputs: Callable[[int], Any]
    tags: frozenset[str]
    description: str


_REGISTRY: dict[str, ZooModel] = {}


def register_zoo_model(
    name: str, *, tags: Iterable[str], inputs: Callable[[int], Any], description: str = ""
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a factory in the zoo.

    The factory returns a fresh module when called without arguments; it may accept keyword
    overrides (e.g. ``num_classes``), which :attr:`ZooModel.build` passes on.

    Args:
        name: Registry name; must not be taken.
        tags: Structures the model covers, from :data:`ZOO_TAGS`.
        inputs: Maps a batch size to example inputs.
        description: One line; defaults to the first line of the factory's docstring.

    Returns:
        A decorator that registers the factory and returns it unchanged.

    Raises:
        ConfigError: when the name is taken or a tag is not in :data:`ZOO_TAGS`.
    """
    tag_set = frozenset([tags] if isinstance(tags, str) else tags)
    unknown = sorted(tag_set - ZOO_TAGS)
    if unknown:
        raise ConfigError(
            f"zoo model {name!r} has unknown tags {unknown}; use tags from ZOO_TAGS "
            f"({', '.join(sorted(ZOO_TAGS))}) or add the new tag to ZOO_TAGS"
        )
    if name in _REGISTRY:
        raise ConfigError(f"a zoo model named {name!r} is already registered; pick another name")

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:  # registered between decorator creation and application
            raise ConfigError(
                f"a zoo model named {name!r} is already registered; pick another name"
            )
        doc = (factory.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ZooModel(
            name=name,
            build=lambda **kwargs: factory(**kwargs).eval(),
            example_inputs=inputs,
            tags=tag_set,
            description=description or (doc[0] if doc else ""),
        )
        _logger.debug("registered zoo model %r with tags %s", name, sorted(tag_set))
        return factory

    return decorator


def list_zoo(pattern: str = "*", *, tags: Iterable[str] | None = None) -> list[str]:
    """Sorted names of zoo models that match an fnmatch ``pattern`` and have all of ``tags``.

    Raises:
        ConfigError: when a tag is not in :data:`ZOO_TAGS` (a typo would otherwise match nothing).
    """
    wanted = frozenset([tags] if isinstance(tags, str) else tags or ())
    unknown = sorted(wanted - ZOO_TAGS)
    if unknown:
        raise ConfigError(f"unknown zoo tags {unknown}; known tags: {', '.join(sorted(ZOO_TAGS))}")
    return sorted(
        name
        for name, entry in _REGISTRY.items()
        if fnmatch.fnmatchcase(name, pattern) and wanted <= entry.tags
    )


def get_zoo_model(name: str) -> ZooModel:
    """The registered zoo model called ``name``.

    Raises:
        ModelSpecError: when no zoo model has that name; the message lists close matches and
            the known names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ModelSpecError(
            f"unknown zoo model {name!r}; {hint}known zoo models: {', '.join(sorted(_REGISTRY))}"
        ) from None


# --- example inputs ------------------------------------------------------------------------------

VOCAB = 100  # token ids of the text models lie in [0, VOCAB)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _image(batch: int, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=_gen())


def _tokens(batch: int, length: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=_gen())


def _image_and_vector(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen()
    return torch.randn(batch, 3, 32, 32, generator=g), torch.randn(batch, 8, generator=g)


def _hf_inputs(batch: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (batch, 12), generator=_gen())
    mask = torch.ones_like(ids)
    mask[1::2, -4:] = 0  # every second sequence is padded
    return {"input_ids": ids, "attention_mask": mask}


# --- building blocks -----------------------------------------------------------------------------


def conv_bn(
    cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU
) -> nn.Sequential:
    """Conv2d (no bias, same padding) + BatchNorm2d, then ``act`` unless it is None."""
    layers = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class ConvChain(nn.Sequential):
    """Plain Conv-BN-ReLU chain with max pooling, flattened from an 8x8 map into a classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            conv_bn(3, 16),
            conv_bn(16, 16),
            nn.MaxPool2d(2),
            conv_bn(16, 32),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 8 * 8, 32),
            nn.ReLU(),
            nn.Linear(32, num_classes),
        )


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 strided projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride=stride)
        self.conv2 = conv_bn(cout, cout, act=None)
        self.shortcut = (
            conv_bn(cin, cout, k=1, stride=stride, act=None)
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet(nn.Module):
    """Tiny ResNet: identity and projection basic blocks, global pool, linear classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = nn.Sequential(BasicBlock(16, 32, stride=2), BasicBlock(32, 32))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1, depthwise 3x3, project 1x1; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 4) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            conv_bn(cin, hidden, k=1, act=nn.ReLU6),
            conv_bn(hidden, hidden, stride=stride, groups=hidden, act=nn.ReLU6),
            conv_bn(hidden, cout, k=1, act=None),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNet(nn.Module):
    """Tiny MobileNetV2: inverted residuals with and without the skip, 1x1 head, classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16, act=nn.ReLU6),
            InvertedResidual(16, 16),
            InvertedResidual(16, 24, stride=2),
            InvertedResidual(24, 24),
            conv_bn(24, 64, k=1, act=nn.ReLU6),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(x.flatten(1))


class ResNeXtBlock(nn.Module):
    """ResNeXt bottleneck: 1x1, grouped 3x3 (groups=4), 1x1, identity residual."""

    def __init__(self, channels: int, width: int, groups: int = 4) -> None:
        super().__init__()
        self.reduce = conv_bn(channels, width, k=1)
        self.grouped = conv_bn(width, width, groups=groups)
        self.expand = conv_bn(width, channels, k=1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.expand(self.grouped(self.reduce(x))))


class GroupedSegNet(nn.Module):
    """Encoder-decoder: strided stem, ResNeXt blocks, ConvTranspose2d upsampling, per-pixel head."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32, stride=2)
        self.blocks = nn.Sequential(ResNeXtBlock(32, 32), ResNeXtBlock(32, 32))
        self.up = nn.ConvTranspose2d(32, 16, kernel_size=2, stride=2)
        self.up_bn = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(F.relu(self.up_bn(self.up(x))))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: (B, g*c, H, W) -> view (B, g, c) -> transpose -> reshape."""
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2)
    return x.reshape(b, c, h, w)


class InceptionBlock(nn.Module):
    """Three branches (1x1; 1x1 then 3x3; max pool then 1x1) concatenated along channels."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = conv_bn(cin, 8, k=1)
        self.b2 = nn.Sequential(conv_bn(cin, 8, k=1), conv_bn(8, 16))
        self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, 8, k=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x)], dim=1)


class DenseLayer(nn.Module):
    """DenseNet layer: the input concatenated with ``growth`` new channels."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.conv = conv_bn(cin, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(x)], dim=1)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: chunk channels in two, transform one half, concatenate, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            conv_bn(half, half, k=1),
            conv_bn(half, half, groups=half, act=None),
            conv_bn(half, half, k=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, work = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, self.branch(work)], dim=1), 2)


class UnevenSplit(nn.Module):
    """Uneven torch.split of channels; the larger part is transformed and concatenated first."""

    def __init__(self, channels: int, first: int) -> None:
        super().__init__()
        self.sizes = [first, channels - first]
        self.conv = conv_bn(channels - first, channels - first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, self.sizes, dim=1)
        return torch.cat([self.conv(b), a], dim=1)


class ConcatSplitNet(nn.Module):
    """Inception and DenseNet concatenations, ShuffleNetV2 chunk and shuffle, an uneven split."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.inception = InceptionBlock(16)  # -> 32 channels
        self.dense = DenseLayer(32, 16)  # -> 48 channels
        self.transition = nn.Sequential(conv_bn(48, 32, k=1), nn.AvgPool2d(2))
        self.shuffle = ShuffleUnit(32)
        self.split = UnevenSplit(32, 8)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transition(self.dense(self.inception(self.stem(x))))
        x = self.split(self.shuffle(x))
        return self.fc(x.mean(dim=(2, 3)))


class SqueezeExcite(nn.Module):
    """SE gate: pool, reduce, expand, sigmoid, multiply into channels; Linear or 1x1 conv FCs."""

    def __init__(self, channels: int, reduced: int, use_conv: bool = False) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:  # torchvision / timm style
            self.reduce, self.expand = (
                nn.Conv2d(channels, reduced, 1),
                nn.Conv2d(reduced, channels, 1),
            )
        else:  # original SENet style
            self.reduce, self.expand = nn.Linear(channels, reduced), nn.Linear(reduced, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        if not self.use_conv:
            s = s.flatten(1)
        s = torch.sigmoid(self.expand(F.relu(self.reduce(s))))
        return x * s.view(x.shape[0], -1, 1, 1)


class SENet(nn.Module):
    """MobileNetV3-like: hardswish stem, conv and depthwise blocks gated by SE, SiLU, classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, stride=2, act=nn.Hardswish)
        self.conv = conv_bn(16, 32, act=nn.SiLU)
        self.se1 = SqueezeExcite(32, 8)
        self.dw = conv_bn(32, 32, groups=32, act=nn.Hardswish)
        self.se2 = SqueezeExcite(32, 8, use_conv=True)
        self.project = conv_bn(32, 48, k=1, act=nn.SiLU)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se1(self.conv(self.stem(x)))
        x = self.project(self.se2(self.dw(x)))
        return self.fc(x.mean(dim=(2, 3)))


class Attention(nn.Module):
    """Multi-head self-attention: fused qkv projection split into heads by view/permute."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (b, heads, n, head_dim)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    """Per-channel learnable scale (CaiT), a free parameter multiplied into the residual branch."""

    def __init__(self, dim: int, init: float = 0.1) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: attention and GELU MLP, each layer-scaled into a residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim)
        )
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class TinyViT(nn.Module):
    """Tiny ViT: conv patch embedding, class token and position embedding, two blocks, head."""

    def __init__(
        self, num_classes: int = 10, dim: int = 64, depth: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=4, stride=4)  # 32x32 -> 8x8 patches
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + 8 * 8, dim) * 0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (b, patches, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class MHAEncoder(nn.Module):
    """Token classifier: embeddings, nn.MultiheadAttention and MLP residual blocks, mean pool."""

    def __init__(self, num_classes: int = 5, dim: int = 32, heads: int = 4, max_len: int = 16):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(dim=1))


class LSTMClassifier(nn.Module):
    """Embedding, two-layer LSTM, linear classifier on the last time step."""

    def __init__(self, num_classes: int = 5, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.lstm = nn.LSTM(dim, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(ids))
        return self.fc(out[:, -1])


class GRUClassifier(nn.Module):
    """Embedding, bidirectional GRU, linear classifier on the concatenated final hidden states."""

    def __init__(self, num_classes: int = 5, dim: int = 32, hidden: int = 48) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.gru = nn.GRU(dim, hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(self.embed(ids))  # h: (2 directions, b, hidden)
        return self.fc(torch.cat([h[0], h[1]], dim=1))


class ImageAndVector(nn.Module):
    """Two inputs: CNN features of an image concatenated with an MLP of a vector, then a head."""

    def __init__(self, num_classes: int = 10, extra_dim: int = 8) -> None:
        super().__init__()
        self.cnn = nn.Sequential(conv_bn(3, 16, stride=2), conv_bn(16, 32, stride=2))
        self.mlp = nn.Sequential(nn.Linear(extra_dim, 16), nn.ReLU())
        self.head = nn.Linear(32 + 16, num_classes)

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        features = self.cnn(image).mean(dim=(2, 3))
        return self.head(torch.cat([features, self.mlp(extra)], dim=1))


class DictIO(nn.Module):
    """Hugging Face style: ``input_ids``/``attention_mask`` keywords in, logits/hidden dict out."""

    def __init__(self, num_classes: int = 5, dim: int = 32, max_len: int = 12) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.classifier = nn.Linear(dim, num_classes)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        x = self.tok(input_ids) + self.pos(
            torch.arange(input_ids.shape[1], device=input_ids.device)
        )
        hidden = x + self.ffn(self.norm(x))
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return {"logits": self.classifier(pooled), "hidden": hidden}


class NormsNet(nn.Module):
    """GroupNorm, affine InstanceNorm2d, per-channel PReLU, BatchNorm1d on pooled features."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(4, 16)
        self.act1 = nn.PReLU(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.inorm = nn.InstanceNorm2d(32, affine=True)
        self.act2 = nn.PReLU(32)
        self.fc1 = nn.Linear(32, 32, bias=False)
        self.bn = nn.BatchNorm1d(32)
        self.act3 = nn.PReLU(32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.gn(self.conv1(x)))
        x = self.act2(self.inorm(self.conv2(x))).mean(dim=(2, 3))
        return self.fc2(self.act3(self.bn(self.fc1(x))))


@dataclass
class ClassifierOutput:
    """Output of :class:`DataclassOutputNet`."""

    logits: torch.Tensor
    features: torch.Tensor


class DataclassOutputNet(nn.Module):
    """Small CNN that returns a :class:`ClassifierOutput` dataclass of logits and features."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 16, stride=2), conv_bn(16, 32, stride=2))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        features = self.features(x).mean(dim=(2, 3))
        return ClassifierOutput(logits=self.fc(features), features=features)


# --- registrations -------------------------------------------------------------------------------

_IMAGE_CNN = ("conv", "bn", "linear")


@register_zoo_model("conv_chain", tags=[*_IMAGE_CNN, "flatten"], inputs=_image)
def conv_chain(**kwargs: Any) -> nn.Module:
    """Plain Conv-BN-ReLU chain with pooling, a spatial map flattened into a Linear classifier."""
    return ConvChain(**kwargs)


@register_zoo_model("residual", tags=[*_IMAGE_CNN, "residual"], inputs=_image)
def residual(**kwargs: Any) -> nn.Module:
    """ResNet basic blocks with identity and strided 1x1 projection shortcuts."""
    return ResNet(**kwargs)


@register_zoo_model("depthwise", tags=[*_IMAGE_CNN, "depthwise", "residual"], inputs=_image)
def depthwise(**kwargs: Any) -> nn.Module:
    """MobileNetV2 inverted residuals: expand 1x1, depthwise 3x3, project 1x1."""
    return MobileNet(**kwargs)


@register_zoo_model(
    "grouped", tags=["conv", "bn", "grouped", "residual", "transposed_conv"], inputs=_image
)
def grouped(**kwargs: Any) -> nn.Module:
    """ResNeXt grouped convs (groups=4) and ConvTranspose2d upsampling to a per-pixel output."""
    return GroupedSegNet(**kwargs)


@register_zoo_model(
    "concat_split",
    tags=[*_IMAGE_CNN, "concat", "split", "channel_shuffle", "depthwise"],
    inputs=_image,
)
def concat_split(**kwargs: Any) -> nn.Module:
    """Inception/DenseNet concatenation, ShuffleNetV2 chunk and channel shuffle, uneven split."""
    return ConcatSplitNet(**kwargs)


@register_zoo_model("squeeze_excite", tags=[*_IMAGE_CNN, "se", "depthwise"], inputs=_image)
def squeeze_excite(**kwargs: Any) -> nn.Module:
    """Squeeze-and-excitation gates (Linear and 1x1 conv) with hardswish and SiLU."""
    return SENet(**kwargs)


@register_zoo_model(
    "attention",
    tags=["attention", "layernorm", "free_params", "linear", "conv", "residual"],
    inputs=_image,
)
def attention(**kwargs: Any) -> nn.Module:
    """Tiny ViT with hand-written multi-head attention, class token and layer scale."""
    return TinyViT(**kwargs)


@register_zoo_model(
    "mha", tags=["mha", "embedding", "layernorm", "linear", "residual"], inputs=_tokens
)
def mha(**kwargs: Any) -> nn.Module:
    """Token classifier built on torch.nn.MultiheadAttention (batch_first)."""
    return MHAEncoder(**kwargs)


@register_zoo_model("lstm", tags=["recurrent", "embedding", "linear"], inputs=_tokens)
def lstm(**kwargs: Any) -> nn.Module:
    """Embedding, two-layer LSTM, classifier on the last step."""
    return LSTMClassifier(**kwargs)


@register_zoo_model("gru", tags=["recurrent", "embedding", "linear"], inputs=_tokens)
def gru(**kwargs: Any) -> nn.Module:
    """Embedding, bidirectional GRU, classifier on the final hidden states."""
    return GRUClassifier(**kwargs)


@register_zoo_model(
    "multi_input", tags=[*_IMAGE_CNN, "multi_input", "concat"], inputs=_image_and_vector
)
def multi_input(**kwargs: Any) -> nn.Module:
    """forward(image, extra): CNN features concatenated with an MLP of a vector."""
    return ImageAndVector(**kwargs)


@register_zoo_model(
    "dict_io",
    tags=["dict_input", "dict_output", "embedding", "layernorm", "linear", "residual"],
    inputs=_hf_inputs,
)
def dict_io(**kwargs: Any) -> nn.Module:
    """forward(input_ids=..., attention_mask=...) returning {'logits': ..., 'hidden': ...}."""
    return DictIO(**kwargs)


@register_zoo_model(
    "norms", tags=["conv", "linear", "bn", "groupnorm", "instancenorm", "prelu"], inputs=_image
)
def norms(**kwargs: Any) -> nn.Module:
    """GroupNorm, affine InstanceNorm2d, per-channel PReLU and BatchNorm1d."""
    return NormsNet(**kwargs)


@register_zoo_model("dataclass_output", tags=[*_IMAGE_CNN, "dataclass_output"], inputs=_image)
def dataclass_output(**kwargs: Any) -> nn.Module:
    """Small CNN returning a dataclass of logits and features."""
    return DataclassOutputNet(**kwargs)
