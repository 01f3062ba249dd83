"""Layer pruners: which tensor dimensions of a layer may lose indices, and how its size attributes
follow. One registry, keyed by module type (looked up along the MRO):

    @ts.register_layer_pruner(MyLayer)
    class MyLayerPruner(ts.LayerPruner):
        prunable = {"weight": (0, 1), "bias": (0,)}
        def update(self, module, old_shapes):
            module.width = module.weight.shape[0]

Modules of types defined by PyTorch itself (``torch.nn``) without a registered pruner keep all their
tensors whole. Modules of your own types may have their parameters pruned along any dimension that
tracing finds coupled (free parameters: class tokens, position embeddings, layer scales); the pruned
model is then run once to check that it still works.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torchslim.errors import ConfigError

__all__ = ["LayerPruner", "register_layer_pruner", "get_layer_pruner", "is_library_module"]

_PRUNERS: dict[type, LayerPruner] = {}


class LayerPruner:
    """How one layer type is pruned.

    Attributes:
        prunable: For each of the layer's own tensors (local names), the dimensions that may lose
            indices. Tensors not listed are never pruned.

    Contract: :meth:`update` runs after the layer's tensors were sliced (parameters keep their
    identity, only ``.data`` changes); it must set the attributes that describe sizes so that the
    layer's ``forward`` works with the new shapes. ``old_shapes`` maps local tensor names to their
    shapes before pruning.
    """

    prunable: dict[str, tuple[int, ...]] = {}

    def prunable_dims(self, module: nn.Module) -> dict[str, tuple[int, ...]]:
        return dict(self.prunable)

    def update(self, module: nn.Module, old_shapes: dict[str, tuple[int, ...]]) -> None:
        """Set the module's size attributes from its new tensor shapes."""


def register_layer_pruner(*types: type) -> Callable[[type[LayerPruner]], type[LayerPruner]]:
    """Class decorator registering a :class:`LayerPruner` for module types."""

    def decorator(cls: type[LayerPruner]) -> type[LayerPruner]:
        if not (isinstance(cls, type) and issubclass(cls, LayerPruner)):
            raise ConfigError(f"{cls!r} must subclass torchslim.LayerPruner")
        for t in types:
            _PRUNERS[t] = cls()
        return cls

    return decorator


def get_layer_pruner(module: nn.Module) -> LayerPruner | None:
    for t in type(module).__mro__:
        if t in _PRUNERS:
            return _PRUNERS[t]
    return None


def is_library_module(module: nn.Module) -> bool:
    """Whether the module's type comes from PyTorch itself (and so has size attributes we know)."""
    return type(module).__module__.startswith("torch.")


