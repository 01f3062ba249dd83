"""The kernels of a forward pass, as the latency table sees them, and how to time one alone.

A *kernel* is one unit that a runtime executes: a leaf module call (``Conv2d``, ``BatchNorm2d``,
``ReLU``…), or a torch function called outside leaf modules (``x + y``, ``torch.flatten``,
``F.adaptive_avg_pool2d``…), with its full configuration and the shapes it ran on. Its *key* is a
canonical string: the module's class and ``extra_repr`` (which holds channels, kernel size,
stride, padding, dilation, groups, bias…) or the function's qualified name, then every argument
(tensors as ``1x16x32x32:float32``, other values by ``repr``, objects by type name)::

    Conv2d(16, 32, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)) @ (1x16x32x32:float32)
    torch.Tensor.add(1x32x16x16:float32, 1x32x16x16:float32)

Kernels are found on one real forward pass: forward hooks on every module (leaf modules are
kernels; the names of the others say where a function ran) and a ``TorchFunctionMode`` that sees
every torch call made outside leaf modules.

This is the eager decomposition: eager PyTorch runs every module and function on its own (batch
norm in eval mode is not folded), so each call is a kernel. ONNX Runtime runs another graph, the
one its optimiser makes, so its kernels are that graph's nodes (see ``_latency_ort``).

Each kernel of a key not yet in the table carries a replay module (the recorded calls on copies
of the recorded tensors) that ``_latency_timing`` times alone.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._pytree import tree_flatten, tree_map

from torchslim._inputs import Inputs

__all__ = ["BACKENDS", "Kernel", "enumerate_kernels"]

_logger = logging.getLogger(__name__)

#: Runtimes the latency table supports (names of latency backends).
BACKENDS = ("eager", "onnxruntime")


@dataclass(frozen=True)
class Kernel:
    """One kernel call of a forward pass.

    Attributes:
        name: Where it ran: the module's qualified name, or ``"<module>:<function>"`` for a
            torch function called in that module's ``forward`` (ONNX Runtime: the node's name).
        key: Its configuration, the latency table's key.
        kind: ``"module"`` or ``"function"`` (eager); ``"node"`` (ONNX Runtime).
        elements: Elements of its input and output tensors (memory traffic, roughly).
        params: Elements of the weights it reads (its modules' parameters and buffers, and
            parameters passed to a function; a node's initializers): inside a model they come
            from memory, not from the cache that a kernel timed alone keeps them in.
        reordered: ONNX Runtime only: a node that converts between the plain and the blocked
            channel layout (``ReorderInput``, ``ReorderOutput``).
        matrix: It multiplies by a weight matrix or filter (a weight of two or more
            dimensions: convolutions, linear layers). The others (additions, activations,
            pooling, normalisation, reorders) are bound by memory traffic, which inside a model
            reads what the previous kernel's threads have just written.
    """

    name: str
    key: str
    kind: str
    elements: int
    params: int = 0
    reordered: bool = False
    matrix: bool = False
    replay: Any = field(default=None, repr=False, compare=False)  # a _Replay or an OrtNode


# ------------------------------------------------------------------------- canonical strings
def _tensor_sig(t: torch.Tensor) -> str:
    shape = "x".join(map(str, t.shape)) or "scalar"
    layout = ""
    if not t.is_contiguous():
        cl = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
        layout = ":channels_last" if cl else ":strided"
    return f"{shape}:{str(t.dtype).removeprefix('torch.')}{layout}"


def _fmt(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return _tensor_sig(value)
    if value is None or isinstance(value, (bool, int, float, str, slice, type(Ellipsis))):
        return repr(value)
    if isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
        return str(value)
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_fmt(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_fmt(v)}" for k, v in value.items()) + "}"
    return type(value).__name__  # an object: its address would make every run's key differ


def _call_sig(args: tuple, kwargs: dict) -> str:
    parts = [_fmt(a) for a in args] + [f"{k}={_fmt(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)


def _module_desc(module: nn.Module) -> str:
    return f"{type(module).__name__}({module.extra_repr()})"


def _function_name(func: Any) -> str:
    name = resolve_name(func)
    if name:
        return name
    owner = getattr(func, "__module__", None) or ""
    return f"{owner}.{getattr(func, '__qualname__', getattr(func, '__name__', repr(func)))}"


# ---------------------------------------------------------------------------------- recording
def _tensors(tree: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(tree)
    return [x for x in leaves if isinstance(x, torch.Tensor)]


@dataclass
class _Call:
    fn: Any  # a module or a function
    name: str
    desc: str
    args: tuple
    kwargs: dict
    out: Any = None

    @property
    def is_module(self) -> bool:
        return isinstance(self.fn, nn.Module)


class _Recorder(TorchFunctionMode):
    """Records leaf-module calls (through hooks) and torch calls made outside leaf modules."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[_Call] = []
        self.keep: list[Any] = []  # every tensor seen stays alive until replays copy them
        self.depth = 0  # > 0 inside a leaf module
        self.where: list[str] = [""]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth or getattr(func, "__name__", "") == "__get__":
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        if _tensors(out):  # calls returning no tensor (size(), dim()…) compute nothing to time
            name = _function_name(func)
            op = name.rsplit(".", 1)[-1]
            where = f"{self.where[-1]}:{op}" if self.where[-1] else op
            self.calls.append(_Call(func, where, name, args, kwargs, out))
            self.keep.append((args, kwargs, out))
        return out

    def pre_hook(self, name: str, leaf: bool):
        def hook(module, args, kwargs):
            self.where.append(name)
            if leaf and not self.depth:
                self.calls.append(_Call(module, name, _module_desc(module), args, kwargs))
                self.keep.append((args, kwargs))
            if leaf:
                self.depth += 1

        return hook

    def post_hook(self, leaf: bool):
        def hook(module, args, kwargs, output):
            self.where.pop()
            if leaf:
                self.depth -= 1
                if not self.depth:
                    self.calls[-1].out = output
                    self.keep.append(output)

        return hook


def _record(model: nn.Module, inputs: Inputs) -> tuple[list[_Call], list]:
    recorder = _Recorder()
    handles = []
    names = {}
    for name, module in model.named_modules():
        names.setdefault(module, name)
    try:
        for module, name in names.items():
            leaf = not any(True for _ in module.children())
            handles.append(
                module.register_forward_pre_hook(recorder.pre_hook(name, leaf), with_kwargs=True)
            )
            handles.append(module.register_forward_hook(recorder.post_hook(leaf), with_kwargs=True))
        with torch.no_grad(), recorder:
            output = inputs.call(model)
    finally:
        for handle in handles:
            handle.remove()
    return recorder.calls, [recorder.keep, output]


# ------------------------------------------------------------------------------------ replay
class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index


class _Replay(nn.Module):
    """Replays one recorded call on given tensors (its arguments hold :class:`_Slot` for them).

    Arguments are filled by position where they are flat (the usual case), so the replay adds
    the same small cost to every kernel, which the empty kernel's time then removes.
    """

    def __init__(self, fn: Any, args: tuple, kwargs: dict, tensors: list[torch.Tensor]) -> None:
        super().__init__()
        # a module is copied: never time (or export) the caller's module
        self.module = copy.deepcopy(fn) if isinstance(fn, nn.Module) else None
        self.fn = None if self.module is not None else fn
        self.args, self.kwargs = args, kwargs
        self.flat = not any(isinstance(v, (tuple, list, dict)) for v in (*args, *kwargs.values()))
        self.tensors = tensors

    def forward(self, *tensors: torch.Tensor) -> Any:
        def fill(v: Any) -> Any:
            return tensors[v.index] if isinstance(v, _Slot) else v

        call = self.module if self.module is not None else self.fn
        if self.flat:
            args = [fill(v) for v in self.args]
            kwargs = {k: fill(v) for k, v in self.kwargs.items()} if self.kwargs else self.kwargs
        else:
            args, kwargs = tree_map(fill, (self.args, self.kwargs))
        return call(*args, **kwargs)


def _replay(call: _Call) -> _Replay:
    tensors: list[torch.Tensor] = []

    def slot(v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return v
        tensors.append(v.detach().clone())
        return _Slot(len(tensors) - 1)

    args, kwargs = tree_map(slot, (call.args, call.kwargs))
    return _Replay(call.fn, args, kwargs, tensors)


def enumerate_kernels(model: nn.Module, inputs: Inputs, *, replay_for: Any = None) -> list[Kernel]:
    """The eager kernels of one forward pass of ``model`` (in eval mode already) on ``inputs``:
    every leaf module call and every torch function called outside leaf modules (ONNX Runtime's
    kernels are its graph's nodes: ``_latency_ort``).

    Args:
        replay_for: ``replay_for(key) -> bool``: attach a replay module (with copies of the
            recorded tensors) to the first kernel of each key it accepts, so it can be timed.
    """
    calls, _alive = _record(model, inputs)
    kernels = []
    seen: set[str] = set()
    for call in calls:
        tensors = _tensors((call.args, call.kwargs))
        if call.is_module:
            key = f"{call.desc} @ ({_call_sig(call.args, call.kwargs)})"
            weights = [*call.fn.parameters(), *call.fn.buffers()]
        else:
            key = f"{call.desc}({_call_sig(call.args, call.kwargs)})"
            weights = [t for t in tensors if isinstance(t, nn.Parameter)]
        params = sum(t.numel() for t in weights)
        matrix = any(t.dim() >= 2 for t in weights)
        elements = sum(t.numel() for t in tensors) + sum(t.numel() for t in _tensors(call.out))
        replay = None
        if replay_for is not None and key not in seen and replay_for(key):
            replay = _replay(call)
        seen.add(key)
        kind = "module" if call.is_module else "function"
        kernels.append(
            Kernel(call.name, key, kind, int(elements), int(params), False, matrix, replay=replay)
        )
    return kernels
