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
every torch call made outside leaf modules. Tensors are followed by identity and version, so the
pass knows who consumes what, which the fusion rules need.

Decomposition differs per runtime, because what a runtime fuses runs as one kernel:

- ``eager`` runs every module and function on its own (batch norm in eval mode is not folded),
  so each call is a kernel;
- ``onnxruntime`` folds batch norm into the convolution before it at export and, on the CPU,
  fuses a following addition (the residual ``Sum`` input of its NCHWc convolutions) and
  activation into it (``Conv+BN+Add+ReLU``, each part optional; ReLU, ReLU6, LeakyReLU, Sigmoid,
  Tanh, Hardsigmoid; ``Linear`` with its activation), so such a chain, when each link is the only
  consumer of the previous one, is one kernel whose key joins the links with ``" > "`` (an
  addition's other operand has the output's shape). ``Identity`` and ``Dropout`` modules vanish
  from the exported graph and are no kernels; a weightless computation repeated on the same input
  (two ReLUs of one tensor, as NAS-Bench-201 cells make) is computed once, as ONNX Runtime's
  common subexpression elimination leaves it, before fusion (so a sum read by two ReLUs fuses
  with the one that remains). Checked on optimised graphs (ONNX Runtime 1.32, AVX-512): a pruned
  MobileNetV2 runs as 52 fused NCHWc convolutions (every residual addition fused) and two
  reorders; a NAS-Bench-201 network of 1x1 convolutions keeps 2 of its 33 ReLUs.

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
from torchslim.errors import ConfigError

__all__ = ["BACKENDS", "Kernel", "enumerate_kernels"]

_logger = logging.getLogger(__name__)

