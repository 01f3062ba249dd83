"""Timing a kernel alone, as the latency table does (see ``_latency_kernels`` for kernels).

Eager: a small module replays the kernel's recorded calls on copies of the recorded tensors,
timed by :func:`torchslim.measure_latency` with the eager backend. ONNX Runtime: the node of the
optimised graph, alone in a one-node model, timed in its own session with inputs and outputs
bound once (see ``_latency_ort``). Its latency is the lowest of two medians taken seconds
apart: load from other processes only ever adds time, and on a shared machine one pass alone
left single kernels up to 2.6x high. The empty kernel (a call that computes nothing) gives the
harness's own cost, which the table subtracts from every kernel.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from torchslim._inputs import Inputs
from torchslim.errors import ConfigError
from torchslim.profiling._latency import Latency, measure_latency
from torchslim.search._latency_kernels import Kernel, _Replay, _Slot
from torchslim.search._latency_ort import OrtNode, OrtNodeBackend, ort_empty_kernel

__all__ = ["empty_kernel", "time_kernels"]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def empty_kernel(backend: str = "eager") -> Kernel:
    """A call that computes nothing: the timing harness's own cost, subtracted from every kernel.

    Eager: a plain function, not a module, so a module kernel keeps the cost of its module call,
    which it also pays inside a model. ONNX Runtime: an ``Identity`` node on one element.
    """
    if backend == "onnxruntime":
        return ort_empty_kernel()
    replay = _Replay(_identity, (_Slot(0),), {}, [torch.zeros(1)])
    return Kernel("(empty)", "(empty)", "function", 2, 0, replay=replay)


class _Prepared:
    """One kernel ready to time: its replay module on the device, or its ONNX Runtime session."""

    def __init__(self, kernel: Kernel, backend: str, threads: int, device: Any) -> None:
        replay = kernel.replay
        if replay is None:
            raise ConfigError(f"kernel {kernel.key!r} has no replay module to time")
        self.common = dict(device=device, threads=threads)
        self.runs = 0
        self.impl: Any = "eager"
        if isinstance(replay, OrtNode):  # an ONNX Runtime node: its own session times it
            self.impl = OrtNodeBackend(replay)
            self.replay: torch.nn.Module = torch.nn.Identity()
            self.inputs = Inputs((torch.zeros(1),), {})
            return
        if backend != "eager":
            raise ConfigError(f"kernel {kernel.key!r} replays in eager PyTorch, not {backend}")
        self.replay = replay.to(device).eval()
        self.inputs = Inputs(tuple(t.to(device) for t in replay.tensors), {})

    def time(self, warmup: int, target_ms: float, min_runs: int, max_runs: int) -> Latency:
        # the first call of a pass settles (the backend's settle_ms: ONNX Runtime's other
        # sessions, the kernels timed just before, stop spinning); the probe's follow-up need not
        settle = None
        if not self.runs:  # a short probe sets the number of runs that fills target_ms
            probe = measure_latency(
                self.replay, self.inputs, backend=self.impl, warmup=warmup, runs=3, **self.common
            )
            runs = math.ceil(target_ms / max(probe.median_ms, 1e-4))
            self.runs = max(min_runs, min(max_runs, runs))
            warmup, settle = 2, 0.0
        return measure_latency(
            self.replay,
            self.inputs,
            backend=self.impl,
            warmup=warmup,
            runs=self.runs,
            settle_ms=settle,
            **self.common,
        )


def time_kernels(
    kernels: list[Kernel],
    backend: str,
    *,
    threads: int,
    device: torch.device | str = "cpu",
    warmup: int = 5,
    target_ms: float = 20.0,
    min_runs: int = 10,
    max_runs: int = 300,
    passes: int = 2,
    chunk: int = 16,
) -> Iterator[tuple[Kernel, dict[str, Any]]]:
    """Time each kernel alone; yield ``(kernel, entry)`` with ``entry["ms"]`` its latency.

    Kernels are prepared ``chunk`` at a time (ONNX Runtime: each node given a session), then
    timed in ``passes`` passes over the chunk, each a median over enough runs to fill about
    ``target_ms``; a kernel's latency is its lowest pass median. Passes are seconds apart, so a
    burst of load from another process inflates one pass of a kernel, not its latency. A kernel
    that cannot be run yields ``{"ms": None, "error": ...}``.
    """
    for start in range(0, len(kernels), chunk):
        prepared: dict[int, _Prepared] = {}
        errors: dict[int, str] = {}
        medians: dict[int, list[Latency]] = {}
        group = kernels[start : start + chunk]
        for i, kernel in enumerate(group):
            try:
                prepared[i] = _Prepared(kernel, backend, threads, device)
            except Exception as exc:  # noqa: BLE001 - recorded, so it is not retried
                errors[i] = _first_line(exc)
        for _ in range(passes):
            for i, prep in list(prepared.items()):
                try:
                    medians.setdefault(i, []).append(
                        prep.time(warmup, target_ms, min_runs, max_runs)
                    )
                except Exception as exc:  # noqa: BLE001
                    errors[i] = _first_line(exc)
                    del prepared[i]
        for i, kernel in enumerate(group):
            if i in errors:
                yield kernel, {"ms": None, "error": errors[i]}
                continue
            best = min(medians[i], key=lambda lat: lat.median_ms)
            yield (
                kernel,
                {
                    "ms": best.median_ms,
                    "iqr_ms": best.iqr_ms,
                    "runs": sum(lat.runs for lat in medians[i]),
                    "passes_ms": [lat.median_ms for lat in medians[i]],
                },
            )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
