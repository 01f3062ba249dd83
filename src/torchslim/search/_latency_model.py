"""The latency model's results: the correction fitted on whole models, and a prediction.

:class:`LatencyCorrection` maps a candidate's features (its kernel sum, number of kernel calls,
weights read, time in memory-bound kernels) to its measured latency with a linear model fitted
by least squares on relative error, the feature subset chosen by leave-one-out error on the
calibration models.
:class:`LatencyPrediction` is what :meth:`LatencyTable.predict` returns: the prediction, its
inputs and the time of every kernel call. Both are data and round-trip through JSON.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchslim.errors import ConfigError

__all__ = ["EXTRA_FEATURES", "FEATURE_SETS", "LatencyCorrection", "LatencyPrediction"]

#: A correction must draw at least this share of its predictions (on average over the calibration
#: models) from the kernel sum; otherwise it could fit models of similar latency with a
#: constant, predict them well on average, and rank them no better than chance.
MIN_KERNEL_SHARE = 0.5
#: Features besides the kernel sum that a correction may use (see :class:`LatencyCorrection`).
EXTRA_FEATURES = ("kernels", "params_m", "memory_ms", "const")
#: The feature subsets a correction may use: the kernel sum and up to three others;
#: ``"auto"`` keeps the one with the lowest leave-one-out error.
FEATURE_SETS: tuple[tuple[str, ...], ...] = tuple(
    ("kernel_ms", *extra)
    for size in range(4)
    for extra in itertools.combinations(EXTRA_FEATURES, size)
)


# ---------------------------------------------------------------------------------- correction
def _solve(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares on relative error, columns scaled for conditioning."""
    scale = np.abs(x).mean(axis=0)
    scale[scale == 0] = 1.0
    a = (x / scale) / y[:, None]
    coef, *_ = np.linalg.lstsq(a, np.ones_like(y), rcond=None)
    return coef / scale


