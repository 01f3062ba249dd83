"""The kernels of a forward pass, as the latency table sees them, and how to time one alone.

A *kernel* is one unit that a runtime executes: a leaf module call (``Conv2d``, ``BatchNorm2d``,
``ReLU``…), or a torch function called outside leaf modules (``x + y``, ``torch.flatten``,
``F.adaptive_avg_pool2d``…), with its full configuration and the shapes it ran on. Its *key* is a
canonical string: the module's class and ``extra_repr`` (which holds channels, kernel size,
stride, padding, dilation, groups, bias…) or the function's qualified name, then every argument
(tensors as ``1x16x32x32:float32``, other values by ``repr``, objects by type name)::

    Conv2d(16, 32, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)) @ (1x16x32x32:float32)
    torch.Tensor.__add__(1x32x16x16:float32, 1x32x16x16:float32)

Kernels are found on one real forward pass: forward hooks on every module (leaf modules are
kernels; the names of the others say where a function ran) and a ``TorchFunctionMode`` that sees
every torch call made outside leaf modules. Tensors are followed by identity and version, so the
pass knows who consumes what, which the fusion rules need.

Decomposition differs per runtime, because what a runtime fuses runs as one kernel:

- ``eager`` runs every module and function on its own (batch norm in eval mode is not folded),
  so each call is a kernel;
- ``onnxruntime`` folds batch norm into the convolution before it at export and fuses the
  activation after it (``Conv+BN+ReLU/ReLU6/LeakyReLU/Sigmoid/Tanh/Hardsigmoid``; ``Linear`` with
  its activation), so such a chain, when each link is the only consumer of the previous one, is
  one kernel whose key joins the links with ``" > "``; ``Identity`` and ``Dropout`` modules vanish
  from the exported graph and are no kernels.

A kernel is timed alone by :func:`time_kernel`: a small module replays the recorded calls on
copies of the recorded tensors (eager: :func:`torchslim.measure_latency` with the eager
backend; ONNX Runtime: the module exported with the TorchScript exporter, as the whole model
is, and timed in a session made exactly as the ``onnxruntime`` backend makes them).
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._pytree import tree_flatten, tree_map

from torchslim._extras import require
from torchslim._inputs import Inputs
from torchslim.errors import ConfigError, ExportError
from torchslim.profiling._latency import Latency, measure_latency

__all__ = ["BACKENDS", "Kernel", "enumerate_kernels", "time_kernel", "empty_kernel"]

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
    """

    name: str
    key: str
    kind: str
    elements: int
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
    consumers: dict[tuple[int, int], list[int]] = {}
    for i, call in enumerate(recorder.calls):
        for key in call.ins:
            consumers.setdefault(key, []).append(i)
    for t in _tensors(output):
        consumers.setdefault(_value_key(t), []).append(-1)  # the model's output
    return recorder.calls, consumers, [recorder.keep, output]


# ------------------------------------------------------------------------------------ fusion
def _sole_input(call: _Call) -> tuple[int, int] | None:
    return call.ins[0] if len(call.ins) == 1 else None


def _is_act(call: _Call) -> bool:
    if call.is_module:
        return isinstance(call.fn, _ACT)
    return call.desc in _ACT_FUNCTIONS


def _follower(calls: list[_Call], consumers: dict, call: _Call, accept) -> int | None:
    """The index of the call that alone consumes ``call``'s output, when ``accept`` takes it."""
    if len(call.outs) != 1:
        return None
    users = consumers.get(call.outs[0], [])
    if len(users) != 1 or users[0] < 0:
        return None
    nxt = calls[users[0]]
    return users[0] if _sole_input(nxt) == call.outs[0] and accept(nxt) else None


