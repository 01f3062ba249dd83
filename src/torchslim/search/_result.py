"""Search results as data: :class:`TrialRecord` per completed trial, :class:`SearchResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchslim.errors import ConfigError

__all__ = ["TrialRecord", "SearchResult"]


@dataclass(frozen=True)
class TrialRecord:
    """One completed trial: its number, candidate config, metrics and Optuna params."""

    number: int
    config: dict[str, Any]
    metrics: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)
    feasible: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "config": self.config,
            "metrics": self.metrics,
            "params": self.params,
            "feasible": self.feasible,
        }


@dataclass(frozen=True)
class SearchResult:
    """What a search found.

    Attributes:
        study: The ``optuna.Study`` (every trial, failed ones included).
        objectives: ``(metric, "maximize" | "minimize")`` pairs.
        constraints: ``(metric, "max" | "min", bound)`` triples.
        trials: Every completed trial, by number.
        pareto: The feasible non-dominated trials (for one objective: the best one).
        budget: The budget the search ran to.
    """

    study: Any
    objectives: tuple[tuple[str, str], ...]
    constraints: tuple[tuple[str, str, float], ...]
    trials: list[TrialRecord]
    pareto: list[TrialRecord]
    budget: int | None = None

    def best(self, metric: str | None = None, direction: str | None = None) -> TrialRecord:
        """The feasible trial with the best ``metric`` (default: the first objective)."""
        metric = metric or self.objectives[0][0]
        directions = dict(self.objectives)
        direction = direction or directions.get(metric)
        if direction not in ("maximize", "minimize", "max", "min"):
            raise ConfigError(
                f"{metric!r} is not an objective ({', '.join(directions)}); "
                "say which way is better: best(metric, direction='max' or 'min')"
            )
        sign = 1.0 if direction.startswith("max") else -1.0
        candidates = [r for r in self.trials if r.feasible and metric in r.metrics]
        if not candidates:
            raise ConfigError(f"no completed feasible trial has the metric {metric!r}")
        return max(candidates, key=lambda r: (sign * r.metrics[metric], -r.number))

    def write(self, run_dir: str | Path) -> dict[str, Path]:
        """Write ``pareto.json``, ``pareto.csv``, ``trials.json``, ``trials.csv`` and
        ``pareto.png`` into ``run_dir``; returns the paths by kind."""
        from torchslim.search._report import write_results

        return write_results(self, run_dir)

    def table(self) -> str:
        """The Pareto front as a text table."""
        from torchslim.search._report import front_table

        return front_table(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_name": self.study.study_name,
            "objectives": [f"{m}:{d}" for m, d in self.objectives],
            "constraints": [{"metric": m, kind: b} for m, kind, b in self.constraints],
            "budget": self.budget,
            "n_complete": len(self.trials),
            "pareto": [r.to_dict() for r in self.pareto],
        }
