"""Search strategies on the NAS-Bench-201 table: regret at 100 queries, and a latency-aware variant.

Every strategy runs through ``ts.search`` (an in-memory Optuna study) on the ``nas201`` space
with the ``nas201-table`` evaluator: no training, each query reads the accuracies the benchmark
measured (``../shared/data/nasbench201_cifar.csv``, the 12-epoch schedule; see its README).

Tabular part. Per dataset (CIFAR-10, CIFAR-100), strategy and seed: a study of ``--budget``
queries maximising ``val_accuracy``; the trial with the best validation accuracy (the earliest
among ties) is *selected*, and its test accuracy is reported as the regret against the best test
accuracy anywhere in the table (``best test - selected test``, in points). The report also gives
the floor of that regret: the test accuracy of the table's best-validation architecture (a
strategy that found it would still show that regret). Strategies:

- ``random``, ``evolution`` (regularised evolution), ``tpe``, ``nsga2``: ``ts.search``'s samplers
  of those names, with the engine's settings;
- ``default``: ``sampler="auto"``, what a user gets without choosing (TPE for one objective);
- tuning variants, on request (``--strategies``): the engine's samplers with other options, see
  :data:`TUNING` (``tpe-s20``: ``n_startup_trials=20``, ``nsga2-p50``: Optuna's population...).

Hardware-aware part (CIFAR-10 unless ``--hw-datasets``). Objectives ``val_accuracy`` (max) and
``latency_ms`` (min): the latency of each architecture's built network on this CPU (eager, batch
1, ``--threads`` threads) predicted by ``ts.search.LatencyTable``'s latency model: the sum of its
kernels timed alone, corrected by a fit on ``--calibrate`` networks measured whole (a fixed set:
the five single-operation cells, then seeded random ones; on this machine the raw sum came out at
about half the measured latency, rank correlation 0.81 over 15 cells, and the correction lifted
that to 0.95); ``--latency-mode measure`` times every network whole instead. Latencies are cached
per architecture in ``--latency-cache`` (with the fitted correction; kernel timings in
``--kernel-cache``), so the seeds share their measurements. Per strategy and seed: the
hypervolume of the non-dominated trials found within the budget, in (validation accuracy,
latency) space, with the reference point (chance accuracy: 10 % or 1 %; 1.1 x the latency of
the slowest single-operation network, which bounds every cell since latency adds up over the
edges); reported raw (points x ms), normalised by the reference box, against random search's
hypervolume on the same seed, and (``--true-front``, which predicts all 15,625 latencies once)
as a share of the whole table's front.

Results are appended as JSON lines to ``--out``; a rerun skips the runs already there.
``--report`` prints the Markdown tables.

    python benchmarks/nas201.py --threads 1 --out runs/nas201.jsonl   # 20 seeds, both parts
    python benchmarks/nas201.py --report --out runs/nas201.jsonl
    python benchmarks/nas201.py --quick --out /tmp/nas201-smoke.jsonl   # 3 seeds
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import torchslim as ts
from torchslim.search._nas201 import (
    DATASETS,
    NAS201_OPS,
    NasBench201Table,
    NasBench201TableEvaluator,
    format_arch,
)

STRATEGIES = ("random", "evolution", "tpe", "nsga2", "default")
HW_STRATEGIES = ("random", "nsga2", "default")
#: Settings compared when tuning the engine's defaults: name -> (sampler, sampler_options).
TUNING: dict[str, tuple[str, dict[str, Any]]] = {
    "tpe-indep": ("tpe", {"multivariate": False}),
    "tpe-s5": ("tpe", {"n_startup_trials": 5}),
    "tpe-s20": ("tpe", {"n_startup_trials": 20}),
    "tpe-group": ("tpe", {"multivariate": True, "group": True}),
    "evolution-p10": ("evolution", {"population_size": 10, "sample_size": 3}),
    "evolution-dup": ("evolution", {"avoid_duplicates": False}),
    "nsga2-p50": ("nsga2", {"population_size": 50}),
    "nsga2-p20": ("nsga2", {"population_size": 20}),
}
SINGLE_OP = [format_arch([op] * 6) for op in NAS201_OPS]
CHANCE = {"cifar10": 10.0, "cifar100": 1.0}


def sampler_for(strategy: str) -> tuple[str, dict[str, Any]]:
    """``ts.search``'s ``sampler`` and ``sampler_options`` for a strategy name."""
    if strategy in STRATEGIES:
        return ("auto" if strategy == "default" else strategy), {}
    return TUNING[strategy]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated (accuracy: max, latency: min) points, by increasing latency."""
    front: list[tuple[float, float]] = []
    for acc, lat in sorted(set(points), key=lambda p: (p[1], -p[0])):
        if not front or acc > front[-1][0]:
            front.append((acc, lat))
    return front


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``points`` (accuracy up, latency down) and bounded by ``ref``."""
    area, best = 0.0, ref[0]
    for acc, lat in pareto_front([p for p in points if p[0] > ref[0] and p[1] < ref[1]]):
        area += (acc - best) * (ref[1] - lat)
        best = acc
    return area


