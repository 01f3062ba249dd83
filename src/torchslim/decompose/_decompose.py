"""``ts.decompose_``: low-rank factorisation of linear and convolution layers, in place.

- Linear layers and 1x1 convolutions become two thin layers by truncated SVD:
  ``W ≈ (U √S) (√S Vᵀ)``: ``in -> r`` then ``r -> out`` (the bias stays on the second).
- k x k convolutions become three by Tucker-2 (Kim et al., ICLR 2016): a 1x1 convolution
  ``in -> r_in``, the k x k core ``r_in -> r_out`` (stride, padding and dilation of the original),
  and a 1x1 convolution ``r_out -> out`` with the bias; the factors come from the SVDs of the
  kernel's unfoldings along its output and input channels (HOSVD). With ``method="svd"`` a k x k
  convolution is split like a linear layer instead: k x k ``in -> r``, then 1x1 ``r -> out``.

Replacements are plain ``nn.Sequential`` of ``nn.Linear`` / ``nn.Conv*d``, so the result exports to
ONNX, profiles and prunes like any model. A layer is only changed when its factorisation needs
fewer MACs per output position than the layer itself (``only_if_cheaper=False`` lifts this, e.g.
to check that a full-rank factorisation is exact). What changed is recorded in a
:class:`DecompositionPlan` (JSON), which :func:`apply_decomposition` replays on a fresh model, and
``ts.save``/``ts.load`` store and replay it like a pruning plan.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim._patterns import matches_any
from torchslim.decompose._ranks import energy_rank, ratio_rank, vbmf_rank
from torchslim.errors import ConfigError, TorchSlimError

__all__ = [
    "DecompositionPlan",
    "DecomposedLayer",
    "DecompositionResult",
    "decompose_",
    "apply_decomposition",
]

_logger = logging.getLogger(__name__)

PLAN_FORMAT = "torchslim.decomposition"
PLAN_VERSION = 1
_METHODS = ("auto", "svd", "tucker")
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class DecomposedLayer:
    """One factorised layer.

    Attributes:
        name: Fully qualified module name (the replacement ``nn.Sequential`` sits there).
        kind: ``"svd"`` (two layers) or ``"tucker"`` (three layers).
        ranks: ``[r]`` for svd, ``[r_in, r_out]`` for tucker.
        original: The replaced layer's type and size arguments (to rebuild it).
        macs_ratio: MACs per output position after / before.
        params_ratio: Parameters after / before.
    """

    name: str
    kind: str
    ranks: tuple[int, ...]
    original: dict[str, Any]
    macs_ratio: float
    params_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "ranks": list(self.ranks),
            "original": dict(self.original),
            "macs_ratio": self.macs_ratio,
            "params_ratio": self.params_ratio,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecomposedLayer:
        return cls(
            name=d["name"],
            kind=d["kind"],
            ranks=tuple(int(r) for r in d["ranks"]),
            original=dict(d["original"]),
            macs_ratio=float(d.get("macs_ratio", 1.0)),
            params_ratio=float(d.get("params_ratio", 1.0)),
        )


@dataclass(frozen=True)
class DecompositionPlan:
    """What :func:`decompose_` changed, replayable on a fresh model (JSON in, JSON out)."""

    layers: tuple[DecomposedLayer, ...]
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        import torchslim

        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "torchslim_version": torchslim.__version__,
            "options": dict(self.options),
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecompositionPlan:
        if d.get("format") != PLAN_FORMAT or int(d.get("version", 0)) > PLAN_VERSION:
            raise ConfigError(
                f"not a torchslim decomposition plan (format {d.get('format')!r}, version "
                f"{d.get('version')!r}); this torchslim reads {PLAN_FORMAT!r} up to version "
                f"{PLAN_VERSION}"
            )
        return cls(
            layers=tuple(DecomposedLayer.from_dict(x) for x in d["layers"]),
            options=dict(d.get("options", {})),
        )


@dataclass(frozen=True)
class DecompositionResult:
    """What :func:`decompose_` did: the plan, and parameter counts before and after."""

    plan: DecompositionPlan
    params_before: int
    params_after: int
    skipped: tuple[tuple[str, str], ...] = ()  # (layer, why it was left as it was)

    def table(self) -> str:
        rows = [("layer", "kind", "ranks", "MACs/position", "params")]
        for layer in self.plan.layers:
            rows.append(
                (
                    layer.name,
                    layer.kind,
                    "/".join(map(str, layer.ranks)),
                    f"{layer.macs_ratio:.3f}",
                    f"{layer.params_ratio:.3f}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.append(
            f"params {self.params_before:,} -> {self.params_after:,} "
            f"({self.params_after / max(1, self.params_before):.3f})"
        )
        return "\n".join(lines)


def _describe(module: nn.Module) -> dict[str, Any]:
    """The replaced layer's type and constructor sizes: enough to rebuild its replacement."""
    if isinstance(module, nn.Linear):
        return {
            "type": "Linear",
            "in": module.in_features,
            "out": module.out_features,
            "bias": module.bias is not None,
        }
    return {
        "type": type(module).__name__,
        "in": module.in_channels,
        "out": module.out_channels,
        "bias": module.bias is not None,
        "kernel_size": list(module.kernel_size),
        "stride": list(module.stride),
        "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
        "dilation": list(module.dilation),
        "padding_mode": module.padding_mode,
    }


