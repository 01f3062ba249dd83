"""Latency: a typed result, a timing loop, and a registry of backends.

A backend turns ``(model, inputs, device, threads)`` into a zero-argument *runner* that performs one
inference; the shared timing loop warms it up, then times each run on its own with the device
synchronised before and after, so every backend is measured the same way. ``eager`` and ``compile``
ship here; the ONNX Runtime backend registers itself the same way from the export package.

Register a backend::

    @ts.register_latency_backend("mine")
    class Mine(ts.LatencyBackend):
        def prepare(self, model, inputs, device, threads):
            return lambda: model(*inputs.args, **inputs.kwargs)
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from torchslim._inputs import Inputs
from torchslim.errors import ConfigError

__all__ = [
    "Latency",
    "LatencyBackend",
    "register_latency_backend",
    "list_latency_backends",
    "get_latency_backend",
    "measure_latency",
    "pinned_threads",
    "warm_up",
]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Latency:
    """Measured latency of one inference, in milliseconds.

    Attributes:
        median_ms: Median over the timed runs: the figure to compare.
        p90_ms: 90th percentile.
        mean_ms, min_ms, max_ms: The usual statistics.
        iqr_ms: Interquartile range (p75 - p25), the spread.
        runs: Number of timed runs. warmup: Untimed runs before them.
        threads: CPU threads (intra-op) in force during the measurement.
        backend: Latency backend name. device: Device the model ran on.
        batch_size: Leading dimension of the first input tensor.
        samples_ms: Every timed run, in order.
    """

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    iqr_ms: float
    runs: int
    warmup: int
    threads: int
    backend: str
    device: str
    batch_size: int | None
    samples_ms: tuple[float, ...] = ()

    @property
    def throughput(self) -> float | None:
        """Samples per second at the median latency, or ``None`` without a batch size."""
        if not self.batch_size or self.median_ms <= 0:
            return None
        return self.batch_size * 1000.0 / self.median_ms

    @classmethod
    def from_samples(cls, samples_ms: list[float], **fields: Any) -> Latency:
        if not samples_ms:
            raise ConfigError("runs must be >= 1 to measure latency")
        ordered = sorted(samples_ms)
        if len(ordered) >= 2:
            q = statistics.quantiles(ordered, n=20, method="inclusive")  # 5% steps
            p25, p75, p90 = q[4], q[14], q[17]
        else:
            p25 = p75 = p90 = ordered[0]
        return cls(
            median_ms=statistics.median(ordered),
            p90_ms=p90,
            mean_ms=statistics.fmean(ordered),
            min_ms=ordered[0],
            max_ms=ordered[-1],
            iqr_ms=p75 - p25,
            samples_ms=tuple(samples_ms),
            **fields,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "mean_ms": self.mean_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
            "iqr_ms": self.iqr_ms,
            "runs": self.runs,
            "warmup": self.warmup,
            "threads": self.threads,
            "backend": self.backend,
            "device": self.device,
            "batch_size": self.batch_size,
            "samples_ms": list(self.samples_ms),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Latency:
        data = dict(data)
        data["samples_ms"] = tuple(data.get("samples_ms", ()))
        return cls(**data)

    def __str__(self) -> str:
        return (
            f"{self.median_ms:.3f} ms median (p90 {self.p90_ms:.3f}, IQR {self.iqr_ms:.3f}; "
            f"{self.runs} runs after {self.warmup} warm-up; {self.backend} on {self.device}, "
            f"{self.threads} threads, batch {self.batch_size})"
        )


class LatencyBackend(ABC):
    """Turns a model into something that can be timed.

    Contract: :meth:`prepare` may copy or convert the model but must not modify it; the runner it
    returns performs exactly one inference on the prepared inputs and is called from one thread.
    Work that must finish before the clock stops (asynchronous devices) is waited for by
    :meth:`synchronize`.
    """

    name: str = ""
    #: Untimed running, in ms, before timing (on top of the warm-up runs), so that threads other
    #: runners left busy have gone idle. ONNX Runtime sets 40: every session owns a thread pool
    #: whose workers spin for about 30 ms after a run, and while another session's workers spin
    #: a model timed on 2 cores runs up to 2x slower (measured on small CNNs; issue #17011 of
    #: microsoft/onnxruntime reports the same slowdown between sessions run in turn).
    settle_ms: float = 0.0

    @abstractmethod
    def prepare(
        self, model: torch.nn.Module, inputs: Inputs, device: torch.device, threads: int
    ) -> Callable[[], Any]:
        """Return a zero-argument callable that runs one inference."""

    def synchronize(self, device: torch.device) -> None:
        """Wait for work queued on ``device``; the default handles CUDA."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)


_BACKENDS: dict[str, type[LatencyBackend]] = {}


