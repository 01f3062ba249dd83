"""Latency model accuracy: ``ts.search.LatencyTable`` predictions against measured latencies.

For each runtime (``eager``, ``onnxruntime``) and architecture, random candidates are drawn and
built for real, and their kernels are timed once each into a fresh table (the time this takes is
reported). Then every candidate is measured whole, all of an architecture in one alternating
measurement (so that slow drift of the machine's speed, several percent over minutes on a
shared VM, hits them alike). ``--calibration`` of them, spread evenly over the range of their
raw predictions (the table's kernel sums: known without measuring anything whole), fit the
correction (``LatencyTable.calibrate(..., measured_ms=...)``), and every candidate is predicted.
The accuracy is over the other candidates only (the correction never saw them): the share within
±10% and ±5% of the measured latency, mean and median absolute percentage error, per
architecture and overall. For comparison the report also gives the uncorrected kernel sum, and a
correction fitted once on the calibration models of every architecture pooled.

Architectures (batch 1, float32, CPU):

- ``nas201``: NAS-Bench-201 cell networks (``ts.search`` space ``nas201``, drawn by Optuna's
  random sampler) at 32x32;
- ``mobilenet_v2``: torchvision's MobileNetV2 (random weights, 10 classes) at 32x32, every
  channel group pruned by ``ts.prune_(group_ratios=...)`` to its own random keep ratio in
  [0.35, 1] (widths multiples of 8): width multipliers 0.35-1.0 layer by layer;
- ``resnet``: ``DemoResNet`` (the demo model) at 28x28 grey digits, random stage widths
  (multiples of 8, 8-64) and depths (1-3 basic blocks per stage);
- ``mlp`` (not in the default set): 2-4 linear layers with ReLU, random widths, 784 inputs.

Measurement of whole models: ``LatencyTable.measure_many`` on groups of ``--group`` candidates
(default: all of an architecture): every model prepared, then ``--rounds`` rounds alternate
them (order flipped every round), each block untimed runs until the backend's ``settle_ms`` have
passed then ``--runs`` timed runs, garbage collection off; the median is over
all timed runs. The noise floor is reported from the same samples: each candidate's IQR over its
median, and the agreement of the medians of its even and odd rounds (two independent
measurements of the same model: a model cannot be predicted more closely than it reproduces).

Rows are JSON lines in ``--out`` (one per candidate and one summary per runtime and
architecture, tagged with a run id); ``--report`` prints the Markdown tables of the latest run.

    python benchmarks/latency_model.py --threads 2 --out runs/latency_model.jsonl
    python benchmarks/latency_model.py --report --out runs/latency_model.jsonl
    python benchmarks/latency_model.py --quick --out /tmp/latency-smoke.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

ARCHS = ("nas201", "mobilenet_v2", "resnet", "mlp")
DEFAULT_ARCHS = ("nas201", "mobilenet_v2", "resnet")
RUNTIMES = ("eager", "onnxruntime")
FULL = {"candidates": 36, "calibration": 10, "rounds": 10, "runs": 10, "kernel_ms": 20.0}
QUICK = {"candidates": 3, "calibration": 4, "rounds": 4, "runs": 5, "kernel_ms": 5.0}


# -- candidates ---------------------------------------------------------------------------------


def nas201(n: int, seed: int) -> tuple[list[tuple[dict, nn.Module]], torch.Tensor]:
    import optuna

    import torchslim as ts

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = ts.search.get_search_space("nas201")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        config = space.suggest(study.ask())
        out.append(({"arch": config["arch"]}, space.build(config)))
    return out, space.example_inputs()


def mobilenet_v2(n: int, seed: int) -> tuple[list[tuple[dict, nn.Module]], torch.Tensor]:
    import random

    import torchvision

    import torchslim as ts

    rng = random.Random(seed)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    out = []
    for _ in range(n):
        torch.manual_seed(rng.randrange(2**31))
        net = torchvision.models.mobilenet_v2(num_classes=10).eval()
        keep: dict[str, float] = {}

        def ratio(group: Any, keep: dict = keep) -> float:
            keep[group.modules[0]] = round(rng.uniform(0.35, 1.0), 3)
            return 1 - keep[group.modules[0]]

        ts.prune_(net, x, group_ratios=ratio, importance="l1", round_to=8)
        convs = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]
        out.append(({"keep": keep, "widths": convs}, net))
    return out, x


def resnet(n: int, seed: int) -> tuple[list[tuple[dict, nn.Module]], torch.Tensor]:
    import random

    from torchslim.models import DemoResNet

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        widths = tuple(8 * rng.randint(1, 8) for _ in range(3))
        depths = tuple(rng.randint(1, 3) for _ in range(3))
        torch.manual_seed(rng.randrange(2**31))
        out.append(({"widths": widths, "depths": depths}, DemoResNet(1, 10, widths, depths)))
    return out, torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def mlp(n: int, seed: int) -> tuple[list[tuple[dict, nn.Module]], torch.Tensor]:
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        widths = [784] + [32 * rng.randint(1, 32) for _ in range(rng.randint(1, 3))]
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:], strict=False):
            layers += [nn.Linear(a, b), nn.ReLU()]
        torch.manual_seed(rng.randrange(2**31))
        out.append(({"widths": widths}, nn.Sequential(*layers, nn.Linear(widths[-1], 10))))
    return out, torch.rand(1, 784, generator=torch.Generator().manual_seed(seed))


BUILDERS = {"nas201": nas201, "mobilenet_v2": mobilenet_v2, "resnet": resnet, "mlp": mlp}


# -- one runtime, one architecture --------------------------------------------------------------


def halves(samples: list[float], runs: int) -> tuple[float, float]:
    """Medians of the even and of the odd rounds (two independent measurements)."""
    rounds = [samples[i : i + runs] for i in range(0, len(samples), runs)]
    even = [s for r in rounds[0::2] for s in r]
    odd = [s for r in rounds[1::2] for s in r] or even
    return statistics.median(even), statistics.median(odd)


def spread(order: list[int], k: int) -> list[int]:
    """``k`` entries of ``order`` evenly spaced from its first to its last."""
    if k >= len(order):
        return list(order)
    return [order[round(j * (len(order) - 1) / max(k - 1, 1))] for j in range(k)]


def block(args: argparse.Namespace, runtime: str, arch: str, cands: list, x: Any, cache: Path):
    """Build the table on every candidate, measure every candidate whole, calibrate on
    ``--calibration`` of them spread over the raw predictions, then predict every candidate;
    returns rows and a summary."""
    from torchslim.search import LatencyTable

    table = LatencyTable(
        runtime,
        threads=args.threads,
        cache=cache,
        rounds=args.rounds,
        runs=args.runs,
        target_ms=args.kernel_ms,
    )
    start = time.perf_counter()
    first = [table.predict(m, x) for _, m in cands]  # builds the table: each kernel timed once
    built = time.perf_counter() - start
    size = args.group or len(cands)
    lats = []
    for group_start in range(0, len(cands), size):  # alternating rounds over each group
        lats += table.measure_many([m for _, m in cands[group_start : group_start + size]], x)
    calib = spread(sorted(range(len(cands)), key=lambda i: first[i].raw_ms), args.calibration)
    correction = table.calibrate(
        [cands[i][1] for i in calib], x, measured_ms=[lats[i].median_ms for i in calib]
    )
    print(f"[{runtime}/{arch}] table built in {built:.1f} s; {correction}", file=sys.stderr)
    rows = []
    for i, (pred, lat) in enumerate(zip(first, lats, strict=True)):
        predicted = correction(pred.features)  # what table.predict now returns, without
        a, b = halves(list(lat.samples_ms), args.runs)  # exporting every candidate again
        rows.append(
            {
                "kind": "candidate",
                "runtime": runtime,
                "arch": arch,
                "index": i,
                "role": "calibration" if i in calib else "test",
                "desc": cands[i][0],
                "predicted_ms": predicted,
                "raw_ms": pred.raw_ms,
                "features": pred.features,
                "kernel_calls": len(pred.kernels),
                "measured_now": first[i].measured_now,
                "measured_ms": lat.median_ms,
                "iqr_ms": lat.iqr_ms,
                "half_a_ms": a,
                "half_b_ms": b,
                "timed_runs": lat.runs,
            }
        )
        err = predicted / lat.median_ms - 1
        print(
            f"[{runtime}/{arch}] {i:3d} {rows[-1]['role']:11s} measured "
            f"{lat.median_ms:7.3f} ms (IQR {lat.iqr_ms / lat.median_ms:5.1%}) predicted "
            f"{predicted:7.3f} ms ({err:+6.1%}), kernel sum {pred.raw_ms:7.3f} ms",
            file=sys.stderr,
        )
    summary = {
        "kind": "block",
        "runtime": runtime,
        "arch": arch,
        "candidates": len(cands),
        "calibration_models": len(calib),
        "correction": correction.to_dict(),
        "correction_text": str(correction),
        "kernels_in_table": len(table.entries),
        "kernels_timed": table.measured_kernels,
        "kernel_seconds": table.measure_seconds,
        "table_seconds": built,
        "wall_seconds": time.perf_counter() - start,
        "cache": str(table.path),
        "key": table.key,
    }
    return rows, summary


def run(args: argparse.Namespace) -> None:
    import torchslim as ts

    run_id = time.strftime("%Y%m%d-%H%M%S")
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="latency-tables-"))
    print(f"run {run_id}: {args.threads} threads, tables in {cache}", file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    versions = {"torch": torch.__version__, "torchslim": ts.__version__}
    with out.open("a") as sink:

        def record(row: dict) -> None:
            row = {"run": run_id, "threads": args.threads, "quick": args.quick, **row}
            sink.write(json.dumps(row) + "\n")
            sink.flush()

        record(
            {"kind": "start", "args": vars(args), "versions": versions, "cpu": platform.processor()}
        )
        built = {}
        for arch in args.archs:
            start = time.perf_counter()
            built[arch] = BUILDERS[arch](args.calibration + args.candidates, args.seed)
            print(
                f"[{arch}] {len(built[arch][0])} candidates built in "
                f"{time.perf_counter() - start:.1f} s",
                file=sys.stderr,
            )
        for runtime in args.runtimes:
            for arch in args.archs:
                cands, x = built[arch]
                rows, summary = block(args, runtime, arch, cands, x, cache)
                for row in rows:
                    record(row)
                record(summary)
    print(f"rows appended to {out}; report: --report --out {out}", file=sys.stderr)


# -- the report ---------------------------------------------------------------------------------


def accuracy(pairs: list[tuple[float, float]]) -> dict[str, float]:
    errors = [abs(p / m - 1) for p, m in pairs]
    return {
        "n": len(errors),
        "within10": sum(e <= 0.10 for e in errors) / len(errors),
        "within5": sum(e <= 0.05 for e in errors) / len(errors),
        "mape": statistics.fmean(errors),
        "medape": statistics.median(errors),
    }


def fmt(acc: dict[str, float]) -> str:
    return (
        f"{acc['n']} | **{acc['within10']:.1%}** | {acc['within5']:.1%} | "
        f"{acc['mape']:.1%} | {acc['medape']:.1%}"
    )


def share(errors: list[float], bound: float) -> str:
    return f"{sum(e <= bound for e in errors) / len(errors):.0%}"


def report(rows: list[dict], run_id: str | None) -> str:
    from torchslim.search import LatencyCorrection

    runs = [r["run"] for r in rows if r.get("kind") == "block"]
    if not runs:
        return "no completed runtime/architecture block in the file"
    run_id = run_id or runs[-1]
    rows = [r for r in rows if r.get("run") == run_id]
    cands = [r for r in rows if r.get("kind") == "candidate"]
    blocks = {(r["runtime"], r["arch"]): r for r in rows if r.get("kind") == "block"}
    start = next((r for r in rows if r.get("kind") == "start"), {})
    ort = next((b["key"]["onnxruntime"] for b in blocks.values() if b["key"]["onnxruntime"]), "-")
    b0 = next(iter(blocks.values()))
    out = [
        f"Run `{run_id}`{' (--quick)' if start.get('quick') else ''}: {b0['key']['device']}, "
        f"{start.get('threads')} threads, batch 1, torch {b0['key']['torch']}, "
        f"onnxruntime {ort}.\n",
        "Accuracy on held-out candidates (the correction never saw them): share of candidates "
        "whose predicted latency is within ±10% / ±5% of the measured median; mean and median "
        "absolute percentage error.\n",
        "| runtime | architecture | prediction | candidates | within ±10% | within ±5% | MAPE "
        "| median APE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_rt: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for runtime in RUNTIMES:
        rt = [r for r in cands if r["runtime"] == runtime]
        if not rt:
            continue
        calib = [r for r in rt if r["role"] == "calibration"]
        pooled = LatencyCorrection.fit(
            [r["features"] for r in calib], [r["measured_ms"] for r in calib]
        )
        archs = [a for a in ARCHS if (runtime, a) in blocks]
        for arch in archs:
            test = [r for r in rt if r["arch"] == arch and r["role"] == "test"]
            if not test:
                continue
            variants = {
                "corrected (per architecture)": [
                    (r["predicted_ms"], r["measured_ms"]) for r in test
                ],
                "corrected (pooled)": [(pooled(r["features"]), r["measured_ms"]) for r in test],
                "kernel sum": [(r["raw_ms"], r["measured_ms"]) for r in test],
            }
            for name, pairs in variants.items():
                by_rt[runtime][name] += pairs
                out.append(f"| {runtime} | {arch} | {name} | {fmt(accuracy(pairs))} |")
        for name, pairs in by_rt[runtime].items():
            out.append(f"| {runtime} | **all** | {name} | {fmt(accuracy(pairs))} |")
        out.append(f"\n{runtime} pooled correction: {pooled}\n")
    out.append(
        "\nThe measurement (held-out candidates): median latency, spread (IQR/median of all "
        "timed runs), and reproducibility (|median of even rounds / median of odd rounds "
        "- 1|; a prediction cannot beat it).\n"
    )
    out.append(
        "| runtime | architecture | candidates | latency median (min-max) ms | timed runs "
        "| IQR/median (median, max) | even/odd rounds: median diff | within ±5% | "
        "within ±10% |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|")
    for (runtime, arch), _ in blocks.items():
        test = [r for r in cands if (r["runtime"], r["arch"], r["role"]) == (runtime, arch, "test")]
        if not test:
            continue
        ms = [r["measured_ms"] for r in test]
        spreads = [r["iqr_ms"] / r["measured_ms"] for r in test]
        rep = [abs(r["half_a_ms"] / r["half_b_ms"] - 1) for r in test]
        out.append(
            f"| {runtime} | {arch} | {len(test)} | {statistics.median(ms):.3f} "
            f"({min(ms):.3f}-{max(ms):.3f}) | {test[0]['timed_runs']} "
            f"| {statistics.median(spreads):.1%}, {max(spreads):.1%} "
            f"| {statistics.median(rep):.1%} "
            f"| {share(rep, 0.05)} | {share(rep, 0.10)} |"
        )
    out.append(
        "\nThe tables and their corrections (calibration models spread over the raw "
        "predictions, measured whole; kernels: configurations timed alone into a fresh table, "
        "while predicting every candidate once).\n"
    )
    out.append(
        "| runtime | architecture | calibration models | correction | kernels timed | "
        "kernel timing (s) | table built (s) | block wall time (s) |"
    )
    out.append("|---|---|---|---|---|---|---|---|")
    for (runtime, arch), b in blocks.items():
        out.append(
            f"| {runtime} | {arch} | {b['calibration_models']} | {b['correction_text']} "
            f"| {b['kernels_timed']} | {b['kernel_seconds']:.1f} | {b['table_seconds']:.1f} "
            f"| {b['wall_seconds']:.1f} |"
        )
    return "\n".join(out)


# -- command line ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", action="store_true", help="print the tables of --out")
    parser.add_argument("--run", default=None, help="report this run id (default: the latest)")
    parser.add_argument("--out", default="runs/latency_model.jsonl", help="JSON lines, appended")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--archs", nargs="+", choices=ARCHS, default=list(DEFAULT_ARCHS))
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--candidates", type=int, help="held-out per architecture (36)")
    parser.add_argument("--calibration", type=int, help="calibration models per arch (10)")
    parser.add_argument(
        "--group", type=int, default=0, help="models measured together (0: an architecture's all)"
    )
    parser.add_argument("--rounds", type=int, help="alternating rounds per group (10)")
    parser.add_argument("--runs", type=int, help="timed runs per model and round (10)")
    parser.add_argument("--kernel-ms", type=float, help="timed ms per kernel and pass (20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=None, help="table folder (default: a fresh one)")
    parser.add_argument("--quick", action="store_true", help="a smoke test (under a minute)")
    args = parser.parse_args()
    if args.report:
        rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line]
        print(report(rows, args.run))
        return
    for name, value in (QUICK if args.quick else FULL).items():  # budgets not given
        if getattr(args, name) is None:
            setattr(args, name, value)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    run(args)


if __name__ == "__main__":
    main()
