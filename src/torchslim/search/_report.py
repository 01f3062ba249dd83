"""A search's results as files: the Pareto front and all trials in JSON and CSV, and a plot.

``SearchResult.write(run_dir)`` writes ``pareto.json``, ``pareto.csv``, ``trials.json``,
``trials.csv`` and ``pareto.png``. CSV columns: ``number``, ``feasible``, ``pareto``, the
metrics (objectives first), then ``config.KEY`` per config entry (JSON for nested values).
The plot uses matplotlib's Agg canvas directly (no pyplot, no global backend change): one
objective is drawn against the trial number with the best so far; two as a scatter of all
trials with the front highlighted; more as one such scatter per pair of objectives.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from itertools import combinations
from pathlib import Path
from typing import Any

from torchslim._extras import require

__all__ = ["write_results", "front_table", "plot_front", "atomic_write"]

RESULTS_VERSION = 1


def atomic_write(path: Path, text: str | bytes) -> None:
    """Write via a temporary file renamed into place (workers may write the same run dir)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _metric_names(result: Any) -> list[str]:
    names = [m for m, _ in result.objectives] + [m for m, _, _ in result.constraints]
    for record in result.trials:
        names.extend(record.metrics)
    return list(dict.fromkeys(names))


def _csv(result: Any, records: list[Any]) -> str:
    pareto = {r.number for r in result.pareto}
    metrics = _metric_names(result)
    keys = list(dict.fromkeys(k for r in records for k in r.config))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["number", "feasible", "pareto", *metrics, *(f"config.{k}" for k in keys)])
    for r in records:
        cells = [r.number, int(r.feasible), int(r.number in pareto)]
        cells += [r.metrics.get(m, "") for m in metrics]
        for k in keys:
            v = r.config.get(k, "")
            cells.append(v if isinstance(v, (str, int, float, bool)) else json.dumps(v))
        writer.writerow(cells)
    return out.getvalue()


def write_results(result: Any, run_dir: str | Path) -> dict[str, Path]:
    """Write the result files into ``run_dir``; returns ``{"pareto.json": path, ...}``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    head = {"version": RESULTS_VERSION, **result.to_dict()}
    trials = {
        "version": RESULTS_VERSION,
        "study_name": head["study_name"],
        "objectives": head["objectives"],
        "trials": [r.to_dict() for r in result.trials],
    }
    texts = {
        "pareto.json": json.dumps(head, indent=1) + "\n",
        "pareto.csv": _csv(result, result.pareto),
        "trials.json": json.dumps(trials, indent=1) + "\n",
        "trials.csv": _csv(result, result.trials),
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = run_dir / name
        atomic_write(paths[name], text)
    paths["pareto.png"] = run_dir / "pareto.png"
    atomic_write(paths["pareto.png"], plot_front(result))
    return paths


def plot_front(result: Any) -> bytes:
    """The plot described in the module docstring, as PNG bytes."""
    require("matplotlib", "plotting a search's Pareto front")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    objectives = list(result.objectives)
    pairs = list(combinations(range(len(objectives)), 2)) or [(None, 0)]
    cols = min(3, len(pairs))
    rows = (len(pairs) + cols - 1) // cols
    fig = Figure(figsize=(5.0 * cols, 4.0 * rows), dpi=100)
    FigureCanvasAgg(fig)
    front = {r.number for r in result.pareto}
    for i, (a, b) in enumerate(pairs):
        ax = fig.add_subplot(rows, cols, i + 1)
        _panel(ax, result, objectives, a, b, front)
    fig.suptitle(f"{result.study.study_name}: {len(result.trials)} completed trials")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _label(objective: tuple[str, str]) -> str:
    metric, direction = objective
    return f"{metric} ({'higher' if direction == 'maximize' else 'lower'} is better)"


def _panel(ax: Any, result: Any, objectives: list, a: int | None, b: int, front: set) -> None:
    ym = objectives[b][0]
    if a is None:  # one objective: value per trial and the best so far
        points = [(r.number, r.metrics[ym], r.feasible) for r in result.trials]
        ok = [(x, y) for x, y, f in points if f]
        bad = [(x, y) for x, y, f in points if not f]
        if ok:
            ax.scatter(*zip(*ok, strict=False), s=14, c="tab:blue", label="feasible")
            better = max if objectives[b][1] == "maximize" else min
            best, run = [], None
            for _, y in ok:
                run = y if run is None else better(run, y)
                best.append(run)
            ax.step([x for x, _ in ok], best, where="post", c="tab:red", label="best so far")
        if bad:
            ax.scatter(*zip(*bad, strict=False), s=14, marker="x", c="0.6", label="infeasible")
        ax.set_xlabel("trial")
        ax.set_ylabel(_label(objectives[b]))
    else:
        xm = objectives[a][0]
        rest = [r for r in result.trials if r.number not in front]
        for feasible, style in ((True, {"c": "0.55"}), (False, {"c": "0.8", "marker": "x"})):
            pts = [(r.metrics[xm], r.metrics[ym]) for r in rest if r.feasible == feasible]
            if pts:
                label = "trials" if feasible else "infeasible"
                ax.scatter(*zip(*pts, strict=False), s=12, label=label, **style)
        pts = sorted((r.metrics[xm], r.metrics[ym]) for r in result.pareto)
        if pts:  # a line only when the front is 2-D: projections of a larger one are not
            style = "-o" if len(objectives) == 2 else "o"
            ax.plot(*zip(*pts, strict=False), style, c="tab:red", ms=5, label="Pareto front")
        ax.set_xlabel(_label(objectives[a]))
        ax.set_ylabel(_label(objectives[b]))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def front_table(result: Any, max_config: int = 60) -> str:
    """The Pareto front as a text table: trial, metrics, config (shortened)."""
    metrics = _metric_names(result)
    header = ["trial", *metrics, "config"]
    rows = []
    for r in result.pareto:
        config = json.dumps(r.config, separators=(",", ":"))
        if len(config) > max_config:
            config = config[: max_config - 3] + "..."
        cells = [str(r.number)] + [_fmt(r.metrics.get(m)) for m in metrics] + [config]
        rows.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=False))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=False)) for row in rows]
    if not rows:
        lines.append("(no feasible completed trial)")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 1e5 else f"{value:.4g}"
