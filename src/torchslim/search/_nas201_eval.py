"""The ``nas201-table`` evaluator: NAS-Bench-201's accuracies, and measurements of the networks.

Accuracies come from :class:`~torchslim.search._nas201.NasBench201Table` (no training). On
request the evaluator also measures the candidate's real network here: ``params`` and ``macs``
(:func:`nas201_cost`, with :func:`torchslim.profile`) and ``latency_ms`` through
:class:`~torchslim.search.LatencyTable`, either predicted from kernels timed alone or timed whole.

A prediction is the table's kernel sum, optionally corrected by a fit on a few networks measured
whole (``calibrate=n``). The calibration set is fixed (the five single-operation cells, then
cells drawn with a fixed seed), so a prediction never depends on which architectures a search
happened to propose first. Latencies are cached per architecture; with ``latency_cache`` they
go to a JSON file (one section per latency setting, written atomically and merged), together
with the fitted correction, so every study of a benchmark, and every worker, shares both.
"""

from __future__ import annotations

import json
import logging
import os
import random
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.search._latency_table import _locked  # the table's cache lock, shared
from torchslim.search._nas201 import (
    DATASETS,
    NAS201_OPS,
    NasBench201Network,
    NasBench201Table,
    _check_dataset,
    _config_ops,
    format_arch,
)
from torchslim.search._space import Evaluator, SearchSpace, register_evaluator

__all__ = ["NasBench201TableEvaluator", "nas201_cost", "calibration_archs"]

_logger = logging.getLogger(__name__)

_COSTS: dict[tuple[tuple[str, ...], int], dict[str, float]] = {}


def nas201_cost(arch: str | Sequence[str], num_classes: int = 10) -> dict[str, float]:
    """``{"params", "macs"}`` of the built network on a 1x3x32x32 input (cached per arch)."""
    ops = _config_ops(arch)
    key = (ops, num_classes)
    if key not in _COSTS:
        from torchslim.profiling import profile

        net = NasBench201Network(ops, num_classes=num_classes)
        prof = profile(net, torch.zeros(1, 3, 32, 32), latency=False, memory=False)
        _COSTS[key] = {"params": float(prof.params), "macs": float(prof.macs)}
    return dict(_COSTS[key])


def calibration_archs(n: int) -> list[str]:
    """The ``n`` architectures a latency correction is fitted on: the five single-operation
    cells (the extremes of every operation's cost), then cells drawn with seed 0."""
    archs = [format_arch([op] * 6) for op in NAS201_OPS]
    rng = random.Random(0)
    while len(archs) < n:
        arch = format_arch(rng.choices(NAS201_OPS, k=6))
        if arch not in archs:
            archs.append(arch)
    return archs[:n]


