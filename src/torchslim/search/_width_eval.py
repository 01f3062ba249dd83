"""The ``"width"`` evaluator: accuracy, measured latency, MACs and params of a width candidate.

Latency is measured on this machine with a ``ts`` latency backend (``"eager"``, or
``"onnxruntime"``: what ships) at the example inputs' batch size, in rounds that alternate the
candidate with the space's original model (the order flips every round): ``latency_ms`` is the
median of the candidate's runs, ``latency_ratio`` the median over rounds of the per-round ratio
of medians, so slow drift of a shared machine cancels in the ratio. ``latency="table:eager"`` (or
``"table:onnxruntime"``) predicts both with ``ts.search.LatencyTable`` instead.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Mapping
from typing import Any

import torch

from torchslim.errors import ConfigError
from torchslim.search._space import Evaluator, SearchSpace, register_evaluator

__all__ = ["WidthEvaluator"]

_logger = logging.getLogger(__name__)


@register_evaluator("width")
class WidthEvaluator(Evaluator):
    """Scores a :class:`WidthSpace` candidate: ``accuracy`` (top-1, in %), ``latency_ms``,
    ``latency_ratio`` (to the original model, timed alongside: ``base_latency_ms``), ``macs``
    and ``params``.

    Args:
        data: Evaluation data: a dataset name (default: the space's dataset), a map-style
            dataset, or a DataLoader / iterable of ``(inputs, targets)`` batches. Keep a final
            test set apart from what the search selects on.
        data_options: Options of a named dataset (default: the space's ``data_options``).
        split: The split of a named dataset.
        samples: Use a fixed random subset of this many samples (``None``: all).
        batch_size: Evaluation batch size.
        latency: A latency backend name (``"eager"``, ``"onnxruntime"``), ``"table:<backend>"``
            to predict with ``ts.search.LatencyTable``, or ``None``: no latency metrics.
        threads: CPU threads for the latency measurement (``None``: PyTorch's setting).
        rounds, runs, warmup: Alternating rounds; timed runs per model and round; untimed runs
            before each block.
        latency_cache: The ``LatencyTable``'s cache file (with ``latency="table:..."``).
    """

    def __init__(
        self,
        *,
        data: Any = None,
        data_options: Mapping[str, Any] | None = None,
        split: str = "test",
        samples: int | None = None,
        batch_size: int = 250,
        latency: str | None = "eager",
        threads: int | None = 1,
        rounds: int = 3,
        runs: int = 20,
        warmup: int = 3,
        latency_cache: str | None = None,
    ) -> None:
        for name, value, least in (
            ("batch_size", batch_size, 1),
            ("rounds", rounds, 1),
            ("runs", runs, 1),
            ("warmup", warmup, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
        if samples is not None and (not isinstance(samples, int) or samples < 1):
            raise ConfigError(f"samples must be an integer >= 1 or None, got {samples!r}")
        if latency is not None and not isinstance(latency, str):
            raise ConfigError(
                f"latency must be a backend name, 'table:<backend>' or None: {latency!r}"
            )
        self.data, self.data_options, self.split = data, data_options, split
        self.samples, self.batch_size = samples, batch_size
        self.latency, self.threads = latency, threads
        self.rounds, self.runs, self.warmup = rounds, runs, warmup
        self.latency_cache = latency_cache
        self.metrics = ("accuracy", "macs", "params") + (
            ("latency_ms", "latency_ratio", "base_latency_ms") if latency else ()
        )
        self._batches: dict[int, list[Any]] = {}  # id(space) -> evaluation batches
        self._base: dict[int, tuple[Any, Any]] = {}  # id(space) -> (base runner, backend)
        self._table: Any = None
        self._options = {
            k: v
            for k, v in dict(
                data=data,
                data_options=data_options,
                split=split,
                samples=samples,
                batch_size=batch_size,
                latency=latency,
                threads=threads,
                rounds=rounds,
                runs=runs,
                warmup=warmup,
                latency_cache=latency_cache,
            ).items()
            if not isinstance(v, (torch.utils.data.Dataset, torch.utils.data.DataLoader))
        }

    def options(self) -> dict[str, Any]:
        return dict(self._options)

    def __call__(
        self, space: SearchSpace, config: Mapping[str, Any], trial: Any = None
    ) -> dict[str, float]:
        from torchslim.profiling import profile

        if not hasattr(space, "materialize"):
            raise ConfigError(
                f"the width evaluator scores candidates of the width space, not of "
                f"{type(space).__name__}"
            )
        start = time.perf_counter()
        net, candidate = space.materialize(config)
        built = time.perf_counter() - start
        inputs = space._inputs
        counted = profile(net, inputs, latency=False, memory=False)
        metrics = {
            "accuracy": 100.0 * self.accuracy(net, space),
            "macs": float(counted.macs),
            "params": float(counted.params),
        }
        if self.latency:
            metrics.update(self._latency(space, net))
        if trial is not None:
            trial.set_user_attr("width_seconds_build", built)
            trial.set_user_attr("width_seconds", time.perf_counter() - start)
        _logger.info(
            "candidate: accuracy %.2f%%, %s",
            metrics["accuracy"],
            ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "accuracy"),
        )
        return metrics

    # -- accuracy ---------------------------------------------------------------------------------

    def batches(self, space: Any) -> list[Any]:
        """The evaluation batches for ``space`` (loaded once)."""
        key = id(space)
        if key not in self._batches:
            self._batches[key] = list(self._make_batches(space))
        return self._batches[key]

    def _make_batches(self, space: Any) -> Any:
        data = self.data
        if data is None or isinstance(data, str):
            from torchslim.data import load_dataset

            name = data or getattr(space, "data_name", None)
            if name is None:
                raise ConfigError(
                    "the width evaluator needs data= (a dataset name, a dataset or a DataLoader): "
                    "the space's data is not a named dataset"
                )
            options = self.data_options
            if options is None:
                options = space.data_options if name == space.data_name else {}
            data = load_dataset(name, self.split, **options)
        if isinstance(data, torch.utils.data.Dataset) and not isinstance(
            data, torch.utils.data.IterableDataset
        ):
            if self.samples is not None and self.samples < len(data):  # type: ignore[arg-type]
                generator = torch.Generator().manual_seed(0)
                keep = torch.randperm(len(data), generator=generator)[: self.samples]  # type: ignore[arg-type]
                data = torch.utils.data.Subset(data, keep.tolist())
            return torch.utils.data.DataLoader(data, self.batch_size)
        return data

    @torch.inference_mode()
    def accuracy(self, net: torch.nn.Module, space: Any) -> float:
        """Top-1 accuracy (0..1) of ``net`` on the evaluation batches."""
        from torchslim.train._finetune import _logits

        net.eval()
        correct = seen = 0
        for inputs, targets in self.batches(space):
            logits = _logits(net(inputs))
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(targets)
        if not seen:
            raise ConfigError("the width evaluator's data yielded no sample")
        return correct / seen

    # -- latency ----------------------------------------------------------------------------------

    def _latency(self, space: Any, net: torch.nn.Module) -> dict[str, float]:
        if self.latency.startswith("table:"):
            return self._predicted(space, net, self.latency.split(":", 1)[1])
        from torchslim.profiling import get_latency_backend, pinned_threads

        inputs = space._inputs
        device = torch.device("cpu")
        with pinned_threads(self.threads) as threads:
            key = id(space)
            if key not in self._base:
                backend = get_latency_backend(self.latency)
                self._base[key] = (backend.prepare(space.model, inputs, device, threads), backend)
            base, backend = self._base[key]
            mine = get_latency_backend(self.latency).prepare(net, inputs, device, threads)
            return alternate(base, mine, self.rounds, self.runs, self.warmup, backend, device)

    def _predicted(self, space: Any, net: torch.nn.Module, backend: str) -> dict[str, float]:
        if self._table is None:
            try:
                from torchslim.search._latency_table import LatencyTable
            except ImportError as exc:
                raise ConfigError(
                    f"latency={self.latency!r} needs ts.search.LatencyTable, which this torchslim "
                    "does not have; measure instead with latency='eager' or 'onnxruntime'"
                ) from exc
            self._table = LatencyTable(
                backend=backend, threads=self.threads, cache=self.latency_cache
            )
        base = self._table.predict(space.model, space._inputs).ms
        ms = self._table.predict(net, space._inputs).ms
        return {"latency_ms": float(ms), "latency_ratio": float(ms / base), "base_latency_ms": base}


def alternate(
    base: Any, other: Any, rounds: int, runs: int, warmup: int, backend: Any, device: Any
) -> dict[str, float]:
    """Time two prepared runners in alternating rounds (the order flips every round).

    Returns ``latency_ms`` (median of ``other``'s runs), ``latency_ratio`` (median over rounds of
    the ratio of the rounds' medians) and ``base_latency_ms``."""
    samples: list[list[float]] = [[], []]
    ratios = []
    for r in range(rounds):
        medians = [0.0, 0.0]
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            runner = (base, other)[i]
            for _ in range(warmup):
                runner()
            times = []
            for _ in range(runs):
                backend.synchronize(device)
                t = time.perf_counter()
                runner()
                backend.synchronize(device)
                times.append(1e3 * (time.perf_counter() - t))
            samples[i] += times
            medians[i] = statistics.median(times)
        ratios.append(medians[1] / medians[0] if medians[0] > 0 else math.nan)
    return {
        "latency_ms": statistics.median(samples[1]),
        "latency_ratio": statistics.median(ratios),
        "base_latency_ms": statistics.median(samples[0]),
    }