@register_layer_pruner(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvPruner(LayerPruner):
    prunable = {"weight": (0, 1), "bias": (0,)}

    def update(self, module: Any, old_shapes):
        old_out, old_in_per_group = old_shapes["weight"][:2]
        groups = module.groups
        out_channels, in_per_group = module.weight.shape[:2]
        if groups == 1:
            module.in_channels = in_per_group
        elif old_in_per_group == 1 and groups == module.in_channels:  # depthwise
            multiplier = old_out // groups
            module.groups = module.in_channels = out_channels // multiplier
        else:  # grouped: tracing removes the same positions from every group
            if out_channels % groups:
                raise ConfigError(
                    f"{out_channels} output channels do not split into groups={groups}"
                )
            module.in_channels = in_per_group * groups
        module.out_channels = out_channels


@register_layer_pruner(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvTransposePruner(LayerPruner):
    prunable = {"weight": (0, 1), "bias": (0,)}

    def update(self, module: Any, old_shapes):
        if module.groups != 1 and tuple(module.weight.shape[:2]) != tuple(old_shapes["weight"][:2]):
            raise ConfigError("grouped transposed convolution cannot be pruned yet")
        module.in_channels = module.weight.shape[0]
        module.out_channels = module.weight.shape[1] * module.groups


@register_layer_pruner(nn.Linear)
class LinearPruner(LayerPruner):
    prunable = {"weight": (0, 1), "bias": (0,)}

    def update(self, module: Any, old_shapes):
        module.out_features, module.in_features = module.weight.shape


@register_layer_pruner(nn.modules.batchnorm._NormBase)
class BatchNormPruner(LayerPruner):
    """Batch and instance norms: weight, bias and running statistics per channel."""

    prunable = {"weight": (0,), "bias": (0,), "running_mean": (0,), "running_var": (0,)}

    def update(self, module: Any, old_shapes):
        for name in ("weight", "running_mean"):
            t = getattr(module, name, None)
            if t is not None:
                module.num_features = t.shape[0]
                return


@register_layer_pruner(nn.LayerNorm)
class LayerNormPruner(LayerPruner):
    def prunable_dims(self, module):
        dims = tuple(range(len(module.normalized_shape)))
        return {"weight": dims, "bias": dims}

    def update(self, module: Any, old_shapes):
        if module.weight is not None:
            module.normalized_shape = tuple(module.weight.shape)


if hasattr(nn, "RMSNorm"):

    @register_layer_pruner(nn.RMSNorm)
    class RMSNormPruner(LayerNormPruner):
        pass


@register_layer_pruner(nn.GroupNorm)
class GroupNormPruner(LayerPruner):
    """Tracing removes the same positions from every group; one channel per group stays so."""

    prunable = {"weight": (0,), "bias": (0,)}

    def update(self, module: Any, old_shapes):
        channels = module.weight.shape[0]
        if module.num_groups == module.num_channels:
            module.num_groups = channels
        elif channels % module.num_groups:
            raise ConfigError(f"{channels} channels do not split into {module.num_groups} groups")
        module.num_channels = channels


@register_layer_pruner(nn.Embedding)
class EmbeddingPruner(LayerPruner):
    prunable = {"weight": (1,)}

    def update(self, module: Any, old_shapes):
        module.embedding_dim = module.weight.shape[1]


@register_layer_pruner(nn.PReLU)
class PReLUPruner(LayerPruner):
    prunable = {"weight": (0,)}

    def update(self, module: Any, old_shapes):
        module.num_parameters = module.weight.shape[0]


@register_layer_pruner(nn.MultiheadAttention)
class MultiheadAttentionPruner(LayerPruner):
    """Heads or head dimensions of ``nn.MultiheadAttention``. Tracing ties the projections' inner
    width to the query's width; ``num_heads`` comes from the plan's attribute updates."""

    prunable = {
        "in_proj_weight": (0, 1),
        "in_proj_bias": (0,),
        "q_proj_weight": (0, 1),
        "k_proj_weight": (0, 1),
        "v_proj_weight": (0, 1),
        "bias_k": (2,),
        "bias_v": (2,),
    }

    def update(self, module: Any, old_shapes):
        if module._qkv_same_embed_dim:
            module.embed_dim = module.in_proj_weight.shape[1]
            module.kdim = module.vdim = module.embed_dim
        else:
            module.embed_dim = module.q_proj_weight.shape[1]
            module.kdim = module.k_proj_weight.shape[1]
            module.vdim = module.v_proj_weight.shape[1]
        if module.embed_dim % module.num_heads:
            raise ConfigError(
                f"embed_dim {module.embed_dim} is not a multiple of num_heads {module.num_heads}"
            )
        module.head_dim = module.embed_dim // module.num_heads


@register_layer_pruner(nn.RNNBase)
class RecurrentPruner(LayerPruner):
    """LSTM, GRU and RNN: hidden units (every gate's rows, the recurrent columns) and input
    features. Tracing ties the hidden units of all layers and directions (one ``hidden_size``)."""

    def prunable_dims(self, module: Any) -> dict[str, tuple[int, ...]]:
        return {
            name: (0, 1) if name.startswith("weight") else (0,)
            for name in module._flat_weights_names
        }

    def update(self, module: Any, old_shapes):
        if getattr(module, "proj_size", 0):
            raise ConfigError("LSTMs with proj_size cannot be pruned yet")
        module.hidden_size = module.weight_hh_l0.shape[1]
        module.input_size = module.weight_ih_l0.shape[1]


def tensor_of(module: nn.Module, name: str) -> torch.Tensor | None:
    if name in module._parameters:
        return module._parameters[name]
    return module._buffers.get(name)