@register_evaluator("nas201-table")
class NasBench201TableEvaluator(Evaluator):
    """Scores a ``nas201`` config from the NAS-Bench-201 table, without training.

    Returns ``val_accuracy`` and ``test_accuracy`` (top-1 %, the table's ``<dataset>-val`` and
    ``<dataset>-test``); search on ``val_accuracy`` and report ``test_accuracy``. Options add
    measurements of the built network (with the dataset's number of classes, batch 1): with
    ``cost=True`` its ``params`` and ``macs``; with ``latency=True`` its ``latency_ms`` on this
    machine through :class:`~torchslim.search.LatencyTable`, predicted (``latency_mode=
    "predict"``: the kernel sum, corrected when ``calibrate`` > 0) or timed whole (``"measure"``).

    Args:
        dataset: ``"cifar10"`` or ``"cifar100"``.
        path: The table (see :class:`~torchslim.search._nas201.NasBench201Table`).
        cost: Add ``params`` and ``macs``.
        latency: Add ``latency_ms``.
        latency_mode: ``"predict"`` or ``"measure"``.
        calibrate: Networks measured whole to fit the latency table's correction before the
            first prediction (:func:`calibration_archs`; 0: no correction).
        backend: ``"eager"`` or ``"onnxruntime"``.
        threads: CPU threads while timing (default: the current setting).
        latency_cache: JSON file of latencies per architecture (and the fitted correction).
        kernel_cache: The latency table's file of kernel timings (``LatencyTable(cache=...)``;
            default: its own default folder).
        rounds, runs: Whole-network timing: alternating rounds of ``runs`` timed runs.
    """

    def __init__(
        self,
        dataset: str = "cifar10",
        path: str | None = None,
        cost: bool = False,
        latency: bool = False,
        latency_mode: str = "predict",
        calibrate: int = 0,
        backend: str = "eager",
        threads: int | None = None,
        latency_cache: str | None = None,
        kernel_cache: str | None = None,
        rounds: int = 6,
        runs: int = 10,
    ) -> None:
        _check_dataset(dataset)
        if latency_mode not in ("predict", "measure"):
            raise ConfigError(f"latency_mode must be 'predict' or 'measure', got {latency_mode!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads must be a positive int or None, got {threads!r}")
        if not isinstance(calibrate, int) or calibrate < 0 or calibrate == 1:
            raise ConfigError(f"calibrate must be 0 or a count >= 2 of networks, got {calibrate!r}")
        self.dataset, self.path, self.cost, self.latency = dataset, path, cost, latency
        self.latency_mode, self.calibrate = latency_mode, calibrate
        self.backend, self.threads = backend, threads
        self.latency_cache, self.kernel_cache = latency_cache, kernel_cache
        self.rounds, self.runs = rounds, runs
        self.table = NasBench201Table.load(path)
        self.metrics = (
            ("val_accuracy", "test_accuracy")
            + (("params", "macs") if cost else ())
            + (("latency_ms",) if latency else ())
        )
        self._latencies: dict[str, float] | None = None
        self._timer: Any = None
        self._calibrated = False

    def __call__(
        self, space: SearchSpace, config: Mapping[str, Any], trial: Any = None
    ) -> dict[str, float]:
        ops = _config_ops(config)
        out = self.table.query(ops, self.dataset)
        if self.cost:
            out.update(nas201_cost(ops, DATASETS[self.dataset]))
        if self.latency:
            out["latency_ms"] = self.latency_of(ops)
        return out

    def options(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "path": self.path,
            "cost": self.cost,
            "latency": self.latency,
            "latency_mode": self.latency_mode,
            "calibrate": self.calibrate,
            "backend": self.backend,
            "threads": self.threads,
            "latency_cache": self.latency_cache,
            "kernel_cache": self.kernel_cache,
            "rounds": self.rounds,
            "runs": self.runs,
        }

    # latency ------------------------------------------------------------------------------
    def latency_table(self) -> Any:
        """The :class:`~torchslim.search.LatencyTable` that times the networks (made once)."""
        if self._timer is None:
            from torchslim.search import LatencyTable

            self._timer = LatencyTable(
                self.backend,
                threads=self.threads,
                cache=self.kernel_cache,
                batch_size=1,
                rounds=self.rounds,
                runs=self.runs,
            )
        return self._timer

    def cache_key(self) -> str:
        """The latency cache's section for this evaluator's settings."""
        mode = self.latency_mode
        if mode == "predict" and self.calibrate:
            mode += f" calibrate={self.calibrate}"
        return f"{mode} " + json.dumps(self.latency_table().key, sort_keys=True)

    def latency_of(self, arch: str | Sequence[str]) -> float:
        """``latency_ms`` of one architecture's network (cached)."""
        arch = format_arch(_config_ops(arch))
        if self._latencies is None:
            self._latencies = _read_cache(self.latency_cache).get(self.cache_key(), {})
        if arch not in self._latencies and self.latency_cache:  # another process may have it
            self._latencies.update(_read_cache(self.latency_cache).get(self.cache_key(), {}))
        if arch not in self._latencies:
            net = NasBench201Network(arch, num_classes=DATASETS[self.dataset]).eval()
            self._latencies[arch] = self._time(net)
            if self.latency_cache:
                _merge_cache(self.latency_cache, self.cache_key(), {arch: self._latencies[arch]})
        return self._latencies[arch]

    def _time(self, net: nn.Module) -> float:
        x = _example()
        if self.latency_mode == "predict":
            self._ensure_correction()
            return float(self.latency_table().predict(net, x))
        return float(self.latency_table().measure(net, x).median_ms)

    def _ensure_correction(self) -> None:
        """Fit the correction once (or adopt the one stored in the latency cache)."""
        if self._calibrated or not self.calibrate:
            return
        from torchslim.search import LatencyCorrection

        table, key = self.latency_table(), self.cache_key() + " correction"
        stored = _read_cache(self.latency_cache).get(key)
        if not stored:
            classes = DATASETS[self.dataset]
            nets = [
                NasBench201Network(a, num_classes=classes).eval()
                for a in calibration_archs(self.calibrate)
            ]
            fitted = table.calibrate(nets, _example())
            _logger.info("nas201 latency correction: %s", fitted)
            if self.latency_cache:
                _merge_cache(self.latency_cache, key, fitted.to_dict())
                stored = _read_cache(self.latency_cache)[key]  # a concurrent fit may have won
            else:
                stored = fitted.to_dict()
        table.correction = LatencyCorrection.from_dict(stored)
        self._calibrated = True


def _example() -> torch.Tensor:
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _read_cache(path: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    if not path or not Path(path).is_file():
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"latency cache {path} is not readable JSON ({exc}); delete it") from exc
    return data if isinstance(data, dict) else {}


def _merge_cache(path: str | os.PathLike, key: str, values: Mapping[str, Any]) -> None:
    """Add ``values`` under ``key`` to the JSON file (locked, atomic); entries already there win."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):  # writers take turns
        data = _read_cache(path)
        data[key] = {**values, **data.get(key, {})}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
        os.replace(tmp, path)