def _build(original: dict[str, Any], kind: str, ranks: tuple[int, ...], like: Any) -> nn.Sequential:
    """The replacement's structure (weights uninitialised); ``like`` gives device and dtype."""
    factory = {"device": like.device, "dtype": like.dtype}
    if original["type"] == "Linear":
        (r,) = ranks
        return nn.Sequential(
            nn.Linear(original["in"], r, bias=False, **factory),
            nn.Linear(r, original["out"], bias=original["bias"], **factory),
        )
    conv = {"Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d, "Conv3d": nn.Conv3d}[original["type"]]
    k, stride = tuple(original["kernel_size"]), tuple(original["stride"])
    padding = (
        original["padding"] if isinstance(original["padding"], str) else tuple(original["padding"])
    )
    spatial = {"dilation": tuple(original["dilation"]), "padding_mode": original["padding_mode"]}
    ones = (1,) * len(k)
    if kind == "svd":
        (r,) = ranks
        return nn.Sequential(
            conv(original["in"], r, k, stride, padding, bias=False, **spatial, **factory),
            conv(r, original["out"], ones, bias=original["bias"], **factory),
        )
    r_in, r_out = ranks
    return nn.Sequential(
        conv(original["in"], r_in, ones, bias=False, **factory),
        conv(r_in, r_out, k, stride, padding, bias=False, **spatial, **factory),
        conv(r_out, original["out"], ones, bias=original["bias"], **factory),
    )


def _macs_per_position(original: dict[str, Any], kind: str | None, ranks: tuple[int, ...]) -> int:
    """MACs per output position; a 1x1 projection before a strided core runs at the input's
    resolution, ``prod(stride)`` positions per output position."""
    cin, cout = original["in"], original["out"]
    taps = math.prod(original.get("kernel_size", [1]))
    before_core = math.prod(original.get("stride", [1]))
    if kind is None:
        return cin * cout * taps
    if kind == "svd":
        (r,) = ranks
        return cin * r * taps + r * cout
    r_in, r_out = ranks
    return cin * r_in * before_core + r_in * r_out * taps + r_out * cout


def _params(original: dict[str, Any], kind: str | None, ranks: tuple[int, ...]) -> int:
    cin, cout = original["in"], original["out"]
    taps = math.prod(original.get("kernel_size", [1]))
    bias = cout if original["bias"] else 0
    if kind is None:
        return cin * cout * taps + bias
    if kind == "svd":
        (r,) = ranks
        return cin * r * taps + r * cout + bias
    r_in, r_out = ranks
    return cin * r_in + r_in * r_out * taps + r_out * cout + bias


def _choose_rank(matrix: torch.Tensor, singular: np.ndarray, rank: Any, energy: Any) -> int:
    if rank == "vbmf":
        return vbmf_rank(matrix.numpy())
    if rank is not None:
        return ratio_rank(len(singular), rank)
    return energy_rank(singular, energy)


def _svd_factors(
    weight: torch.Tensor, rank: Any, energy: Any
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """``W (out, in*taps) ≈ A (out, r) @ B (r, in*taps)`` with balanced factors."""
    matrix = weight.detach().double().reshape(weight.shape[0], -1).cpu()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = _choose_rank(matrix, s.numpy(), rank, energy)
    root = s[:r].sqrt()
    return r, u[:, :r] * root, root[:, None] * vh[:r]


def _tucker_factors(
    weight: torch.Tensor, rank: Any, energy: Any
) -> tuple[tuple[int, int], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker-2 of a kernel ``(out, in, *k)``: ``W = core ×0 U_out ×1 U_in`` (HOSVD)."""
    w = weight.detach().double().cpu()
    cout, cin = w.shape[:2]
    mode0 = w.reshape(cout, -1)  # output channels
    mode1 = w.transpose(0, 1).reshape(cin, -1)  # input channels
    u0, s0, _ = torch.linalg.svd(mode0, full_matrices=False)
    u1, s1, _ = torch.linalg.svd(mode1, full_matrices=False)
    r_out = _choose_rank(mode0, s0.numpy(), rank, energy)
    r_in = _choose_rank(mode1, s1.numpy(), rank, energy)
    u_out, u_in = u0[:, :r_out], u1[:, :r_in]
    core = torch.einsum("oi...,or,is->rs...", w, u_out, u_in)  # (r_out, r_in, *k)
    return (r_in, r_out), u_in, core, u_out


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def decompose_(
    model: nn.Module,
    *,
    method: str = "auto",
    rank: float | int | str | None = None,
    energy: float | None = None,
    ignore: Iterable[str] = (),
    layers: Iterable[str] | None = None,
    only_if_cheaper: bool = True,
    min_size: int = 8,
) -> DecompositionResult:
    """Factorise the linear and convolution layers of ``model`` in place by low-rank decomposition.

    Args:
        model: The model.
        method: ``"auto"`` (default): SVD for linear layers and 1x1 convolutions, Tucker-2 for
            k x k convolutions; ``"svd"``: SVD for every layer; ``"tucker"``: Tucker-2 for every
            convolution (linear layers still take SVD).
        rank: A ratio of each layer's full rank (float in (0, 1]), an absolute rank (int), or
            ``"vbmf"`` (empirical variational Bayesian matrix factorisation chooses per layer).
        energy: Keep the smallest rank that retains this fraction of the squared singular values
            (default 0.9 when ``rank`` is not given).
        ignore: Module-name patterns (exact, glob, ``re:``) to leave as they are. Classifiers are
            not special: pass their name here to keep them whole.
        layers: Only these module-name patterns (default: every eligible layer).
        only_if_cheaper: Leave a layer as it is when its factorisation needs at least as many
            MACs per output position.
        min_size: Leave layers with fewer input or output channels than this.

    Returns:
        A :class:`DecompositionResult`; ``result.plan`` replays on a fresh model
        (:func:`apply_decomposition`) and is stored by ``ts.save``.

    Raises:
        ConfigError: invalid options. Grouped and transposed convolutions are skipped (listed in
            ``result.skipped``), not decomposed.
    """
    if method not in _METHODS:
        raise ConfigError(f"method must be one of {', '.join(_METHODS)}, got {method!r}")
    if rank is not None and energy is not None:
        raise ConfigError("pass one of rank= and energy=, not both")
    if rank is None and energy is None:
        energy = 0.9
    if rank is not None and not (
        rank == "vbmf"
        or (isinstance(rank, float) and 0 < rank <= 1)
        or (isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1)
    ):
        raise ConfigError(
            f"rank must be a ratio in (0, 1] (float), a rank >= 1 (int) or 'vbmf', got {rank!r}"
        )
    if energy is not None and not (isinstance(energy, (int, float)) and 0 < energy <= 1):
        raise ConfigError(f"energy must be a fraction in (0, 1], got {energy!r}")
    ignore = tuple(ignore)
    chosen = tuple(layers) if layers is not None else None
    params_before = sum(p.numel() for p in model.parameters())
    targets = []
    skipped: list[tuple[str, str]] = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, *_CONVS)) or not name:
            continue
        if (ignore and matches_any(name, ignore)) or (chosen and not matches_any(name, chosen)):
            continue
        if isinstance(module, _CONVS) and module.groups != 1:
            skipped.append((name, f"grouped convolution (groups={module.groups})"))
            continue
        size = (
            (module.in_features, module.out_features)
            if isinstance(module, nn.Linear)
            else (module.in_channels, module.out_channels)
        )
        if min(size) < min_size:
            skipped.append((name, f"fewer than min_size={min_size} channels"))
            continue
        targets.append((name, module))

    decomposed: list[DecomposedLayer] = []
    replacements: list[tuple[str, nn.Module]] = []
    with torch.no_grad():
        for name, module in targets:
            original = _describe(module)
            pointwise = isinstance(module, nn.Linear) or all(k == 1 for k in module.kernel_size)
            kind = "svd" if pointwise or method == "svd" else "tucker"
            weight = module.weight
            if kind == "svd":
                r, a, b = _svd_factors(weight, rank, energy)
                ranks: tuple[int, ...] = (r,)
            else:
                ranks, u_in, core, u_out = _tucker_factors(weight, rank, energy)
            before = _macs_per_position(original, None, ())
            after = _macs_per_position(original, kind, ranks)
            if only_if_cheaper and after >= before:
                skipped.append((name, f"rank {'/'.join(map(str, ranks))} would not save MACs"))
                continue
            new = _build(original, kind, ranks, weight)
            spatial = weight.shape[2:]
            if kind == "svd":
                new[0].weight.copy_(b.reshape(ranks[0], *weight.shape[1:]).to(weight.dtype))
                new[1].weight.copy_(
                    a.reshape(*a.shape, *([1] * len(spatial))).to(weight.dtype)
                    if spatial
                    else a.to(weight.dtype)
                )
                last = new[1]
            else:
                r_in, r_out = ranks
                ones = [1] * len(spatial)
                new[0].weight.copy_(u_in.T.reshape(r_in, -1, *ones).to(weight.dtype))
                new[1].weight.copy_(core.to(weight.dtype))
                new[2].weight.copy_(u_out.reshape(-1, r_out, *ones).to(weight.dtype))
                last = new[2]
            if module.bias is not None:
                last.bias.copy_(module.bias)
            new.train(module.training)
            replacements.append((name, new))
            decomposed.append(
                DecomposedLayer(
                    name=name,
                    kind=kind,
                    ranks=tuple(ranks),
                    original=original,
                    macs_ratio=after / before,
                    params_ratio=_params(original, kind, ranks) / _params(original, None, ()),
                )
            )
    for name, new in replacements:  # only now: a failure above leaves the model as it was
        _replace(model, name, new)
    options = {
        "method": method,
        "rank": rank,
        "energy": energy,
        "ignore": list(ignore),
        "layers": list(chosen) if chosen else None,
        "only_if_cheaper": only_if_cheaper,
        "min_size": min_size,
    }
    plan = DecompositionPlan(layers=tuple(decomposed), options=options)
    if decomposed:
        from torchslim.models._history import record_transform

        record_transform(model, "decompose", plan)
    params_after = sum(p.numel() for p in model.parameters())
    _logger.info(
        "decomposed %d layers of %s: params %d -> %d",
        len(decomposed),
        type(model).__name__,
        params_before,
        params_after,
    )
    return DecompositionResult(plan, params_before, params_after, tuple(skipped))


def apply_decomposition(model: nn.Module, plan: DecompositionPlan) -> nn.Module:
    """Replace the plan's layers of a fresh ``model`` with their factorised structure (weights
    uninitialised: load them afterwards, as ``ts.load`` does). All or nothing."""
    replacements = []
    for layer in plan.layers:
        try:
            module = model.get_submodule(layer.name)
        except AttributeError as exc:
            raise TorchSlimError(
                f"the decomposition plan replaces {layer.name!r}, which this model does not have"
            ) from exc
        current = _describe(module) if isinstance(module, (nn.Linear, *_CONVS)) else {"type": "?"}
        if current != layer.original:
            raise TorchSlimError(
                f"the decomposition plan expects {layer.name!r} to be {layer.original}, the model "
                f"has {current}: apply it to a model of the architecture it was made on"
            )
        replacements.append(
            (layer.name, _build(layer.original, layer.kind, layer.ranks, module.weight))
        )
    for name, new in replacements:
        _replace(model, name, new)
    if plan.layers:
        from torchslim.models._history import record_transform

        record_transform(model, "decompose", plan)
    return model
