"""``ts.search.LatencyTable``: a latency model from kernels measured alone, and a fitted correction.

Why per kernel. A search proposes hundreds of candidates made of the same few layer
configurations; timing each configuration once on the target runtime, then summing, predicts a
candidate in milliseconds of CPU instead of seconds of timing, and the table grows only by the
configurations not seen before. The unit is the *kernel*: what the runtime runs as one piece.
Eager (``_latency_kernels``): every leaf module call and every torch call that ``forward`` code
makes outside modules (additions, concatenations, pooling, reshapes), found with hooks and a
torch function mode on one real forward pass. ONNX Runtime (``_latency_ort``): every node of the
graph its optimiser makes of the exported model (fused ``Conv+BN+Add+ReLU``, blocked-layout
convolutions and the layout reorders between them), read from ONNX Runtime itself.

What a sum misses. Timed alone, each kernel also pays the harness's per-call cost (the eager
``inference_mode`` and replay call, an ONNX Runtime session run): the table times a call that
computes nothing (``(empty)``) and subtracts it from every kernel, so the raw prediction is
``empty + sum(kernel - empty)``. What remains differs between a model and the sum of its parts:
per-call framework work between kernels; weights that a kernel timed alone keeps in cache but a
model larger than the cache reads from memory (pruned MobileNetV2s in ONNX Runtime: about 0.1 ms
per million weights); memory-bound kernels (additions, activations, pooling, layout reorders),
which inside a model read what the previous kernel's threads have just written, in other cores'
caches (NAS-Bench-201 cells in ONNX Runtime: about twice their time alone).
:class:`LatencyCorrection` fits a linear model on a few whole models measured for real,

    measured ~= a * kernel_ms + b * kernels + c * params_m + d * memory_ms + e

by least squares on *relative* error (each model's equation divided by its latency), trying the
kernel sum with up to three of the other features and keeping the subset with the lowest
leave-one-out error on the calibration models; the benchmark only ever evaluates a fit on other
models. Calibrate on models that span the candidates' range (the benchmark picks them by their
raw prediction): a fit on large models alone extrapolates badly to small ones.

Measurements. Kernels: :func:`torchslim.measure_latency` (median; a probe sets the number of runs
to fill ``target_ms``) with threads pinned. Whole models (:meth:`LatencyTable.measure_many`):
every model's runner is prepared, then rounds alternate the models (order flipped every round,
untimed runs before each block until the backend's ``settle_ms`` have passed, so that threads
the previous model left spinning are idle; garbage collection off), so slow drift of the machine
hits all of them alike; the median is over every timed run.

Cache. A JSON file (``cache=``; default ``$TORCHSLIM_CACHE_DIR/latency/`` or
``~/.cache/torchslim/latency/``) holds one section per key: device (CPU model name or GPU name),
machine, backend, threads, batch size, torch and onnxruntime versions. Sections for other keys are
kept but never reused (a log line says so). Writes hold a lock file, re-read the file, merge
(entries are only ever added) and replace it atomically, so concurrent search workers share one
table and lose nothing; a worker re-reads the file before measuring what it lacks.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim._inputs import Inputs, as_inputs, eval_mode
from torchslim.errors import ConfigError
from torchslim.profiling._latency import Latency, get_latency_backend, pinned_threads, warm_up
from torchslim.search._latency_kernels import BACKENDS, Kernel, enumerate_kernels
from torchslim.search._latency_model import LatencyCorrection, LatencyPrediction
from torchslim.search._latency_ort import ort_kernels
from torchslim.search._latency_timing import empty_kernel, time_kernels

__all__ = ["LatencyTable"]

_logger = logging.getLogger(__name__)

FORMAT = 3  # 3: ONNX Runtime kernels are the nodes of its optimised graph
EMPTY = "(empty)"


# ---------------------------------------------------------------------------------- the table
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown cpu"


def _entry(lat: Latency | float) -> dict[str, Any]:
    if isinstance(lat, Latency):
        return {"ms": lat.median_ms, "iqr_ms": lat.iqr_ms, "runs": lat.runs}
    return {"ms": float(lat)}


def _default_dir() -> Path:
    root = os.environ.get("TORCHSLIM_CACHE_DIR")
    return Path(root) / "latency" if root else Path.home() / ".cache" / "torchslim" / "latency"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path.lock`` across processes (POSIX; elsewhere none)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class LatencyTable:
    """Per-kernel latencies measured on this machine, and a latency model built on them.

    Args:
        backend: ``"eager"`` or ``"onnxruntime"``: the runtime whose latency is predicted.
        threads: CPU intra-op threads while timing (default: PyTorch's current setting).
        device: Where to time (``"cpu"``; ``"cuda"`` for eager on a GPU).
        cache: JSON file, or a folder for the default file name; ``None``: the default folder;
            ``False``: keep the table in memory only.
        batch_size: Batch size of the inputs (default: taken from the first inputs); part of the
            cache key, so tables for other batch sizes live apart.
        correction: A :class:`LatencyCorrection` to apply (see :meth:`calibrate`).
        calibrate_first: Also measure the first ``k`` predicted models whole and fit the
            correction on them (automatic calibration during a search).
        target_ms, warmup, min_runs, max_runs, passes: Timing of one kernel: the lowest of
            ``passes`` medians, each over enough runs to fill ``target_ms``.
        rounds, runs: Timing of whole models: alternating rounds of ``runs`` timed runs.
        timer: ``timer(kernel) -> Latency or ms`` replaces the built-in kernel timing (tests,
            custom harnesses).
    """

    def __init__(
        self,
        backend: str = "eager",
        *,
        threads: int | None = None,
        device: str | torch.device = "cpu",
        cache: str | os.PathLike | bool | None = None,
        batch_size: int | None = None,
        correction: LatencyCorrection | None = None,
        calibrate_first: int = 0,
        target_ms: float = 20.0,
        warmup: int = 5,
        min_runs: int = 10,
        max_runs: int = 300,
        passes: int = 2,
        rounds: int = 6,
        runs: int = 10,
        timer: Callable[[Kernel], Latency | float] | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown latency table backend {backend!r}; known: {BACKENDS}")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        if calibrate_first < 0:
            raise ConfigError(f"calibrate_first must be >= 0, got {calibrate_first}")
        if rounds < 1 or runs < 1:
            raise ConfigError(f"rounds and runs must be >= 1, got {rounds} and {runs}")
        self.backend = backend
        self.threads = threads or torch.get_num_threads()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.correction = correction
        self.calibrate_first = calibrate_first
        self.timing = dict(
            target_ms=target_ms, warmup=warmup, min_runs=min_runs, max_runs=max_runs, passes=passes
        )
        self.rounds, self.runs = rounds, runs
        self.timer = timer
        self.measured_kernels = 0  # by this object
        self.measure_seconds = 0.0
        self._cache = cache
        self._path: Path | None = None
        self._stamp: tuple | None = None
        self._entries: dict[str, dict[str, Any]] = {}
        self._new: dict[str, dict[str, Any]] = {}
        self._calibration: list[tuple[dict[str, float], float]] = []
        self._lock = threading.Lock()
        self._loaded = False
        self._device_key: tuple | None = None
        self._warned = False
        if batch_size is not None:
            self._load()

    # -- cache ---------------------------------------------------------------------------
    @property
    def key(self) -> dict[str, Any]:
        """The settings a measurement belongs to; a cache section is reused only when equal."""
        if self._device_key is None:
            ort = None
            if self.backend == "onnxruntime":
                with contextlib.suppress(ImportError):
                    import onnxruntime

                    ort = onnxruntime.__version__
            self._device_key = (_device_name(self.device), platform.machine(), ort)
        device, machine, ort = self._device_key
        return {
            "device": device,
            "machine": machine,
            "backend": self.backend,
            "threads": self.threads,
            "batch_size": self.batch_size,
            "torch": torch.__version__,
            "onnxruntime": ort,
        }

    @property
    def path(self) -> Path | None:
        """The cache file (``None`` in memory, or before the batch size is known)."""
        if self._cache is False or self.batch_size is None:
            return None
        if self._path is None:
            key = self.key
            digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
            name = f"{self.backend}-{self.threads}t-b{self.batch_size}-{digest}.json"
            given = None if self._cache in (None, True) else Path(self._cache)
            if given is not None and given.suffix == ".json":
                self._path = given
            else:
                self._path = (given or _default_dir()) / name
        return self._path

    @property
    def entries(self) -> dict[str, float | None]:
        """Kernel key -> median ms alone (``None``: it could not be timed)."""
        self._ensure_loaded()
        return {k: v.get("ms") for k, v in self._entries.items()}

    def _read(self) -> dict[str, Any]:
        path = self.path
        if path is None or not path.is_file():
            return {"format": FORMAT, "tables": {}}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"latency table {path} is not readable JSON ({exc}); delete it"
            ) from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            _logger.warning("latency table %s has another format; it is not reused", path)
            return {"format": FORMAT, "tables": {}}
        return data

    def _section(self, data: dict[str, Any]) -> dict[str, Any]:
        me = json.dumps(self.key, sort_keys=True)
        return data["tables"].setdefault(me, {"key": self.key, "entries": {}})["entries"]

    def _load(self) -> None:
        data = self._read()
        key = self.key
        others = [t["key"] for t in data["tables"].values() if t.get("key") != key]
        for other in [] if self._warned else others:
            diff = ", ".join(
                f"{f} {other.get(f)!r} (this table: {v!r})"
                for f, v in key.items()
                if other.get(f) != v
            )
            _logger.warning(
                "latency table %s: measurements for other settings are not reused: %s",
                self.path,
                diff,
            )
        self._warned = True
        with self._lock:
            self._entries.update(self._section(data))
            self._stamp = self._file_stamp()
            self._loaded = True
        if self._entries:
            _logger.info("latency table %s: %d kernels", self.path, len(self._entries))

    def _file_stamp(self) -> tuple | None:
        path = self.path
        with contextlib.suppress(OSError):
            st = path.stat() if path else None
            return (st.st_mtime_ns, st.st_size) if st else None
        return None

    def _ensure_loaded(self, inputs: Inputs | None = None) -> None:
        if inputs is not None:
            batch = inputs.batch_size
            if self.batch_size is None:
                self.batch_size = batch
            elif batch != self.batch_size:
                raise ConfigError(
                    f"this latency table measures batch size {self.batch_size} but the inputs "
                    f"have batch size {batch}; use LatencyTable(batch_size={batch}) for them"
                )
        if not self._loaded and (self.batch_size is not None or self._cache is False):
            self._load()
        elif self._loaded and self._file_stamp() != self._stamp:
            self._load()  # another process added kernels

    def save(self) -> None:
        """Merge the kernels measured here into the cache file (locked, atomic replace)."""
        path = self.path
        if path is None:
            self._new.clear()
            return
        if not self._new:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, _locked(path):
            data = self._read()
            section = self._section(data)
            for k, v in self._new.items():
                section.setdefault(k, v)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, indent=0, sort_keys=True)
            os.replace(tmp, path)
            self._entries.update(section)
            self._new.clear()
            self._stamp = self._file_stamp()

    # -- kernels -------------------------------------------------------------------------
    def kernels(self, model: nn.Module, example_inputs: Any) -> list[Kernel]:
        """The kernel calls of one forward pass, as this table's backend decomposes them."""
        return self._kernels(model, as_inputs(example_inputs))

    def _kernels(self, model: nn.Module, inputs: Inputs, replay_for: Any = None) -> list[Kernel]:
        with eval_mode(model):
            if self.backend == "onnxruntime":
                return ort_kernels(model, inputs, threads=self.threads, replay_for=replay_for)
            return enumerate_kernels(model, inputs, replay_for=replay_for)

    def _time(self, kernels: list[Kernel]) -> Iterator[tuple[Kernel, dict[str, Any]]]:
        start = time.perf_counter()
        try:
            if self.timer is None:
                timed = time_kernels(
                    kernels, self.backend, threads=self.threads, device=self.device, **self.timing
                )
            else:
                timed = ((k, _entry(self.timer(k))) for k in kernels)
            for kernel, entry in timed:
                if entry.get("ms") is None:
                    if kernel.key == EMPTY:
                        raise ConfigError(f"the empty kernel cannot be timed: {entry['error']}")
                    _logger.warning(
                        "latency table: kernel %s at %s cannot be timed: %s",
                        kernel.key,
                        kernel.name,
                        entry["error"],
                    )
                else:
                    self.measured_kernels += 1
                yield kernel, entry
        finally:
            self.measure_seconds += time.perf_counter() - start

    def predict(
        self, model: nn.Module, example_inputs: Any, *, measure_missing: bool = True
    ) -> LatencyPrediction:
        """Predict the latency of one forward pass of ``model`` on ``example_inputs``.

        Kernels missing from the table are timed now and saved (each key once), unless
        ``measure_missing=False``, which raises instead. With ``calibrate_first``, the first
        models predicted are also measured whole, and the correction is fitted on them.

        Raises:
            ConfigError: a kernel is missing and ``measure_missing`` is false (names it).
        """
        inputs = as_inputs(example_inputs)
        rows, features, measured_now = self._features(model, inputs, measure_missing)
        measured = None
        if len(self._calibration) < self.calibrate_first:
            measured = self.measure(model, inputs).median_ms
            self._calibration.append((features, measured))
            if len(self._calibration) == self.calibrate_first:
                self._fit()
        raw = self._entries[EMPTY]["ms"] + features["kernel_ms"]
        ms = raw if self.correction is None else self.correction(features)
        return LatencyPrediction(
            ms,
            raw,
            features,
            tuple(rows),
            measured_now,
            self.backend,
            self.threads,
            self.correction is not None,
            measured,
        )

    def _features(self, model: nn.Module, inputs: Inputs, measure_missing: bool):
        self._ensure_loaded(inputs)
        kernels = self._kernels(model, inputs, replay_for=lambda k: k not in self._entries)
        missing = [k for k in kernels if k.replay is not None]
        if EMPTY not in self._entries:
            missing.insert(0, empty_kernel(self.backend))
        if missing and not measure_missing:
            first = missing[0]
            raise ConfigError(
                f"kernel {first.key!r} at {first.name!r} is not in the latency table "
                f"({self.path or 'in memory'}; {len(missing)} kernels missing); call "
                "predict(..., measure_missing=True) to time them"
            )
        for kernel, entry in self._time(missing):
            with self._lock:
                self._entries[kernel.key] = self._new[kernel.key] = entry
        self.save()
        empty = self._entries[EMPTY]["ms"]
        rows = []
        for k in kernels:
            ms = self._entries[k.key].get("ms")
            rows.append((k.name, k.key, max(ms - empty, 0.0) if ms is not None else 0.0))
        features = {
            "kernel_ms": sum(r[2] for r in rows),
            "kernels": float(len(kernels)),
            "reorders": float(sum(k.reordered for k in kernels)),
            "memory_ms": sum(r[2] for r, k in zip(rows, kernels, strict=True) if not k.matrix),
            "params_m": sum(k.params for k in kernels) / 1e6,
            "const": 1.0,
            "untimed": float(sum(self._entries[k.key].get("ms") is None for k in kernels)),
        }
        return rows, features, len(missing)

    # -- whole models --------------------------------------------------------------------
    def measure(self, model: nn.Module, example_inputs: Any) -> Latency:
        """Time the whole model the way :meth:`measure_many` does."""
        return self.measure_many([model], example_inputs)[0]

    def measure_many(self, models: Sequence[nn.Module], example_inputs: Any) -> list[Latency]:
        """Time whole models on the same inputs, in alternating rounds (see the module notes)."""
        inputs = as_inputs(example_inputs).to(self.device)
        self._ensure_loaded(inputs)
        impls = [get_latency_backend(self.backend) for _ in models]  # one session each
        samples: list[list[float]] = [[] for _ in models]
        with contextlib.ExitStack() as stack, pinned_threads(self.threads) as threads:
            for m in models:
                stack.enter_context(eval_mode(m))
            runners = [
                impl.prepare(m, inputs, self.device, threads)
                for impl, m in zip(impls, models, strict=True)
            ]
            for run in runners:
                for _ in range(self.timing["warmup"]):
                    run()
            collecting = gc.isenabled()
            gc.disable()
            try:
                for r in range(self.rounds):
                    order = range(len(runners)) if r % 2 == 0 else reversed(range(len(runners)))
                    for i in order:
                        run, impl = runners[i], impls[i]
                        warm_up(run, 2, impl.settle_ms)  # the last model's threads go idle
                        for _ in range(self.runs):
                            impl.synchronize(self.device)
                            start = time.perf_counter()
                            run()
                            impl.synchronize(self.device)
                            samples[i].append((time.perf_counter() - start) * 1000.0)
            finally:
                if collecting:
                    gc.enable()
        return [
            Latency.from_samples(
                s,
                runs=len(s),
                warmup=self.timing["warmup"],
                threads=threads,
                backend=self.backend,
                device=str(self.device),
                batch_size=inputs.batch_size,
            )
            for s in samples
        ]

    # -- correction ----------------------------------------------------------------------
    def calibrate(
        self,
        models: Sequence[nn.Module],
        example_inputs: Any,
        *,
        feature_sets: str | Sequence[Sequence[str]] = "auto",
        measured_ms: Sequence[float] | None = None,
    ) -> LatencyCorrection:
        """Measure ``models`` whole and fit the correction on them (and on the models of earlier
        calls, so models with other inputs calibrate one table); the table applies it from now
        on. Returns it.

        Args:
            measured_ms: The models' latencies, already measured (e.g. by :meth:`measure_many`
                together with other models, so that all of them share the machine's state);
                then nothing is measured here.
        """
        rows = [self._features(m, as_inputs(example_inputs), True)[1] for m in models]
        if measured_ms is None:
            measured_ms = [lat.median_ms for lat in self.measure_many(models, example_inputs)]
        elif len(measured_ms) != len(models):
            raise ConfigError(
                f"calibrate got {len(measured_ms)} measured latencies for {len(models)} models"
            )
        self._calibration += list(zip(rows, map(float, measured_ms), strict=True))
        return self._fit(feature_sets)

    def _fit(self, feature_sets: Any = "auto") -> LatencyCorrection:
        features, measured = zip(*self._calibration, strict=True)
        self.correction = LatencyCorrection.fit(features, measured, feature_sets)
        _logger.info("latency table correction: %s", self.correction)
        return self.correction

    def __repr__(self) -> str:
        return (
            f"LatencyTable(backend={self.backend!r}, threads={self.threads}, "
            f"device={str(self.device)!r}, batch_size={self.batch_size}, "
            f"kernels={len(self._entries)}, cache={str(self.path) if self.path else None!r})"
        )