def register_latency_backend(name: str) -> Callable[[type[LatencyBackend]], type[LatencyBackend]]:
    """Class decorator that registers a :class:`LatencyBackend` under ``name``."""

    def decorator(cls: type[LatencyBackend]) -> type[LatencyBackend]:
        if not (isinstance(cls, type) and issubclass(cls, LatencyBackend)):
            raise ConfigError(f"latency backend {name!r} must subclass torchslim.LatencyBackend")
        if name in _BACKENDS and _BACKENDS[name] is not cls:
            raise ConfigError(f"a latency backend named {name!r} is already registered")
        cls.name = name
        _BACKENDS[name] = cls
        return cls

    return decorator


def _load_plugin_backends() -> None:
    """Import modules that register optional backends (they import nothing heavy themselves)."""
    with contextlib.suppress(ImportError):
        import torchslim.export._ort_backend  # noqa: F401


def list_latency_backends() -> list[str]:
    """Names of the registered latency backends."""
    _load_plugin_backends()
    return sorted(_BACKENDS)


def get_latency_backend(backend: str | LatencyBackend) -> LatencyBackend:
    """Resolve a backend name or instance; an unknown name lists the known ones."""
    if isinstance(backend, LatencyBackend):
        return backend
    _load_plugin_backends()
    if backend not in _BACKENDS:
        raise ConfigError(
            f"unknown latency backend {backend!r}; known backends: {', '.join(sorted(_BACKENDS))}"
        )
    return _BACKENDS[backend]()


@contextlib.contextmanager
def pinned_threads(threads: int | None) -> Iterator[int]:
    """Set PyTorch's intra-op CPU thread count for the block and restore it afterwards."""
    before = torch.get_num_threads()
    if threads is None:
        yield before
        return
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def warm_up(runner: Callable[[], Any], runs: int, settle_ms: float = 0.0) -> int:
    """Call ``runner`` ``runs`` times, then on until ``settle_ms`` have passed since the first
    call; returns the number of calls."""
    start = time.perf_counter()
    done = 0
    while done < runs or (time.perf_counter() - start) * 1000.0 < settle_ms:
        runner()
        done += 1
    return done


def measure_latency(
    model: torch.nn.Module,
    inputs: Inputs,
    *,
    backend: str | LatencyBackend = "eager",
    device: torch.device | str = "cpu",
    threads: int | None = None,
    warmup: int = 10,
    runs: int = 50,
    settle_ms: float | None = None,
) -> Latency:
    """Time one inference of ``model`` on ``inputs`` (already on ``device``).

    Each run is timed on its own with :func:`time.perf_counter`, the device synchronised before
    and after, after ``warmup`` untimed runs (continued until ``settle_ms`` have passed; default:
    the backend's :attr:`LatencyBackend.settle_ms`); the CPU thread count is pinned for the whole
    measurement and reported.
    """
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}")
    if runs < 1:
        raise ConfigError(f"runs must be >= 1, got {runs}")
    device = torch.device(device)
    if device.type == "meta":
        raise ConfigError(
            "latency cannot be measured on the meta device (nothing runs there); "
            "pass latency=False or a real device"
        )
    impl = get_latency_backend(backend)
    with pinned_threads(threads) as n_threads:
        runner = impl.prepare(model, inputs, device, n_threads)
        warm_up(runner, warmup, impl.settle_ms if settle_ms is None else settle_ms)
        impl.synchronize(device)
        samples: list[float] = []
        for _ in range(runs):
            impl.synchronize(device)
            start = time.perf_counter()
            runner()
            impl.synchronize(device)
            samples.append((time.perf_counter() - start) * 1000.0)
    result = Latency.from_samples(
        samples,
        runs=runs,
        warmup=warmup,
        threads=n_threads,
        backend=impl.name,
        device=str(device),
        batch_size=inputs.batch_size,
    )
    _logger.debug("latency: %s", result)
    return result


@register_latency_backend("eager")
class EagerBackend(LatencyBackend):
    """PyTorch eager execution under :func:`torch.inference_mode`."""

    def prepare(self, model, inputs, device, threads):
        def run() -> Any:
            with torch.inference_mode():
                return inputs.call(model)

        return run


@register_latency_backend("compile")
class CompileBackend(LatencyBackend):
    """:func:`torch.compile` (inductor by default); the first warm-up run pays for compilation.

    Args:
        **compile_kwargs: Passed to :func:`torch.compile` (``mode``, ``backend``, ``dynamic``…).
    """

    def __init__(self, **compile_kwargs: Any) -> None:
        self.compile_kwargs = compile_kwargs

    def prepare(self, model, inputs, device, threads):
        compiled = torch.compile(model, **self.compile_kwargs)
        with torch.inference_mode():  # compile now so a warmup of 0 still times compiled code
            inputs.call(compiled)

        def run() -> Any:
            with torch.inference_mode():
                return inputs.call(compiled)

        return run
