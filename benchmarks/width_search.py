"""Width and depth search against uniform pruning, at the same measured ONNX Runtime latency.

The base models and their cache are those of ``benchmarks/criteria.py`` (imported from it), as
in ``benchmarks/methods.py``: per seed, ImageNet MobileNetV2 transfer-trained on ``mnist5k`` at
32 px (``mobilenet_v2``) and DemoResNet trained from scratch at 28 px (``demo_resnet``), saved
with ``ts.save`` in ``--cache``. Latency is what ships: the model exported to ONNX and run by ONNX
Runtime on the CPU at batch 1 with ``--threads`` intra-op threads, always as a ratio to the base
model measured in the same process in alternating rounds (``methods.compare``: the order flips
every round, the ratio is the median of per-round ratios of medians). The budget is a fraction of
the base model's latency (``--targets``, 0.5 by default).

The 1,000 test digits are split once (seeded, the same for every seed): ``val_samples`` (500)
for the search to select on, the other 500 for the report. The uniform baseline never sees the
validation half; both methods are reported on the held-out half only.

- ``uniform``: ``ts.prune_(target_macs=m, importance=criterion, round_to=block)`` with local
  ranking, which removes the same share of every group; the amount ``m`` is searched
  (``methods.search``, aiming just under the budget) and the least compressed probe whose
  measured ratio is within the budget is kept (the fastest, when none is).
- ``search``: ``ts.search`` over :class:`ts.search.WidthSpace` of the base model (a keep ratio
  from ``choices`` per prunable group, and every removable residual block on or off; the same
  criterion and ``round_to``), evaluated by :class:`ts.search.WidthEvaluator` (accuracy on the
  validation half, ONNX Runtime latency ratio against the base model measured like the
  baseline's probes), one objective ``accuracy:max`` under the constraint
  ``latency_ratio <= budget``, ``trials`` trials, TPE (Optuna's, with the constraint), seeded.
  The uniform configurations (every group at the same keep ratio, for each choice) are tried
  first, so the search starts from what uniform pruning can do on this grid. Candidates get
  batch-norm recalibration (``bn_batches``) and, with ``--search-finetune N``, N distillation
  steps before their validation (accuracy right after pruning says little: MobileNetV2 with half
  of every group falls to ~12%). The most accurate feasible trial wins; it is rebuilt with
  ``WidthSpace.materialize`` without those steps (they only select), recovered like the
  baseline, and saved with ``ts.save`` (its reload is checked).

Both winners then get the same recovery as in ``methods.py``: batch-norm recalibration on the same
batches and the same knowledge-distillation fine-tune (``finetune_batches`` AdamW steps, the same
batches in the same order). Reported: ONNX Runtime accuracy on the held-out 500 digits, accuracy
before the fine-tune, MACs, file size and the final latency ratio (``final_rounds`` rounds).

Results are JSON lines appended to ``--out``; a rerun skips what is there. ``--report`` prints
the Markdown tables.

    python benchmarks/width_search.py --threads 2 --out runs/width_search.jsonl
    python benchmarks/width_search.py --report --out runs/width_search.jsonl
    python benchmarks/width_search.py --quick --seeds 0 --models demo_resnet --out /tmp/ws.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import criteria  # benchmarks/criteria.py: base models, cache, helpers
import methods  # benchmarks/methods.py: ONNX Runtime deployment, latency ratios, recovery

MODELS = criteria.MODELS
TARGETS = (0.5,)
SEEDS = (0, 1, 2)
METHODS = ("uniform", "search")


@dataclass(frozen=True)
class Budget(methods.Budget):
    """methods.py's budgets (recovery, latency rounds, tolerance, widths) plus the search's."""

    trials: int = 40  # completed trials of each search
    choices: str = "0.25,0.5,0.75,1.0"  # keep ratios of every group
    blocks: bool = True  # search removable residual blocks too
    val_samples: int = 500  # of the 1,000 test digits: selection; the rest: the report
    search_finetune: int = 0  # KD steps per trial before its validation (0: BN recalibration only)

    def tag(self) -> str:
        return (
            super().tag()
            + f"-trials{self.trials}-keep{self.choices.replace(',', '.')}"
            + f"-blocks{int(self.blocks)}-val{self.val_samples}"
            + (f"-trialft{self.search_finetune}" if self.search_finetune else "")
        )

    def uniform_tag(self) -> str:
        """The settings the uniform baseline depends on (not the search's): a run with other
        search settings reuses its rows."""
        return methods.Budget.tag(self) + f"-val{self.val_samples}"


QUICK = {**methods.QUICK, "trials": 6}


class Bench(methods.Bench):
    """methods.py's worker state (base models, ONNX sessions, recovery), reporting on the
    held-out half of the test digits and keeping the other half for the search."""

    def __init__(self, budget: Budget, cache: Path, threads: int, folder: Path, save: Path) -> None:
        super().__init__(budget, cache, threads, folder)
        self.save_dir = save
        self.halves: dict[str, tuple[Any, Any]] = {}
        self._full = False

    def base(self, model: str, seed: int) -> tuple[Any, dict]:
        self._full = True  # criteria's cache records the base accuracy on all 1,000 digits
        try:
            return super().base(model, seed)
        finally:
            self._full = False

    def data(self, model: str) -> tuple[Any, Any]:
        train, test = super().data(model)
        return (train, test) if self._full else (train, self.split(model)[1])

    def split(self, model: str) -> tuple[Any, Any]:
        """(validation, report) halves of the test digits, the same for every seed."""
        if model not in self.halves:
            import torch
            from torch.utils.data import TensorDataset

            x, y = criteria.Bench.data(self, model)[1].tensors
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(12345))
            n = self.settings.val_samples
            val, rest = order[:n], order[n:]
            self.halves[model] = (TensorDataset(x[val], y[val]), TensorDataset(x[rest], y[rest]))
        return self.halves[model]

    @property
    def block(self) -> int:
        return int(self.settings.round_to.split(",")[0])

    def configuration(self, model: str, target: float, seed: int, method: str, criterion) -> dict:
        start = time.perf_counter()
        self.deploy(model, seed)
        if method == "uniform":
            row = self.run_uniform(model, target, seed, criterion)
        else:
            row = self.run_search(model, target, seed, criterion)
        row["seconds"] = time.perf_counter() - start
        return row

    def run_uniform(self, model: str, target: float, seed: int, criterion: str) -> dict:
        s = self.settings
        t = time.perf_counter()
        _, lo, make = self.compressor("prune", model, seed, criterion, self.block)
        candidates: dict[float, Any] = {}

        def probe(u: float) -> float:
            net = make(math.exp(u))
            path = self.export(net, model, f"probe{len(candidates)}")
            candidates[u] = net
            return self.measure(path, model, seed, s.search_rounds)["ratio"]

        aim = target * (1 - s.tolerance / 2)  # just under the budget
        _, probes, _ = methods.search(
            probe,
            aim,
            math.log(lo),
            0.0,
            math.log(aim),
            steps=s.search_steps,
            tolerance=s.tolerance / 2,
        )
        within = [p for p in probes if p[1] <= target]
        u, ratio = max(within) if within else min(probes, key=lambda p: p[1])
        net = candidates[u]
        row = {
            "amount": math.exp(u),
            "round_to": self.block,
            "probes": [[math.exp(p), r] for p, r in probes],
            "search_ratio": ratio,
            "reached": bool(within),
            "seconds_search": time.perf_counter() - t,
        }
        return {**row, **self.finish(net, model, seed)}

    def run_search(self, model: str, target: float, seed: int, criterion: str) -> dict:
        import torchslim as ts

        s = self.settings
        t = time.perf_counter()
        base, _ = self.base(model, seed)
        space = ts.search.WidthSpace(
            base,
            self.example(model),
            data=self.fixed(model, seed),  # the baseline's calibration and BN batches
            choices=[float(c) for c in s.choices.split(",")],
            importance=criterion,
            calibration_batches=s.calibration_batches,
            bn_batches=s.bn_batches,
            finetune_batches=s.search_finetune,
            finetune_options={
                "lr": s.finetune_lr,
                "kd_alpha": s.kd_alpha,
                "kd_temperature": s.kd_temperature,
            },
            round_to=self.block,
            blocks=s.blocks,
            seed=seed,
        )
        evaluator = ts.search.WidthEvaluator(
            data=self.split(model)[0],
            latency="onnxruntime",
            threads=self.threads,
            rounds=s.search_rounds,
            runs=s.runs_per_round,
        )
        search = ts.search.Search(
            space,
            evaluator,
            objectives=["accuracy:max"],
            constraints={"latency_ratio": target},
            sampler="tpe",
            seed=seed,
        )
        for keep in space.choices:  # uniform configurations first
            params = {f"keep/{tie}": keep for tie in dict.fromkeys(space.ties.values())}
            params.update({f"drop/{b}": False for b in space.blocks})
            search.study.enqueue_trial(params)
        result = search.run(budget=s.trials, progress=False)
        trials = result.trials
        feasible = [r for r in trials if r.metrics["latency_ratio"] <= target]
        pool = feasible or trials
        best = max(
            pool,
            key=lambda r: (
                r.metrics["accuracy"] if feasible else -r.metrics["latency_ratio"],
                -r.metrics["latency_ratio"],
            ),
        )
        space.finetune_batches = 0  # the trials' KD steps only select; recovery is the same
        net, candidate = space.materialize(best.config)
        keeps = list(best.config["keep"].values())
        row = {
            "round_to": self.block,
            "groups": len(space.groups),
            "blocks": len(space.blocks),
            "trials": len(trials),
            "feasible": len(feasible),
            "reached": bool(feasible),
            "search_ratio": best.metrics["latency_ratio"],
            "val_acc": best.metrics["accuracy"] / 100,
            "best_trial": best.number,
            "uniform_best": _best_uniform(trials, space, target),
            "dropped": list(best.config["drop"]),
            "keep_mean": statistics.fmean(keeps),
            "keep": best.config["keep"],
            "seconds_search": time.perf_counter() - t,
        }
        row.update(self.finish(net, model, seed))
        path = ts.save(net, self.save_dir / f"{model}-seed{seed}-x{target:g}", overwrite=True)
        reloaded = ts.load(path).eval()
        x = self.example(model)
        import torch

        with torch.no_grad():
            row["reload_max_diff"] = float((reloaded(x) - net(x)).abs().max())
        row["saved"] = str(path)
        del candidate
        return row

    def finish(self, net: Any, model: str, seed: int) -> dict:
        """methods.py's recovery (BN recalibration and the KD fine-tune), export and report."""
        row = self.recover(net, model, seed)
        path = self.export(net, model, "final", verify=True)
        row.update(self.final(net, path, model, seed))
        return row


def _best_uniform(trials: list, space: Any, target: float) -> float | None:
    """Validation accuracy of the best feasible uniform configuration the search tried."""
    uniform = [
        r
        for r in trials
        if not r.config["drop"]
        and len(set(r.config["keep"].values())) == 1
        and r.metrics["latency_ratio"] <= target
    ]
    return max((r.metrics["accuracy"] / 100 for r in uniform), default=None)


# -- the run ----------------------------------------------------------------------------------


def config_key(row: dict, budget: str = "budget") -> tuple:
    keys = (budget, "model", "target", "seed", "method", "criterion")
    return (row.get("kind"), *(row.get(k) for k in keys))


def run(args: argparse.Namespace, budget: Budget) -> None:
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    rows = criteria.read_rows(args.out)
    done = {config_key(r): r for r in rows}
    uniform = {config_key(r, "uniform_budget"): r for r in rows if r.get("ok")}
    stamp = {"budget": budget.tag(), "commit": criteria.commit(), "threads": args.threads}
    stamp["uniform_budget"] = budget.uniform_tag()
    if args.criterion == "best":
        chosen = methods.best_criteria(args.criteria_out, args.models)
    else:
        chosen = {m: (args.criterion, "--criterion") for m in args.models}

    def record(row: dict) -> None:
        print(json.dumps(row), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")

    with tempfile.TemporaryDirectory(prefix="width-search-") as folder:
        bench = Bench(budget, Path(args.cache), args.threads, Path(folder), Path(args.save_dir))
        for seed, model, target in itertools.product(args.seeds, args.models, args.targets):
            name, why = chosen[model]
            for method in args.methods:
                row = {"kind": "run", "model": model, "seed": seed, "target": target, **stamp}
                row.update(method=method, criterion=name, criterion_source=why)
                old = done.get(config_key(row))
                if old is not None and (old.get("ok") or not args.retry_failed):
                    continue
                same = uniform.get(config_key(row, "uniform_budget"))
                if method == "uniform" and same is not None:  # other search settings only
                    record({**same, "budget": row["budget"], "reused_from": same["budget"]})
                    continue
                print(f"[{model} seed {seed} x{target:g}] {method} ({name})", file=sys.stderr)
                try:
                    row.update(ok=True, **bench.configuration(model, target, seed, method, name))
                    row["base"] = bench.deploy(model, seed)["info"]
                except Exception as e:  # noqa: BLE001 - any failure is a result
                    import traceback

                    traceback.print_exc()
                    row.update(ok=False, error=f"{type(e).__name__}: {' '.join(str(e).split())}")
                record(row)


# -- the report -------------------------------------------------------------------------------


def report(rows: list[dict]) -> str:
    out: list[str] = []
    runs = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("kind") == "run":
            runs[(r["budget"], r["model"], r["target"])][r["method"]].append(r)
    for (budget, model, target), by_method in sorted(runs.items(), key=str):
        ok = {m: [r for r in rs if r.get("ok")] for m, rs in by_method.items()}
        sample = next((r for rs in ok.values() for r in rs), None)
        if sample is None:
            continue
        seeds = sorted({r["seed"] for rs in ok.values() for r in rs})
        base = sample["base"]
        out.append(f"### {model}, latency budget × {target:g}\n")
        out.append(
            f"settings `{budget}`, seeds {seeds}, commit {sample.get('commit')}, ONNX Runtime "
            f"CPU, {sample.get('threads')} threads, batch 1, criterion {sample.get('criterion')}; "
            f"base model: accuracy {100 * base['acc']:.2f}% on the report half, "
            f"{base['macs'] / 1e6:.2f} MMACs, {base['latency_ms']:.3f} ms; base against itself "
            f"{base['self_ratio']:.3f}×\n"
        )
        out.append(
            "| method | accuracy (%) | before KD (%) | ORT latency ratio | MACs ratio | size (MB) "
            "| notes |"
        )
        out.append("|---|---|---|---|---|---|---|")
        for method in METHODS:
            rs = ok.get(method, [])
            if not rs:
                continue
            n = "" if len(rs) == len(seeds) else f" (n={len(rs)})"
            out.append(
                f"| {method}{n} | {criteria.mean_std([r['acc'] for r in rs])} "
                f"| {criteria.mean_std([r['acc_before_ft'] for r in rs])} "
                f"| {criteria.mean_std([r['latency_ratio'] for r in rs], 1, 3)} "
                f"| {statistics.fmean(r['macs_ratio'] for r in rs):.3f} "
                f"| {statistics.fmean(r['size_mb'] for r in rs):.3f} | {_notes(method, rs)} |"
            )
        verdict = _verdict(ok)
        if verdict:
            out.append(f"\n{verdict}")
        for m, rs in by_method.items():
            for r in rs:
                if not r.get("ok"):
                    out.append(f"- failed: {m} seed {r['seed']}: {r.get('error')}")
        out.append("")
    done = [r for r in rows if r.get("kind") == "run" and r.get("ok")]
    if done:
        seconds = sum(r["seconds"] for r in done)
        out.append(f"{len(done)} configurations, {seconds / 60:.1f} min in all")
    return "\n".join(out)


def _notes(method: str, rows: list[dict]) -> str:
    parts = []
    if method == "uniform":
        parts.append(f"target_macs {methods.spread([r['amount'] for r in rows])}")
        parts.append(f"{statistics.fmean(len(r['probes']) for r in rows):.1f} probes")
    else:
        parts.append(
            f"{rows[0]['groups']} groups + {rows[0]['blocks']} blocks, "
            f"{statistics.fmean(r['trials'] for r in rows):.0f} trials "
            f"({statistics.fmean(r['feasible'] for r in rows):.0f} within budget)"
        )
        parts.append(f"mean keep {methods.spread([r['keep_mean'] for r in rows])}")
        parts.append(f"blocks dropped {methods.spread([len(r['dropped']) for r in rows], 0)}")
        uniform = [r["uniform_best"] for r in rows if r.get("uniform_best") is not None]
        parts.append(
            f"val acc {criteria.mean_std([r['val_acc'] for r in rows])}"
            + (f" (best uniform grid point {criteria.mean_std(uniform)})" if uniform else "")
        )
        parts.append(f"saved, reload diff ≤ {max(r['reload_max_diff'] for r in rows):.1e}")
    parts.append(f"widths × {rows[0]['round_to']}")
    missed = [r for r in rows if not r["reached"]]
    if missed:
        parts.append(f"**budget not reached** in {len(missed)}/{len(rows)}")
    return "; ".join(parts)


def _verdict(ok: dict[str, list[dict]]) -> str:
    """Search against uniform over the seeds both ran: mean differences, and whether the search
    wins on accuracy or latency without losing on the other (a loss: beyond one standard error
    of the paired differences)."""
    pairs = defaultdict(dict)
    for method in METHODS:
        for r in ok.get(method, []):
            pairs[r["seed"]][method] = r
    both = [p for p in pairs.values() if len(p) == 2]
    if not both:
        return ""

    def paired(field: str) -> tuple[float, float]:
        diffs = [p["search"][field] - p["uniform"][field] for p in both]
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
        return statistics.fmean(diffs), se

    acc, acc_se = paired("acc")
    lat, lat_se = paired("latency_ratio")
    wins = [w for w, ok_ in (("accuracy", acc > acc_se), ("latency", -lat > lat_se)) if ok_]
    losses = [w for w, ok_ in (("accuracy", -acc > acc_se), ("latency", lat > lat_se)) if ok_]
    verdict = (
        f"search − uniform over {len(both)} seeds: accuracy {100 * acc:+.2f} pt "
        f"(± {100 * acc_se:.2f}), latency ratio {lat:+.3f} (± {lat_se:.3f}). "
    )
    if len(both) < 2:
        return verdict + "One seed: no verdict."
    if wins and not losses:
        return verdict + f"**The search wins on {' and '.join(wins)} at no loss on the other.**"
    if losses:
        return verdict + f"The search loses on {' and '.join(losses)}."
    return verdict + "No difference beyond one standard error."


# -- command line -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", action="store_true", help="print the tables of --out")
    parser.add_argument("--out", default="runs/width_search.jsonl", help="JSON lines, appended")
    parser.add_argument("--cache", default="runs/criteria-cache", help="criteria's base models")
    parser.add_argument("--save-dir", default="runs/width-search", help="the searched models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["mobilenet_v2"])
    parser.add_argument("--targets", nargs="+", type=float, default=list(TARGETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--criterion",
        choices=("best", *criteria.OURS),
        default="taylor",
        help="the criterion of both methods (default: taylor, as the methods benchmark ran); "
        "'best': the best after KD in --criteria-out",
    )
    parser.add_argument("--criteria-out", default="runs/criteria.jsonl")
    parser.add_argument("--trials", type=int, default=None, help="trials of each search")
    parser.add_argument("--finetune-batches", type=int, default=None, help="KD fine-tune steps")
    parser.add_argument("--no-blocks", action="store_true", help="search widths only")
    parser.add_argument(
        "--round-to",
        type=int,
        default=None,
        help="width multiple of both methods (default: the "
        "CPU's NCHWc block: 16 with AVX-512, else 8)",
    )
    parser.add_argument("--choices", default=None, help="keep ratios, e.g. 0.25,0.5,0.75,1.0")
    parser.add_argument(
        "--search-finetune", type=int, default=None, help="KD steps per trial (default 0: BN only)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test")
    parser.add_argument("--retry-failed", action="store_true")
    args = parser.parse_args()
    if args.report:
        print(report(criteria.read_rows(args.out)))
        return
    if not all(0 < t < 1 for t in args.targets):
        raise SystemExit(f"--targets are fractions of the base latency in (0, 1): {args.targets}")
    budget = Budget(**(QUICK if args.quick else {}))
    block = args.round_to or methods.cpu_block()
    budget = dataclasses.replace(budget, round_to=str(block), blocks=not args.no_blocks)
    for name in ("trials", "finetune_batches", "choices", "search_finetune"):
        if getattr(args, name) is not None:
            budget = dataclasses.replace(budget, **{name: getattr(args, name)})
    run(args, budget)
    print(report([r for r in criteria.read_rows(args.out) if r.get("budget") == budget.tag()]))


if __name__ == "__main__":
    main()
