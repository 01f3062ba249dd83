"""Count parameters and MACs on the real forward pass, per module.

MACs come from PyTorch's own :class:`torch.utils.flop_counter.FlopCounterMode`, which counts the
matmul-like ops (convolutions, linear layers, matmuls, attention) at the dispatcher level, so any
model counts, whatever its Python code does. We report MACs = FLOPs / 2 for those ops. Element-wise
ops (activations, norms, adds) are not counted, which is also the convention of published figures
such as torchvision's ``GFLOPS`` metadata.

Per-module figures are taken with forward hooks that read the counter's running total before and
after each module, which gives every module its inclusive MACs; a module's *self* MACs are its
inclusive MACs minus those of its direct children (ops written in its own ``forward``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from torchslim._attention import attention_op_by_op
from torchslim._inputs import Inputs

__all__ = ["LayerProfile", "count_params", "count_macs"]


@dataclass(frozen=True)
class LayerProfile:
    """One row of the per-module table.

    Attributes:
        name: Fully qualified module name (``""`` is the root).
        type: Class name of the module.
        params: Parameters owned directly by the module (not its children).
        macs: MACs of the ops the module runs itself, excluding its children.
        share: ``macs`` as a fraction of the model's total MACs.
        calls: How many times the module ran during the forward pass.
    """

    name: str
    type: str
    params: int
    macs: int
    share: float
    calls: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "params": self.params,
            "macs": self.macs,
            "share": self.share,
            "calls": self.calls,
        }


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """Total and trainable parameter counts; a parameter shared by several modules counts once."""
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return total, trainable


_aten = torch.ops.aten


# Kernels PyTorch's counter has no formula for, mapped to the formula of their equivalent: the CPU
# flash-attention kernel that F.scaled_dot_product_attention dispatches to on real CPU tensors.
def _same_formula_as(op: Any) -> Any:
    formula = flop_registry[op]  # already wrapped to take tensors; tell the counter so
    wrapper = lambda *args, **kwargs: formula(*args, **kwargs)  # noqa: E731
    wrapper._get_raw = True
    return wrapper


_EXTRA_FORMULAS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _same_formula_as(
        _aten._scaled_dot_product_flash_attention
    ),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _same_formula_as(
        _aten._scaled_dot_product_flash_attention_backward
    ),
}


def _total_flops(counter: FlopCounterMode) -> int:
    return int(sum(counter.flop_counts["Global"].values()))


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker: we attribute MACs to modules with our own
    hooks, and its tracker registers autograd hooks on module inputs that fail under ``no_grad``
    when a parameter itself is passed to a module (timm's PiT and CaiT pass class tokens)."""

    parents = ("Global",)

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _flop_counter() -> FlopCounterMode:
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _GlobalOnly()
    return counter


class MacCounter:
    """Counts MACs, in total and per module, of the forward passes run inside ``with``.

    A context manager so that counting can share a forward pass with other work (tracing,
    verification) instead of running the model again.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.counter = _flop_counter()
        self.names = {id(m): n for n, m in model.named_modules(remove_duplicate=True)}
        self.own: dict[str, int] = {}  # FLOPs of ops each module ran itself, outside its children
        self.calls: dict[str, int] = {}
        # the modules running now: [name, FLOPs total when it started, FLOPs of finished children]
        self._stack: list[list[Any]] = []
        self._handles: list[Any] = []
        self._exits: contextlib.ExitStack | None = None

    def _pre_hook(self, module: torch.nn.Module, _args: Any) -> None:
        name = self.names[id(module)]
        self.own.setdefault(name, 0)  # first call fixes the module's place in the table
        self._stack.append([name, _total_flops(self.counter), 0])

    def _post_hook(self, module: torch.nn.Module, _args: Any, _out: Any) -> None:
        name, start, in_children = self._stack.pop()
        inclusive = _total_flops(self.counter) - start
        self.own[name] += inclusive - in_children
        self.calls[name] = self.calls.get(name, 0) + 1
        if self._stack:
            self._stack[-1][2] += inclusive

    def __enter__(self) -> MacCounter:
        for module in self.model.modules():
            if id(module) in self.names:
                self._handles.append(module.register_forward_pre_hook(self._pre_hook))
                self._handles.append(
                    module.register_forward_hook(self._post_hook, always_call=True)
                )
        self._exits = contextlib.ExitStack()
        self._exits.enter_context(attention_op_by_op())
        self._exits.enter_context(self.counter)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._exits is not None
        self._exits.close()
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def result(self) -> tuple[int, list[LayerProfile]]:
        """The total MACs and the per-module table, in the order modules first ran."""
        total_macs = _total_flops(self.counter) // 2
        modules = dict(self.model.named_modules(remove_duplicate=True))
        layers: list[LayerProfile] = []
        for name, flops in self.own.items():  # insertion order: the order modules first ran
            module = modules[name]
            own_params = sum(p.numel() for p in module.parameters(recurse=False))
            macs = flops // 2
            if macs == 0 and own_params == 0:
                continue
            share = macs / total_macs if total_macs else 0.0
            layers.append(
                LayerProfile(name, type(module).__name__, own_params, macs, share, self.calls[name])
            )
        return total_macs, layers


def count_macs(model: torch.nn.Module, inputs: Inputs) -> tuple[int, list[LayerProfile]]:
    """Run ``model`` once on ``inputs`` and count its MACs, in total and per module.

    The model runs as it is (the caller chooses train/eval mode and the device); works on the
    ``meta`` device, where nothing is computed or allocated.

    Returns:
        The total MACs and the per-module table, in the order modules first ran. Modules that
        neither own parameters nor run counted ops are left out of the table.
    """
    with MacCounter(model) as counter:
        inputs.call(model)
    return counter.result()