def _chains(calls: list[_Call], consumers: dict, backend: str) -> list[list[int]]:
    """Group call indices into kernels (in execution order of their first call)."""
    groups: list[list[int]] = []
    taken: set[int] = set()
    for i, call in enumerate(calls):
        if i in taken:
            continue
        if backend == "onnxruntime" and call.is_module and isinstance(call.fn, _VANISH_IN_ORT):
            continue
        group = [i]
        if backend == "onnxruntime" and call.is_module and isinstance(call.fn, (*_CONV, nn.Linear)):
            last = call
            if isinstance(call.fn, _CONV):
                j = _follower(
                    calls, consumers, last, lambda c: c.is_module and isinstance(c.fn, _BN)
                )
                if j is not None:
                    group.append(j)
                    last = calls[j]
            j = _follower(calls, consumers, last, _is_act)
            if j is not None:
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
    """Replays recorded calls (a chain feeds each output to the next) on given tensors."""

    def __init__(self, steps: list[tuple[Any, tuple, dict]], tensors: list[torch.Tensor]) -> None:
        super().__init__()
        self.mods = nn.ModuleList()
        self.steps = []
        for fn, args, kwargs in steps:
            if isinstance(fn, nn.Module):
                self.mods.append(copy.deepcopy(fn))  # never time (or export) the caller's module
                fn = len(self.mods) - 1
            self.steps.append((fn, args, kwargs))
        self.tensors = tensors

    def forward(self, *tensors: torch.Tensor) -> Any:
        prev = None

        def fill(v: Any) -> Any:
            if isinstance(v, _Slot):
                return tensors[v.index]
            return prev if v is _PREV else v

        for fn, args, kwargs in self.steps:
            call = self.mods[fn] if isinstance(fn, int) else fn
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
    calls, consumers, _alive = _record(model, inputs)
    kernels = []
    seen: set[str] = set()
    for group in _chains(calls, consumers, backend):
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
        elements += sum(t.numel() for t in _tensors(members[-1].out))
        replay = None
        if replay_for is not None and key not in seen and replay_for(key):
            replay = _replay(members)
        seen.add(key)
        kernels.append(Kernel(first.name, key, kind, int(elements), replay))
    return kernels


# ------------------------------------------------------------------------------------ timing
def empty_kernel() -> Kernel:
    """The runtime's cost of one call that computes nothing (subtracted from every kernel)."""
    return Kernel(
        "(empty)",
        "(empty)",
        "module",
        2,
        _Replay([(nn.Identity(), (_Slot(0),), {})], [torch.zeros(1)]),
    )


def _ort_backend(replay: _Replay, tensors: list[torch.Tensor], threads: int, device, folder: str):
    from torchslim.export._io import FlatModule, input_names
    from torchslim.export._onnx import _quiet_torchscript_log
    from torchslim.export._ort_backend import OnnxRuntimeBackend, _providers
    from torchslim.export._verify import ort_session

    ort = require("onnxruntime", "the latency table's onnxruntime backend")
    inputs = Inputs(tuple(tensors), {})
    path = Path(folder) / "kernel.onnx"
    flat = FlatModule(replay, inputs)
    with warnings.catch_warnings(), _quiet_torchscript_log():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            flat,
            tuple(tensors),
            str(path),
            dynamo=False,
            input_names=input_names(inputs),
            do_constant_folding=True,
        )
    session = ort_session(path, threads=threads, providers=_providers(ort, torch.device(device)))
    return OnnxRuntimeBackend(onnx_model=session)


def time_kernel(
    kernel: Kernel,
    backend: str,
    *,
    threads: int,
    device: torch.device | str = "cpu",
    warmup: int = 5,
    target_ms: float = 20.0,
    min_runs: int = 10,
    max_runs: int = 300,
) -> Latency:
    """Time ``kernel`` alone: a short probe, then enough runs to fill about ``target_ms``.

    Raises:
        ExportError: when the kernel cannot be exported to ONNX (``onnxruntime`` only).
    """
    replay = kernel.replay
    if replay is None:
        raise ConfigError(f"kernel {kernel.key!r} has no replay module to time")
    tensors = [t.to(device) for t in replay.tensors]
    replay = replay.to(device).eval()
    inputs = Inputs(tuple(tensors), {})
    with tempfile.TemporaryDirectory(prefix="torchslim-kernel-") as folder:
        impl: Any = "eager"
        if backend == "onnxruntime":
            try:
                impl = _ort_backend(replay, tensors, threads, device, folder)
            except Exception as exc:  # noqa: BLE001 - exporters raise many types
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ExportError(f"kernel {kernel.key!r} at {kernel.name}: {first}") from exc
        common = dict(backend=impl, device=device, threads=threads)
        probe = measure_latency(replay, inputs, warmup=warmup, runs=3, **common)
        runs = math.ceil(target_ms / max(probe.median_ms, 1e-4))
        runs = max(min_runs, min(max_runs, runs))
        return measure_latency(replay, inputs, warmup=2, runs=runs, **common)