@dataclass(frozen=True)
class LatencyCorrection:
    """``measured ~= sum(coefficient * feature)``, fitted on whole models measured for real.

    Features of a candidate: ``kernel_ms`` (sum of its kernels' times, less the empty call's),
    ``kernels`` (number of kernel calls: per-call costs inside a model), ``params_m`` (millions
    of weight elements its kernels read: weights come from memory inside a model, from the cache
    when a kernel is timed alone), ``memory_ms`` (the part of ``kernel_ms`` spent in kernels
    without a weight matrix or filter: additions, activations, pooling, normalisation, layout
    reorders, which inside a model read data other threads have just written), ``const`` (1).
    Predictions also report ``reorders`` (ONNX Runtime's layout reorder nodes), which no
    correction uses.

    Attributes:
        features, coefficients: The fitted linear model.
        models: Calibration models it was fitted on.
        mape: Mean absolute relative error on them (in-sample), a fraction.
        loo_mape: Leave-one-out error on them (``None`` with one model): the honest estimate.
    """

    features: tuple[str, ...]
    coefficients: tuple[float, ...]
    models: int
    mape: float
    loo_mape: float | None

    def __call__(self, features: Mapping[str, float]) -> float:
        return float(
            sum(c * features[f] for f, c in zip(self.features, self.coefficients, strict=True))
        )

    @classmethod
    def fit(
        cls,
        features: Sequence[Mapping[str, float]],
        measured_ms: Sequence[float],
        feature_sets: str | Sequence[Sequence[str]] = "auto",
    ) -> LatencyCorrection:
        """Fit on rows of features and the measured latencies (ms) of the same models.

        Args:
            feature_sets: ``"auto"`` tries :data:`FEATURE_SETS` (those with at most
                ``(models - 1) // 2`` features, so every coefficient rests on two models) and
                keeps the lowest leave-one-out error (ties: fewer features); or the subsets to
                try (the same limit applies).
        """
        y = np.asarray(measured_ms, dtype=float)
        if len(features) != len(y) or not len(y):
            raise ConfigError(f"{len(features)} feature rows for {len(y)} measured latencies")
        if (y <= 0).any():
            raise ConfigError(f"measured latencies must be positive, got {y.tolist()}")
        sets = FEATURE_SETS if feature_sets == "auto" else tuple(map(tuple, feature_sets))
        n = len(y)
        known = set.intersection(*(set(row) for row in features)) | {"const"}
        most = max(1, (n - 1) // 2)  # at least two models per coefficient, and one left out
        usable = [s for s in sets if len(s) <= most and set(s) <= known] or [("kernel_ms",)]
        best = None
        for names in usable:
            x = np.array([[row[f] if f != "const" else 1.0 for f in names] for row in features])
            coef = _solve(x, y)
            pred = x @ coef
            if (pred <= 0).any() or np.mean(coef[0] * x[:, 0] / pred) < MIN_KERNEL_SHARE:
                continue  # not a latency model, or one that hardly looks at the kernels
            loo = None
            if n > len(names):
                errors = []
                for i in range(n):
                    keep = np.arange(n) != i
                    errors.append(abs(x[i] @ _solve(x[keep], y[keep]) / y[i] - 1))
                loo = float(np.mean(errors))
            mape = float(np.mean(np.abs(pred / y - 1)))
            score = (loo if loo is not None else mape, len(names))
            if best is None or score[0] < best[0][0] - 1e-9:
                best = (score, cls(names, tuple(map(float, coef)), n, mape, loo))
        if best is None:
            raise ConfigError(
                "no correction fits these calibration models with the kernel sum carrying at "
                f"least {MIN_KERNEL_SHARE:.0%} of the prediction; calibrate on more, or more "
                "varied, models"
            )
        return best[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "coefficients": list(self.coefficients),
            "models": self.models,
            "mape": self.mape,
            "loo_mape": self.loo_mape,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyCorrection:
        return cls(
            tuple(data["features"]),
            tuple(data["coefficients"]),
            int(data["models"]),
            float(data["mape"]),
            data.get("loo_mape"),
        )

    def __str__(self) -> str:
        terms = " + ".join(
            f"{c:.4g}" if f == "const" else f"{c:.4g} x {f}"
            for f, c in zip(self.features, self.coefficients, strict=True)
        )
        loo = "n/a" if self.loo_mape is None else f"{self.loo_mape:.1%}"
        return (
            f"measured_ms ~= {terms} (fitted on {self.models} models: error {self.mape:.1%} "
            f"in-sample, {loo} leave-one-out)"
        )


# ---------------------------------------------------------------------------------- prediction
@dataclass(frozen=True)
class LatencyPrediction:
    """What :meth:`LatencyTable.predict` predicts for one model; ``float(p)`` is ``p.ms``.

    Attributes:
        ms: Predicted latency (corrected when the table has a correction, else ``raw_ms``).
        raw_ms: ``empty + sum(kernel - empty)`` over the kernel calls.
        features: The correction's inputs (see :class:`LatencyCorrection`).
        kernels: ``(name, key, ms)`` of every kernel call, ms less the empty call's.
        measured_now: Kernels this call timed (missing from the table before).
        backend, threads: Where the table measures.
        corrected: Whether a correction was applied.
        measured_ms: The whole model's measured median, when it was measured for calibration.
    """

    ms: float
    raw_ms: float
    features: dict[str, float]
    kernels: tuple[tuple[str, str, float], ...]
    measured_now: int
    backend: str
    threads: int
    corrected: bool
    measured_ms: float | None = None

    def __float__(self) -> float:
        return self.ms

    def table(self, top: int | None = 15) -> str:
        """Kernel keys by total time: calls, ms each, total, share of the kernel sum."""
        totals: dict[str, list] = {}
        for _, key, ms in self.kernels:
            row = totals.setdefault(key, [0, ms])
            row[0] += 1
        rows = sorted(totals.items(), key=lambda kv: -kv[1][0] * kv[1][1])
        total = sum(n * ms for n, ms in totals.values()) or 1.0
        lines = [f"{'calls':>5}  {'ms each':>8}  {'share':>6}  kernel"]
        for key, (n, ms) in rows[:top] if top else rows:
            lines.append(f"{n:>5}  {ms:8.4f}  {n * ms / total:6.1%}  {key}")
        if top and len(rows) > top:
            lines.append(f"... {len(rows) - top} more kernel configurations")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ms": self.ms,
            "raw_ms": self.raw_ms,
            "features": dict(self.features),
            "measured_now": self.measured_now,
            "backend": self.backend,
            "threads": self.threads,
            "corrected": self.corrected,
            "measured_ms": self.measured_ms,
            "kernels": [list(k) for k in self.kernels],
        }

    def __str__(self) -> str:
        how = "corrected" if self.corrected else "uncorrected"
        head = (
            f"predicted {self.ms:.3f} ms ({how}; kernel sum {self.raw_ms:.3f} ms over "
            f"{len(self.kernels)} kernel calls; {self.backend}, {self.threads} threads; "
            f"{self.measured_now} kernels measured now)"
        )
        return f"{head}\n{self.table()}"