def run_one(part: str, dataset: str, strategy: str, seed: int, args, evaluator) -> dict[str, Any]:
    hw = part == "hw"
    objectives = ["val_accuracy:max", "latency_ms:min"] if hw else ["val_accuracy:max"]
    sampler, options = sampler_for(strategy)
    start = time.perf_counter()
    result = ts.search(
        "nas201",
        evaluator,
        objectives=objectives,
        budget=args.budget,
        sampler=sampler,
        sampler_options=options,
        seed=seed,
        progress=False,
    )
    seconds = time.perf_counter() - start
    trials = sorted(result.trials, key=lambda r: r.number)
    row: dict[str, Any] = {
        "part": part,
        "dataset": dataset,
        "strategy": strategy,
        "seed": seed,
        "budget": args.budget,
        "trials": len(trials),
        "unique_archs": len({r.config["arch"] for r in trials}),
        "seconds": round(seconds, 3),
        "threads": torch.get_num_threads(),
    }
    table = evaluator.table
    if not hw:
        chosen = max(trials, key=lambda r: (r.metrics["val_accuracy"], -r.number))
        best_arch, best_test = table.best(f"{dataset}-test")
        row.update(
            selected_arch=chosen.config["arch"],
            selected_trial=chosen.number,
            val_accuracy=chosen.metrics["val_accuracy"],
            test_accuracy=chosen.metrics["test_accuracy"],
            best_test=best_test,
            regret=round(best_test - chosen.metrics["test_accuracy"], 6),
        )
        return row
    points = [(r.metrics["val_accuracy"], r.metrics["latency_ms"]) for r in trials]
    ref = reference(evaluator, dataset)
    row.update(
        reference=list(ref),
        hypervolume=hypervolume(points, ref),
        hypervolume_normalised=hypervolume(points, ref) / ((100.0 - ref[0]) * ref[1]),
        front=[list(p) for p in pareto_front(points)],
        latency_mode=evaluator.latency_mode,
        calibrate=evaluator.calibrate,
    )
    return row


def reference(evaluator: NasBench201TableEvaluator, dataset: str) -> tuple[float, float]:
    """The hypervolume's reference point: chance accuracy, and 1.1 x the latency of the slowest
    single-operation network (latency adds up over edges, so that one bounds every cell)."""
    return CHANCE[dataset], 1.1 * max(evaluator.latency_of(arch) for arch in SINGLE_OP)


