"""Inputs and outputs of an exported graph: flat tensor lists with meaningful names.

An ONNX graph takes and returns flat lists of tensors. :class:`FlatModule` wraps a model so that it
takes the example inputs' tensors as positional arguments (the rest of the inputs, e.g. ``None`` or
Python numbers, is held constant) and returns its outputs flattened in a fixed order, so the names
given here line up with the graph's inputs and outputs whatever exporter built it.

Names: one positional tensor is ``input``, several are ``input_0``, ``input_1``…; keyword inputs
keep their keyword (``input_ids``). One output tensor is ``output``; a tuple gives ``output_0``…;
a dict, a named tuple or a dataclass gives its keys or field names (``logits``). Nested containers
join the parts with ``.`` (keys) and ``_`` (positions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import (
    MappingKey,
    SequenceKey,
    tree_flatten,
    tree_flatten_with_path,
    tree_unflatten,
)

from torchslim._inputs import Inputs
from torchslim.errors import ConfigError

__all__ = ["FlatModule", "input_names", "flatten_outputs", "batched", "random_batch"]


def _key_part(key: Any) -> tuple[str, str]:
    if isinstance(key, SequenceKey):
        return "_", str(key.idx)
    if isinstance(key, MappingKey):
        return ".", str(key.key)
    return ".", str(getattr(key, "name", key))


def input_names(inputs: Inputs) -> list[str]:
    """Default graph input names of the tensors in ``inputs``, in :meth:`Inputs.tensors` order."""
    leaves, _ = tree_flatten_with_path((inputs.args, inputs.kwargs))
    paths = [path for path, leaf in leaves if isinstance(leaf, torch.Tensor)]
    if len(paths) == 1 and len(inputs.args) == 1 and not inputs.kwargs and len(paths[0]) == 2:
        return ["input"]
    names = []
    for path in paths:
        first, rest = path[1], path[2:]  # path[0] picks args (0) or kwargs (1)
        name = f"input_{first.idx}" if path[0].idx == 0 else str(first.key)
        for key in rest:
            sep, part = _key_part(key)
            name += sep + part
        names.append(name)
    return names


def _walk(value: Any, prefix: str | None, out: list[tuple[str, torch.Tensor]]) -> None:
    def join(sep: str, part: str) -> str:
        return part if prefix is None else f"{prefix}{sep}{part}"

    if isinstance(value, torch.Tensor):
        out.append((prefix or "output", value))
    elif value is None:
        return
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _walk(item, join(".", str(key)), out)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _walk(getattr(value, f.name), join(".", f.name), out)
    elif isinstance(value, tuple) and hasattr(value, "_fields"):  # named tuple
        for key in value._fields:
            _walk(getattr(value, key), join(".", key), out)
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            _walk(item, f"{prefix or 'output'}_{i}", out)
    else:
        raise ConfigError(
            f"model output {prefix or 'output'!r} is a {type(value).__name__}; ONNX graphs return "
            "tensors (or tuples, dicts and dataclasses of them): return a tensor instead"
        )


def flatten_outputs(output: Any) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of each tensor in a model's output, in a fixed order; ``None`` skipped."""
    out: list[tuple[str, torch.Tensor]] = []
    _walk(output, None, out)
    if not out:
        raise ConfigError("the model returned no tensor; there is nothing to export")
    return out


class FlatModule(nn.Module):
    """``model`` called on flat tensors, returning a flat tuple of output tensors.

    It holds the model as a submodule and changes nothing in it. It is built in eval mode without
    touching the model's flags: an exporter that switches a training wrapper to eval would switch
    it, and every module of the model with it, back to training mode afterwards.
    """

    def __init__(self, model: nn.Module, inputs: Inputs) -> None:
        super().__init__()
        self.model = model
        self.training = False
        leaves, self._spec = tree_flatten((inputs.args, inputs.kwargs))
        self._leaves = leaves
        self._slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        leaves = list(self._leaves)
        for slot, t in zip(self._slots, tensors, strict=True):
            leaves[slot] = t
        args, kwargs = tree_unflatten(leaves, self._spec)
        return tuple(t for _, t in flatten_outputs(self.model(*args, **kwargs)))


def batched(inputs: Inputs) -> list[bool]:
    """Which input tensors carry the batch: those whose leading size is the first tensor's."""
    batch = inputs.batch_size
    return [batch is not None and t.dim() > 0 and t.shape[0] == batch for t in inputs.tensors()]


def _random_like(t: torch.Tensor, batch: int, gen: torch.Generator) -> torch.Tensor:
    shape = (batch, *t.shape[1:])
    src = t.detach().cpu()
    if t.dtype == torch.bool:
        out = torch.randint(0, 2, shape, generator=gen).bool()
    elif t.is_floating_point():
        f = src.double()
        finite = f[torch.isfinite(f)]
        mean = float(finite.mean()) if finite.numel() else 0.0
        std = float(finite.std()) if finite.numel() > 1 else 0.0
        out = torch.randn(shape, generator=gen, dtype=torch.float64) * std + mean
    elif t.is_complex():
        out = src[:1].expand(shape).clone()  # no obvious distribution: repeat the first sample
    else:
        lo, hi = int(src.min()), int(src.max())
        out = torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int64)
    return out.to(dtype=t.dtype, device=t.device)


def random_batch(inputs: Inputs, batch: int, seed: int) -> Inputs:
    """Inputs like the example with batch size ``batch``, drawn at random like the example's.

    Batched float tensors are normal with the example's mean and standard deviation; integer ones
    uniform in the example's range; inputs without the batch dimension stay as they are.
    """
    gen = torch.Generator().manual_seed(seed)
    flags = iter(batched(inputs))

    def make(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return _random_like(x, batch, gen) if next(flags) else x
        return x

    leaves, spec = tree_flatten((inputs.args, inputs.kwargs))
    args, kwargs = tree_unflatten([make(x) for x in leaves], spec)
    return Inputs(tuple(args), dict(kwargs))
