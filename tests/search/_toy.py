"""A tiny search space and evaluator for the engine's tests, importable by worker processes
as ``tests.search._toy:ToySpace`` (run from the project root) or ``_toy`` (under pytest)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from torchslim.errors import ConfigError
from torchslim.search import Evaluator, SearchSpace


class ToySpace(SearchSpace):
    """``n`` parameters ``x0..``: floats in [0, 1], or integers ``0..choices-1``.

    Builds an MLP whose hidden width grows with ``x0``.
    """

    def __init__(self, n: int = 4, kind: str = "float", choices: int = 5) -> None:
        self.n, self.kind, self.choices = n, kind, choices

    def suggest(self, trial: Any) -> dict[str, Any]:
        if self.kind == "float":
            xs = [trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(self.n)]
        else:
            xs = [trial.suggest_int(f"x{i}", 0, self.choices - 1) for i in range(self.n)]
        return {"x": xs}

    def build(self, config: Any) -> Any:
        import torch

        width = 4 + int(8 * config["x"][0])
        return torch.nn.Sequential(
            torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, 3)
        )

    def example_inputs(self) -> Any:
        import torch

        return torch.randn(1, 8)

    def options(self) -> dict[str, Any]:
        return {"n": self.n, "kind": self.kind, "choices": self.choices}


class ToyEvaluator(Evaluator):
    """``score = -sum((x - target)^2)`` (best 0) and ``cost = sum(x)``; deterministic.

    Options: ``sleep`` seconds per trial; ``fail_below``: raise when ``x0`` is below it;
    ``config_error``: raise a ConfigError; ``drop``: leave that metric out; ``log``: a file to
    which ``start PID NUMBER`` and ``done PID NUMBER PARAMS`` lines are appended.
    """

    metrics = ("score", "cost")

    def __init__(
        self,
        target: float = 0.7,
        sleep: float = 0.0,
        fail_below: float | None = None,
        config_error: bool = False,
        drop: str | None = None,
        log: str | None = None,
    ) -> None:
        self.target, self.sleep, self.fail_below = target, sleep, fail_below
        self.config_error, self.drop, self.log = config_error, drop, log

    def _write(self, line: str) -> None:
        if self.log:
            fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)

    def __call__(self, space: Any, config: Any, trial: Any = None) -> dict[str, float]:
        number = -1 if trial is None else trial.number
        self._write(f"start {os.getpid()} {number}")
        if self.config_error:
            raise ConfigError("toy evaluator misconfigured")
        xs = [float(x) for x in config["x"]]
        if self.fail_below is not None and xs[0] < self.fail_below:
            raise RuntimeError(f"toy failure at x0={xs[0]:.3f}")
        time.sleep(self.sleep)
        out = {"score": -sum((x - self.target) ** 2 for x in xs), "cost": sum(xs)}
        out.pop(self.drop, None)
        params = json.dumps(None if trial is None else trial.params, sort_keys=True)
        self._write(f"done {os.getpid()} {number} {params}")
        return out

    def options(self) -> dict[str, Any]:
        return {"target": self.target, "sleep": self.sleep, "log": self.log}


def read_log(path: str | Path) -> list[tuple[str, int, int, str]]:
    """``(event, pid, trial number, params JSON)`` per line of a ToyEvaluator log."""
    out = []
    if not Path(path).exists():
        return out
    for line in Path(path).read_text().splitlines():
        parts = line.split(" ", 3)
        if len(parts) >= 3:
            out.append((parts[0], int(parts[1]), int(parts[2]), parts[3] if len(parts) > 3 else ""))
    return out