def true_front(dataset: str, evaluator: NasBench201TableEvaluator) -> dict[str, Any]:
    """The front of the whole table (every architecture's latency: one long first run)."""
    table, start = evaluator.table, time.perf_counter()
    points = []
    for i, arch in enumerate(table.archs):
        points.append((table.query(arch, dataset)["val_accuracy"], evaluator.latency_of(arch)))
        if (i + 1) % 1000 == 0:
            print(f"true front: {i + 1}/{len(table)} latencies", flush=True)
    ref = reference(evaluator, dataset)
    hv = hypervolume(points, ref)
    return {
        "part": "front",
        "dataset": dataset,
        "strategy": "table",
        "seed": -1,
        "budget": len(table),
        "reference": list(ref),
        "hypervolume": hv,
        "hypervolume_normalised": hv / ((100.0 - ref[0]) * ref[1]),
        "front": [list(p) for p in pareto_front(points)],
        "seconds": round(time.perf_counter() - start, 3),
        "threads": torch.get_num_threads(),
    }


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    print(f"threads: {torch.get_num_threads()} (torch.set_num_threads)", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["part"], r["dataset"], r["strategy"], r["seed"], r["budget"]))
    jobs = []
    if "tabular" in args.parts:
        jobs += [("tabular", d, s) for d in args.datasets for s in args.strategies]
    if "hw" in args.parts:
        jobs += [("hw", d, s) for d in args.hw_datasets for s in args.hw_strategies]
        if args.true_front:
            jobs += [("front", d, "table") for d in args.hw_datasets]
    started = time.perf_counter()
    with out.open("a") as f:
        for part, dataset, strategy in jobs:
            evaluator = NasBench201TableEvaluator(
                dataset=dataset,
                path=args.table,
                latency=part != "tabular",
                latency_mode=args.latency_mode,
                calibrate=args.calibrate if args.latency_mode == "predict" else 0,
                threads=args.threads,
                latency_cache=args.latency_cache,
                kernel_cache=args.kernel_cache,
            )
            if part == "front":
                if (part, dataset, strategy, -1, len(evaluator.table)) not in done:
                    row = true_front(dataset, evaluator)
                    f.write(json.dumps(row) + "\n")
                    print(f"true front of {dataset}: HV {row['hypervolume_normalised']:.4f}")
                continue
            for seed in args.seeds:
                if (part, dataset, strategy, seed, args.budget) in done:
                    continue
                row = run_one(part, dataset, strategy, seed, args, evaluator)
                f.write(json.dumps(row) + "\n")
                f.flush()
                value = row.get("regret", row.get("hypervolume_normalised"))
                print(
                    f"{part:7s} {dataset:8s} {strategy:12s} seed {seed:2d}: "
                    f"{'regret' if part == 'tabular' else 'HV'} {value:.4f} "
                    f"({row['unique_archs']} archs, {row['seconds']:.1f} s)",
                    flush=True,
                )
    print(f"total {time.perf_counter() - started:.1f} s", flush=True)