#: Runtimes the latency table supports (names of latency backends).
BACKENDS = ("eager", "onnxruntime")

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ACT = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Hardsigmoid)
_ACT_FUNCTIONS = frozenset(
    f"{prefix}{name}"
    for prefix in ("torch.", "torch.Tensor.", "torch.nn.functional.")
    for name in ("relu", "relu_", "relu6", "leaky_relu", "sigmoid", "tanh", "hardsigmoid")
)
_ADD_FUNCTIONS = frozenset(
    ("torch.add", "torch.Tensor.add", "torch.Tensor.add_", "torch.Tensor.__add__")
    + ("torch.Tensor.__radd__", "torch.Tensor.__iadd__")
)
_BLOCKED = (
    nn.Conv2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_VANISH_IN_ORT = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


@dataclass(frozen=True)
class Kernel:
    """One kernel call of a forward pass.

    Attributes:
        name: Where it ran: the module's qualified name (a chain: its first module's), or
            ``"<module>:<function>"`` for a torch function called in that module's ``forward``.
        key: Its configuration, the latency table's key.
        kind: ``"module"``, ``"chain"`` (modules the runtime fuses) or ``"function"``.
        elements: Elements of its input and output tensors (memory traffic, roughly).
        params: Elements of the weights it reads (its modules' parameters and buffers, and
            parameters passed to a function): inside a model they come from memory, not from
            the cache that a kernel timed alone keeps them in.
        reordered: ONNX Runtime only: a convolution or pooling on 4-d tensors, which, timed
            alone, converts its input to the blocked NCHWc layout and its output back (measured
            on a 16-channel 32x32 map: 10 of the 16 us of a 1x1 convolution alone); inside a
            model the layout stays blocked from one such kernel to the next.
    """

    name: str
    key: str
    kind: str
    elements: int
    params: int = 0
    reordered: bool = False
    replay: _Replay | None = field(default=None, repr=False, compare=False)


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
def _value_key(t: torch.Tensor) -> tuple[int, int]:
    try:
        version = t._version
    except RuntimeError:  # inference tensors keep no version counter
        version = -1
    return id(t), version


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
    ins: list[tuple[int, int]]
    outs: list[tuple[int, int]] = field(default_factory=list)
    out: Any = None

    @property
    def is_module(self) -> bool:
        return isinstance(self.fn, nn.Module)


class _Recorder(TorchFunctionMode):
    """Records leaf-module calls (through hooks) and torch calls made outside leaf modules."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[_Call] = []
        self.keep: list[Any] = []  # every tensor seen stays alive, so no id is reused
        self.depth = 0  # > 0 inside a leaf module
        self.where: list[str] = [""]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth or getattr(func, "__name__", "") == "__get__":
            return func(*args, **kwargs)
        ins = [_value_key(t) for t in _tensors((args, kwargs))]
        out = func(*args, **kwargs)
        outs = _tensors(out)
        if outs:  # calls returning no tensor (size(), dim(), item()…) compute nothing to time
            name = _function_name(func)
            op = name.rsplit(".", 1)[-1]
            where = f"{self.where[-1]}:{op}" if self.where[-1] else op
            call = _Call(func, where, name, args, kwargs, ins)
            call.outs, call.out = [_value_key(t) for t in outs], out
            self.calls.append(call)
            self.keep.append((args, kwargs, out))
        return out

    def pre_hook(self, name: str, leaf: bool):
        def hook(module, args, kwargs):
            self.where.append(name)
            if leaf and not self.depth:
                ins = [_value_key(t) for t in _tensors((args, kwargs))]
                self.calls.append(_Call(module, name, _module_desc(module), args, kwargs, ins))
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
                    call = self.calls[-1]
                    call.outs = [_value_key(t) for t in _tensors(output)]
                    call.out = output
                    self.keep.append(output)

        return hook


def _record(model: nn.Module, inputs: Inputs) -> tuple[list[_Call], dict, list]:
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
        with torch.no_grad(), recorder:  # not inference_mode: its tensors have no versions
            output = inputs.call(model)
    finally:
        for handle in handles:
            handle.remove()
    outputs = [_value_key(t) for t in _tensors(output)]
    return recorder.calls, outputs, [recorder.keep, output]


def _stateful(fn: Any) -> bool:
    """A module with weights: two of them on one input are two computations."""
    if not isinstance(fn, nn.Module):
        return False
    return any(True for _ in fn.parameters()) or any(True for _ in fn.buffers())


def _dedupe(calls: list[_Call], outputs: list[tuple[int, int]]) -> set[int]:
    """Drop common subexpressions, as ONNX Runtime does: a weightless call repeated on the same
    inputs with the same arguments is computed once, and its repeats' readers read the first.
    Rewrites ``ins`` and ``outputs`` in place; returns the indices of the dropped calls."""
    alias: dict[tuple[int, int], tuple[int, int]] = {}
    first: dict[tuple, int] = {}
    dropped = set()
    for i, call in enumerate(calls):
        call.ins = [alias.get(k, k) for k in call.ins]
        if call.is_module and _stateful(call.fn):
            continue
        j = first.setdefault((call.desc, tuple(call.ins), _call_sig(call.args, call.kwargs)), i)
        if j != i and len(calls[j].outs) == len(call.outs):
            alias.update(zip(call.outs, calls[j].outs, strict=True))
            dropped.add(i)
    outputs[:] = [alias.get(k, k) for k in outputs]
    return dropped


def _consumers(calls: list[_Call], outputs: list, dropped: set[int]) -> dict[tuple, list[int]]:
    consumers: dict[tuple[int, int], list[int]] = {}
    for i, call in enumerate(calls):
        if i not in dropped:
            for key in call.ins:
                consumers.setdefault(key, []).append(i)
    for key in outputs:
        consumers.setdefault(key, []).append(-1)  # the model's output
    return consumers


# ------------------------------------------------------------------------------------ fusion
def _sole_input(call: _Call) -> tuple[int, int] | None:
    return call.ins[0] if len(call.ins) == 1 else None


def _is_act(call: _Call) -> bool:
    if call.is_module:
        return isinstance(call.fn, _ACT)
    return call.desc in _ACT_FUNCTIONS


def _is_add(call: _Call) -> bool:
    """An addition of two tensors of one shape (what ONNX Runtime fuses into a convolution)."""
    if call.is_module or call.desc not in _ADD_FUNCTIONS or len(call.ins) != 2:
        return False
    return len({tuple(t.shape) for t in _tensors((call.args, call.kwargs))}) == 1


def _follower(calls: list[_Call], consumers: dict, call: _Call, accept) -> int | None:
    """The index of the call that alone consumes ``call``'s output, when ``accept`` takes it; it
    must take that output as its only tensor, or (an addition) as one of its two operands."""
    if len(call.outs) != 1:
        return None
    users = consumers.get(call.outs[0], [])
    if len(users) != 1 or users[0] < 0:
        return None
    nxt = calls[users[0]]
    takes = _sole_input(nxt) == call.outs[0] or (_is_add(nxt) and call.outs[0] in nxt.ins)
    return users[0] if takes and accept(nxt) else None


def _chains(calls: list[_Call], consumers: dict, backend: str, dropped: set) -> list[list[int]]:
    """Group call indices into kernels (in execution order of their first call)."""
    groups: list[list[int]] = []
    taken: set[int] = set(dropped)
    fusable = (*_CONV, nn.Linear)
    for i, call in enumerate(calls):
        if i in taken:
            continue
        if backend == "onnxruntime" and call.is_module and isinstance(call.fn, _VANISH_IN_ORT):
            continue
        group = [i]
        if backend == "onnxruntime" and call.is_module and isinstance(call.fn, fusable):
            # Conv (+ BN folded at export) (+ Add, the Sum input) (+ activation); Linear (+ act.)
            follow = [_is_act]
            if isinstance(call.fn, _CONV):
                follow = [lambda c: c.is_module and isinstance(c.fn, _BN), _is_add, _is_act]
            for accept in follow:
                j = _follower(calls, consumers, calls[group[-1]], accept)
                if j is not None and j not in taken:
                    group.append(j)
        taken.update(group)
        groups.append(group)
    return groups


# ------------------------------------------------------------------------------------ replay
class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index


_PREV = object()


class _Replay(nn.Module):
    """Replays recorded calls (a chain feeds each output to the next) on given tensors.

    Arguments are filled by position where they are flat (the usual case), so the replay adds
    the same small cost to every kernel, which the empty kernel's time then removes.
    """

    def __init__(self, steps: list[tuple[Any, tuple, dict]], tensors: list[torch.Tensor]) -> None:
        super().__init__()
        self.mods = nn.ModuleList()
        self.steps = []
        for fn, args, kwargs in steps:
            if isinstance(fn, nn.Module):
                self.mods.append(copy.deepcopy(fn))  # never time (or export) the caller's module
                fn = len(self.mods) - 1
            flat = not any(isinstance(v, (tuple, list, dict)) for v in (*args, *kwargs.values()))
            self.steps.append((fn, args, kwargs, flat))
        self.tensors = tensors

    def forward(self, *tensors: torch.Tensor) -> Any:
        prev = None

        def fill(v: Any) -> Any:
            if isinstance(v, _Slot):
                return tensors[v.index]
            return prev if v is _PREV else v

        for fn, args, kwargs, flat in self.steps:
            call = self.mods[fn] if isinstance(fn, int) else fn
            if flat:
                args = [fill(v) for v in args]
                kwargs = {k: fill(v) for k, v in kwargs.items()} if kwargs else kwargs
            else:
                args, kwargs = tree_map(fill, (args, kwargs))
            prev = call(*args, **kwargs)
        return prev


def _replay(group: list[_Call]) -> _Replay:
    tensors: list[torch.Tensor] = []
    steps = []
    prev_key = None
    for call in group:

        def slot(v: Any, chained: tuple | None = prev_key) -> Any:
            if not isinstance(v, torch.Tensor):
                return v
            if chained is not None and _value_key(v)[0] == chained[0]:
                return _PREV
            tensors.append(v.detach().clone())
            return _Slot(len(tensors) - 1)

        args, kwargs = tree_map(slot, (call.args, call.kwargs))
        steps.append((call.fn, args, kwargs))
        prev_key = call.outs[0] if call.outs else None
    return _Replay(steps, tensors)


def _blocked(call: _Call) -> bool:
    """Whether ONNX Runtime runs the call in its blocked layout: convolutions and pooling."""
    tensors = _tensors((call.args, call.kwargs))
    if not tensors or tensors[0].dim() != 4:
        return False
    if call.is_module:
        return isinstance(call.fn, _BLOCKED)
    return "pool" in call.desc.rsplit(".", 1)[-1]


def enumerate_kernels(
    model: nn.Module, inputs: Inputs, backend: str, *, replay_for: Any = None
) -> list[Kernel]:
    """The kernels of one forward pass of ``model`` (in eval mode already) on ``inputs``.

    Args:
        backend: ``"eager"`` or ``"onnxruntime"`` (its fusion rules).
        replay_for: ``replay_for(key) -> bool``: attach a replay module (with copies of the
            recorded tensors) to the first kernel of each key it accepts, so it can be timed.
    """
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown latency table backend {backend!r}; known: {', '.join(BACKENDS)}"
        )
    calls, outputs, _alive = _record(model, inputs)
    dropped = _dedupe(calls, outputs) if backend == "onnxruntime" else set()
    consumers = _consumers(calls, outputs, dropped)
    kernels = []
    seen: set[str] = set()
    for group in _chains(calls, consumers, backend, dropped):
        members = [calls[i] for i in group]
        first = members[0]
        if first.is_module:
            desc = " > ".join(c.desc for c in members)
            key = f"{desc} @ ({_call_sig(first.args, first.kwargs)})"
            kind = "chain" if len(members) > 1 else "module"
        else:
            key = f"{first.desc}({_call_sig(first.args, first.kwargs)})"
            kind = "function"
        elements = sum(t.numel() for t in _tensors((first.args, first.kwargs)))
        for prev, member in zip(members, members[1:], strict=False):  # other operands of a chain
            chained = {k[0] for k in prev.outs}
            tensors = _tensors((member.args, member.kwargs))
            elements += sum(t.numel() for t in tensors if id(t) not in chained)
        elements += sum(t.numel() for t in _tensors(members[-1].out))
        params = sum(
            sum(t.numel() for t in (*c.fn.parameters(), *c.fn.buffers()))
            if c.is_module
            else sum(t.numel() for t in _tensors((c.args, c.kwargs)) if isinstance(t, nn.Parameter))
            for c in members
        )
        replay = None
        if replay_for is not None and key not in seen and replay_for(key):
            replay = _replay(members)
        seen.add(key)
        reordered = backend == "onnxruntime" and _blocked(first)
        kernels.append(
            Kernel(first.name, key, kind, int(elements), int(params), reordered, replay=replay)
        )
    return kernels