def _stats(values: list[float]) -> tuple[float, float, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, statistics.median(values)


def report(args: argparse.Namespace) -> str:
    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line]
    table = NasBench201Table.load(args.table)
    lines = [f"Table: `{table.path}` ({len(table)} architectures, 12-epoch accuracies)."]
    for dataset in sorted({r["dataset"] for r in rows if r["part"] == "tabular"}):
        group = [r for r in rows if r["part"] == "tabular" and r["dataset"] == dataset]
        best_arch, best_test = table.best(f"{dataset}-test")
        val_arch, _ = table.best(f"{dataset}-val")
        floor = best_test - table.query(val_arch, dataset)["test_accuracy"]
        budget = group[0]["budget"]
        lines += [
            "",
            f"### {dataset}: regret after {budget} queries (selected by `{dataset}-val`)",
            "",
            f"Regret = best `{dataset}-test` in the table ({best_test:.2f}, `{best_arch}`) minus "
            f"the test accuracy of the trial with the best validation accuracy. Floor: the "
            f"best-validation architecture of the whole table has regret {floor:.2f}.",
            "",
            "| strategy | runs | regret mean ± std | median | selected test acc. | "
            "unique archs | s / run |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        by_strategy: dict[str, list[dict]] = {}
        for r in group:
            by_strategy.setdefault(r["strategy"], []).append(r)
        for strategy, runs in sorted(by_strategy.items(), key=lambda kv: _order(kv[0])):
            mean, std, median = _stats([r["regret"] for r in runs])
            lines.append(
                f"| {strategy} | {len(runs)} | {mean:.2f} ± {std:.2f} | {median:.2f} | "
                f"{statistics.fmean(r['test_accuracy'] for r in runs):.2f} | "
                f"{statistics.fmean(r['unique_archs'] for r in runs):.0f} | "
                f"{statistics.fmean(r['seconds'] for r in runs):.2f} |"
            )
        if {"default", "evolution"} <= set(by_strategy):
            lines += ["", _compare(by_strategy["default"], by_strategy["evolution"])]
    hw = [r for r in rows if r["part"] == "hw"]
    for dataset in sorted({r["dataset"] for r in hw}):
        group = [r for r in hw if r["dataset"] == dataset]
        ref = group[0]["reference"]
        fronts = [r for r in rows if r["part"] == "front" and r["dataset"] == dataset]
        random_hv = {r["seed"]: r["hypervolume"] for r in group if r["strategy"] == "random"}
        lines += [
            "",
            f"### {dataset}, hardware-aware: `val_accuracy` max, `latency_ms` min",
            "",
            f"Latency: {_latency_text(group[0])}, eager, batch 1, {group[0]['threads']} "
            f"thread(s). Hypervolume of the "
            f"non-dominated trials in (val accuracy %, latency ms) with reference point "
            f"({ref[0]:g} %, {ref[1]:.3f} ms: chance accuracy, 1.1 x the latency of the slowest "
            f"single-operation network); normalised: divided by the reference box."
            + (
                f" The table's true front ({len(fronts[-1]['front'])} architectures, every "
                f"latency predicted): {fronts[-1]['hypervolume_normalised']:.4f}."
                if fronts
                else " (`--true-front` adds the whole table's front.)"
            ),
            "",
            "| strategy | runs | HV normalised mean ± std | median | of the true front | "
            "HV / random's, same seeds | seeds above random | front size |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        by_strategy = {}
        for r in group:
            by_strategy.setdefault(r["strategy"], []).append(r)
        for strategy, runs in sorted(by_strategy.items(), key=lambda kv: _order(kv[0])):
            mean, std, median = _stats([r["hypervolume_normalised"] for r in runs])
            share = f"{mean / fronts[-1]['hypervolume_normalised']:.3f}" if fronts else "-"
            paired = [r for r in runs if r["seed"] in random_hv]
            if strategy == "random" or not paired:
                ratio = above = "-"
            else:
                hv = statistics.fmean(r["hypervolume"] for r in paired)
                ratio = f"{hv / statistics.fmean(random_hv[r['seed']] for r in paired):.3f}"
                above = f"{sum(r['hypervolume'] > random_hv[r['seed']] for r in paired)}/"
                above += str(len(paired))
            lines.append(
                f"| {strategy} | {len(runs)} | {mean:.4f} ± {std:.4f} | {median:.4f} | {share} | "
                f"{ratio} | {above} | {statistics.fmean(len(r['front']) for r in runs):.1f} |"
            )
    return "\n".join(lines)


def _latency_text(row: dict[str, Any]) -> str:
    if row["latency_mode"] == "measure":
        return "every network timed whole"
    if row["calibrate"]:
        return (
            f"predicted by the latency table, corrected on {row['calibrate']} networks timed whole"
        )
    return "predicted by the latency table (raw kernel sum)"


def _order(strategy: str) -> int:
    known = (*STRATEGIES, *TUNING)
    return known.index(strategy) if strategy in known else len(known)


def _compare(default: list[dict], evolution: list[dict]) -> str:
    a = [r["regret"] for r in default]
    b = [r["regret"] for r in evolution]
    text = (
        f"Goal (default's mean regret below regularised evolution's): "
        f"{statistics.fmean(a):.3f} vs {statistics.fmean(b):.3f}, "
        f"{'met' if statistics.fmean(a) < statistics.fmean(b) else 'not met'}"
    )
    try:
        from scipy.stats import mannwhitneyu
    except ImportError:
        return text + "."
    p = mannwhitneyu(a, b, alternative="less").pvalue
    return text + f" (one-sided Mann-Whitney U p = {p:.3f}, {len(a)} and {len(b)} runs)."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", action="store_true", help="print the tables of --out")
    parser.add_argument("--out", default="runs/nas201.jsonl", help="JSON lines, appended")
    parser.add_argument("--table", default=None, help="the CSV (default: ../shared/data/)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--budget", type=int, default=100, help="queries per study")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(20)))
    parser.add_argument("--parts", nargs="+", choices=("tabular", "hw"), default=["tabular", "hw"])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    parser.add_argument(
        "--strategies", nargs="+", choices=(*STRATEGIES, *TUNING), default=list(STRATEGIES)
    )
    parser.add_argument("--hw-datasets", nargs="+", choices=sorted(DATASETS), default=["cifar10"])
    parser.add_argument(
        "--hw-strategies", nargs="+", choices=(*STRATEGIES, *TUNING), default=list(HW_STRATEGIES)
    )
    parser.add_argument("--latency-mode", choices=("predict", "measure"), default="predict")
    parser.add_argument(
        "--calibrate", type=int, default=12, help="networks timed whole to fit the correction"
    )
    parser.add_argument(
        "--latency-cache", default="runs/nas201-latency.json", help="latency per architecture"
    )
    parser.add_argument(
        "--kernel-cache", default="runs/nas201-kernels.json", help="the latency table's kernels"
    )
    parser.add_argument(
        "--true-front",
        action="store_true",
        help="also the latency of every architecture and the table's true front (long once)",
    )
    parser.add_argument("--quick", action="store_true", help="3 seeds: a smoke test")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.report:
        print(report(args))
        return
    if args.quick:
        args.seeds = args.seeds[:3]
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        sys.exit("the benchmark needs Optuna: pip install 'torchslim[search]'")
    run(args)


if __name__ == "__main__":
    main()
