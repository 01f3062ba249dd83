"""Pruning criteria on real tasks: torchslim's 11 criteria against Torch-Pruning 1.6.1's 4.

Two base models, trained once per seed and cached (``--cache``, saved with ``ts.save``):

- ``mobilenet_v2``: torchvision's ImageNet MobileNetV2 (``pretrained:mobilenet_v2``, offline), its
  classifier swapped for 10 classes (seeded), transfer-fine-tuned on ``mnist5k`` at 32 px, three
  channels, ImageNet normalisation;
- ``demo_resnet``: torchslim's ``DemoResNet`` (16-32-64 channels, 6 basic blocks), trained from
  scratch on ``mnist5k`` at 28 px, one channel, MNIST normalisation.

Every seed trains its own base model (its own initialisation of the new layers and its own data
order); every method of that seed starts from that same base model, sees the same calibration
batches and the same fine-tuning batches in the same order, so methods differ only by the
channels they remove. The train/test split (4,000 / 1,000 digits, stratified) is the same for
all seeds. The spread over seeds is thus the spread over base models and data order.

For every base model, MAC target (0.5 and 0.25 of the original), seed and method, a deep copy of
the base model is pruned to the target, then measured three times on the 1,000 test digits:
right after pruning, after batch-norm recalibration (``ts.recalibrate_bn`` on a fixed number of
training batches), and after a fixed knowledge-distillation fine-tune from the unpruned base
model (``ts.finetune``, the same number of AdamW steps, learning rate, ``kd_alpha`` and
temperature for every method). MACs are counted by one counter for both tools (torchslim's,
PyTorch's ``FlopCounterMode``, on one example input) and must land within 2% of the target.

torchslim: ``ts.prune_(model, x, target_macs=t, importance=name)``, every criterion in the same
ranking mode (``--ranking``: ``local``, the default, ranks channels within each group and removes
the same share of every group; ``global`` passes ``global_ranking=True``, each group's scores
divided by their mean; ``global-lamp`` passes ``global_ranking="lamp"``, each group's scores put
through LAMP's transform; Torch-Pruning runs globally in both). ``random`` gets the
seed. Data-driven criteria (``taylor``, ``activation``, ``hrank``, ``energy``, ``lrp``) get the
same ``calibration_batches`` training batches, with their labels.

Torch-Pruning runs with its documented settings: ``tp.pruner.MetaPruner`` with
``GroupMagnitudeImportance(p=2)`` (``magnitude``), ``GroupTaylorImportance()`` (``taylor``),
``FPGMImportance(p=2)`` (``fpgm``) and ``LAMPImportance(p=2)`` (``lamp``), default reductions
and normalisers; the final classifier in ``ignored_layers`` (as its examples do). It reaches the
MAC target as its own benchmark script (``reproduce/main.py``) does: ``pruning_ratio=1.0`` over
``iterative_steps=400`` (a quarter of a percent of every group per step), stepping until the
MACs reach the target, so it ends within one small step of it. The MACs are counted with the
common counter, and not after every step: after each count the steps left are extrapolated from
the mean fall per step so far (MACs fall ever more slowly, so this underestimates them; at most
16 steps go uncounted, and near the target every step is counted). Groups of equal width lose a
channel at the same step, so on a small network one step can jump past the 2% band; then the
same pruning is replayed on a fresh copy to one step fewer, and the nearer of the two is kept
(within 2% either way counts as on target, for both tools).

``GroupTaylorImportance`` needs gradients: the loss is backpropagated on the same calibration
batches as torchslim's ``taylor`` (summed, as in Torch-Pruning's criteria benchmark) once before
the first step; Torch-Pruning prunes each ``.grad`` with its weight, so later steps score the
remaining channels with the same gradients (torchslim's ``taylor`` also scores once). Ranking:
``local`` (``global_pruning=False``, its default) or ``global`` as ``--ranking`` says, except
that ``lamp`` always prunes globally: LAMP is a global criterion and Torch-Pruning's scripts run
it with ``--global-pruning`` (ranked within a group, its scores order channels like magnitude).

Each configuration runs in a long-lived worker subprocess (one at a time, threads pinned with
``--threads``, an address-space cap ``--mem-gb``, a timeout per configuration; a worker that
times out, crashes or runs out of memory is replaced). Results are appended as JSON lines to
``--out``; a rerun skips the configurations already there (failures too, unless
``--retry-failed``), so an interrupted run resumes. ``--report`` prints the Markdown tables.

    python benchmarks/criteria.py --threads 2 --out runs/criteria.jsonl
    python benchmarks/criteria.py --report --out runs/criteria.jsonl
    python benchmarks/criteria.py --quick --seeds 0 --models demo_resnet --out /tmp/smoke.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODELS = ("mobilenet_v2", "demo_resnet")
TARGETS = (0.5, 0.25)
SEEDS = (0, 1, 2)
OURS = (
    "l1",
    "l2",
    "random",
    "fpgm",
    "lamp",
    "bn_scale",
    "taylor",
    "activation",
    "hrank",
    "energy",
    "lrp",
)
THEIRS = ("magnitude", "taylor", "fpgm", "lamp")
METHODS = tuple(f"ts:{n}" for n in OURS) + tuple(f"tp:{n}" for n in THEIRS)
DATA_DRIVEN = {"taylor", "activation", "hrank", "energy", "lrp"}
RANKINGS = ("local", "global", "global-lamp")
#: ``prune_(global_ranking=...)`` for each ranking mode
GLOBAL_RANKING = {"local": False, "global": True, "global-lamp": "lamp"}
TP_STEPS = 400  # Torch-Pruning's iterative_steps: 1/400 of every group per step
MACS_TOLERANCE = 0.02


#: Base-model training: epochs over the 4,000 training digits, AdamW peak learning rate (cosine
#: schedule, 20 warm-up steps), batch size ``Budget.batch_size``.
BASE_TRAINING = {
    "mobilenet_v2": {"epochs": 2, "lr": 1e-3},  # transfer: every layer trained
    "demo_resnet": {"epochs": 3, "lr": 3e-3},  # from scratch
}


@dataclass(frozen=True)
class Budget:
    """Every budget of a run, the same for every method; ``--quick`` shrinks them all."""

    batch_size: int = 64
    base_steps: int | None = None  # cap on the base-model training steps (None: BASE_TRAINING)
    calibration_batches: int = 8  # data-driven criteria, and Torch-Pruning's Taylor gradient
    bn_batches: int = 16  # ts.recalibrate_bn
    finetune_batches: int = 80  # KD fine-tune: AdamW steps (1.3 epochs), cosine schedule to 0
    finetune_lr: float = 1e-3
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    test_samples: int | None = None  # None: the whole test split (1,000 digits)

    def base_tag(self) -> str:
        """Names the base-model training settings in the cache, so quick runs never mix in."""
        settings = [BASE_TRAINING, self.batch_size, self.base_steps, self.test_samples]
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]

    def tag(self) -> str:
        """Names the pruning-stage budgets; the report keeps rows of other budgets apart."""
        return (
            f"cal{self.calibration_batches}-bn{self.bn_batches}-ft{self.finetune_batches}"
            f"-lr{self.finetune_lr:g}-kd{self.kd_alpha:g}-T{self.kd_temperature:g}"
            f"-b{self.batch_size}-base{self.base_tag()}"
            + (f"-test{self.test_samples}" if self.test_samples else "")
        )


QUICK = dict(
    base_steps=30, calibration_batches=2, bn_batches=2, finetune_batches=4, test_samples=200
)


# -- the worker: data, base models, one configuration ------------------------------------------


class FixedBatches:
    """Exactly ``count`` shuffled batches, the same ones in the same order on every iteration."""

    def __init__(self, dataset, batch_size: int, count: int, seed: int) -> None:
        self.dataset, self.batch_size, self.count, self.seed = dataset, batch_size, count, seed

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        import torch
        from torch.utils.data import DataLoader

        generator = torch.Generator().manual_seed(self.seed)
        loader = DataLoader(
            self.dataset, self.batch_size, shuffle=True, drop_last=True, generator=generator
        )
        done = 0
        while True:
            for batch in loader:
                if done == self.count:
                    return
                yield batch
                done += 1


def load_digits(model: str, split: str):
    """``mnist5k`` as the model needs it: 32 px, 3 channels, ImageNet normalisation for
    MobileNetV2; 28 px, 1 channel, MNIST normalisation for the DemoResNet."""
    import torchslim as ts

    if model == "mobilenet_v2":
        return ts.load_dataset("mnist5k", split, size=32, channels=3, normalize="imagenet")
    return ts.load_dataset("mnist5k", split, normalize=True)


def build(model: str, seed: int):
    """A fresh base model, untrained for the task (new layers seeded by ``seed``)."""
    import torch

    import torchslim as ts

    if model == "mobilenet_v2":
        return ts.load_model("pretrained:mobilenet_v2", num_classes=10, seed=seed)
    torch.manual_seed(seed)
    return ts.load_model("torchslim:demo_resnet")


def classifier(net):
    """The final linear layer (Torch-Pruning's ``ignored_layers``)."""
    import torch

    return [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]


def accuracy(net, dataset, limit: int | None) -> float:
    import torch

    inputs, targets = dataset.tensors
    if limit:  # a fixed random subset: the digits are stored class by class
        keep = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))[:limit]
        inputs, targets = inputs[keep], targets[keep]
    net.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(targets), 250):
            correct += int((net(inputs[i : i + 250]).argmax(1) == targets[i : i + 250]).sum())
    return correct / len(targets)


class Bench:
    """Worker-side state, kept across requests: datasets and base models."""

    def __init__(self, budget: Budget, cache: Path) -> None:
        self.budget, self.cache = budget, cache
        self.datasets: dict[str, tuple[Any, Any]] = {}
        self.bases: dict[tuple[str, int], tuple[Any, dict]] = {}

    def data(self, model: str) -> tuple[Any, Any]:
        if model not in self.datasets:
            self.datasets[model] = (load_digits(model, "train"), load_digits(model, "test"))
        return self.datasets[model]

    def example(self, model: str):
        return self.data(model)[0].tensors[0][:1].clone()

    def base(self, model: str, seed: int) -> tuple[Any, dict]:
        """The trained base model of ``seed`` (from the cache, or trained and cached)."""
        key = (model, seed)
        if key in self.bases:
            return self.bases[key]
        import torchslim as ts

        b = self.budget
        path = self.cache / f"{model}_seed{seed}_{b.base_tag()}"
        train, test = self.data(model)
        if ts.models.is_saved_model(path):
            net = ts.load(path).eval()
            info = json.loads((path / "torchslim.json").read_text())["metadata"]
            info["cached"] = True
        else:
            import torch

            net = build(model, seed)
            epochs, lr = BASE_TRAINING[model]["epochs"], BASE_TRAINING[model]["lr"]
            steps = epochs * (len(train) // b.batch_size)
            steps = min(steps, b.base_steps or steps)
            torch.manual_seed(seed)  # dropout
            start = time.perf_counter()
            ts.finetune(
                net,
                FixedBatches(train, b.batch_size, steps, seed),
                epochs=1,
                lr=lr,
                warmup_steps=min(20, steps - 1),
            )
            info = {
                "seconds": time.perf_counter() - start,
                "epochs": epochs,
                "lr": lr,
                "steps": steps,
                "acc": accuracy(net, test, b.test_samples),
            }
            ts.save(net.eval(), path, metadata=info, overwrite=True)
            info["cached"] = False
        ex = self.example(model)
        info["macs"] = ts.profile(net, ex, latency=False, memory=False).macs
        info["params"] = sum(p.numel() for p in net.parameters())
        self.bases[key] = (net, info)
        return net, info

    def run(self, model: str, target: float, seed: int, method: str, ranking: str) -> dict:
        """Prune a copy of the base model with ``method``; accuracy after each recovery stage."""
        import copy

        import torch

        import torchslim as ts

        b = self.budget
        base, info = self.base(model, seed)
        train, test = self.data(model)
        ex = self.example(model)
        fixed = list(
            FixedBatches(train, b.batch_size, max(b.calibration_batches, b.bn_batches), 1000 + seed)
        )
        calibration = fixed[: b.calibration_batches]
        net = copy.deepcopy(base).eval()
        tool, name = method.split(":")
        start = time.perf_counter()
        if tool == "ts":
            extra = prune_ours(net, ex, target, name, ranking, calibration, seed)
        else:
            net, extra = prune_theirs(net, ex, target, name, ranking, calibration)
        seconds_prune = time.perf_counter() - start
        row = {
            "macs_ratio": _count(net, ex) / info["macs"],
            "params_ratio": sum(p.numel() for p in net.parameters()) / info["params"],
            "acc_base": info["acc"],
            "acc_pruned": accuracy(net, test, b.test_samples),
            **extra,
        }
        row["macs_ok"] = abs(row["macs_ratio"] / target - 1) <= MACS_TOLERANCE
        t = time.perf_counter()
        ts.recalibrate_bn(net, fixed, batches=b.bn_batches)
        seconds_bn = time.perf_counter() - t
        row["acc_bn"] = accuracy(net, test, b.test_samples)
        torch.manual_seed(seed)  # dropout: the same random stream for every method
        t = time.perf_counter()
        ts.finetune(
            net,
            FixedBatches(train, b.batch_size, b.finetune_batches, 2000 + seed),
            teacher=base,
            epochs=1,
            lr=b.finetune_lr,
            kd_alpha=b.kd_alpha,
            kd_temperature=b.kd_temperature,
        )
        seconds_ft = time.perf_counter() - t
        row["acc_ft"] = accuracy(net, test, b.test_samples)
        row.update(
            seconds_prune=seconds_prune,
            seconds_bn=seconds_bn,
            seconds_ft=seconds_ft,
            seconds=time.perf_counter() - start,
        )
        return row


def prune_ours(net, ex, target: float, name: str, ranking: str, calibration, seed: int) -> dict:
    import torchslim as ts
    from torchslim.importance import RandomImportance

    importance = RandomImportance(seed=seed) if name == "random" else name
    data = {}
    if name in DATA_DRIVEN:
        data = dict(calibration=calibration, calibration_batches=len(calibration))
    ts.prune_(
        net,
        ex,
        target_macs=target,
        importance=importance,
        global_ranking=GLOBAL_RANKING[ranking],
        **data,
    )
    return {}


def prune_theirs(net, ex, target: float, name: str, ranking: str, calibration):
    """Torch-Pruning's MetaPruner, stepped by 1/400 of every group until the MACs target.

    Returns the pruned model (``net`` itself, or a copy stepped once less when that copy lands
    nearer the target: equal-width groups lose a channel in the same step, so on small networks
    one step can jump past the 2% band) and what the loop did."""
    import copy

    rewind = copy.deepcopy(net)
    base = _count(net, ex)
    goal = target * base
    steps, macs, counts = _tp_steps(net, ex, name, ranking, calibration, goal=goal)
    extra = {"tp_steps": steps, "tp_counts": counts, "tp_global": _tp_global(name, ranking)}
    if abs(macs / goal - 1) > MACS_TOLERANCE and steps > 1:
        _, fewer, _ = _tp_steps(rewind, ex, name, ranking, calibration, stop=steps - 1)
        if abs(fewer - goal) < abs(macs - goal):
            net, extra["tp_steps"] = rewind, steps - 1
    return net, extra


def _tp_global(name: str, ranking: str) -> bool:
    return ranking != "local" or name == "lamp"


def _count(net, ex) -> int:
    import torchslim as ts

    return ts.profile(net, ex, latency=False, memory=False).macs


def _tp_steps(net, ex, name, ranking, calibration, *, goal=None, stop=None):
    """Step Torch-Pruning's pruner until the MACs are at most ``goal`` (its benchmark's loop), or
    ``stop`` times. Returns (steps, MACs, how many times the MACs were counted)."""
    import torch.nn.functional as F
    import torch_pruning as tp

    importance = {
        "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
        "fpgm": lambda: tp.importance.FPGMImportance(p=2),
        "lamp": lambda: tp.importance.LAMPImportance(p=2),
    }[name]()
    pruner = tp.pruner.MetaPruner(
        net,
        ex,
        importance=importance,
        pruning_ratio=1.0,
        iterative_steps=TP_STEPS,
        global_pruning=_tp_global(name, ranking),
        ignored_layers=[classifier(net)],
    )
    if name == "taylor":  # gradients of the loss on the calibration batches, summed
        net.zero_grad(set_to_none=True)
        for inputs, labels in calibration:
            F.cross_entropy(net(inputs), labels).backward()
    limit = stop or TP_STEPS
    first = _count(net, ex)
    check, counts = 1 if stop is None else limit, 0
    for step in range(1, limit + 1):
        pruner.step()
        if step < check and step < limit:
            continue
        macs, counts = _count(net, ex), counts + 1
        if stop is not None or macs <= goal:
            break
        # when to count next: MACs fall ever more slowly, so the mean fall per step so far
        # underestimates the steps left; at most 16 steps (4% of every group) uncounted
        slope = (first - macs) / step
        ahead = (macs - goal) / slope if slope > 0 else 1
        check = step + min(16, max(1, int(0.8 * ahead)))
    net.zero_grad(set_to_none=True)
    return step, macs, counts


def serve(threads: int, mem_gb: float, budget: Budget, cache: Path) -> None:
    """Worker loop: one JSON request per stdin line, one JSON answer per stdout line. Everything
    else written to stdout (by Python or C code) goes to stderr."""
    import gc
    import logging
    import resource
    import traceback
    import warnings

    limit = int(mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import torch
    import torch_pruning  # noqa: F401

    import torchslim  # noqa: F401

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(threads)
    bench = Bench(budget, cache)

    def answer(result: dict) -> None:
        answers.write(json.dumps(result) + "\n")
        answers.flush()

    answer({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        print(f"[worker] {request}", file=sys.stderr, flush=True)
        try:
            if request["kind"] == "base":
                _, info = bench.base(request["model"], request["seed"])
                result = {"ok": True, **info}
            else:
                keys = ("model", "target", "seed", "method", "ranking")
                result = {"ok": True, **bench.run(*(request[k] for k in keys))}
        except Exception as e:  # noqa: BLE001 - any failure is a result
            traceback.print_exc()
            message = " ".join(str(e).split())
            if isinstance(e, MemoryError) or "can't allocate memory" in message:
                error = f"memory > {mem_gb:g} GB: {type(e).__name__}: {message}"
            else:
                error = f"{type(e).__name__}: {message}"
            result = {"ok": False, "error": error[:300]}
        answer(result)
        gc.collect()


# -- the parent: worker processes, the run, resumption --------------------------------------


class Worker:
    """Parent side of the worker subprocess."""

    def __init__(self, argv: list[str], threads: int) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.log = tempfile.TemporaryFile()  # the worker's stderr
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
        )
        self.buffer = b""
        self.ready = False

    def _tail(self, since: int, lines: int = 3) -> str:
        size = os.fstat(self.log.fileno()).st_size
        text = os.pread(self.log.fileno(), size - since, since).decode(errors="replace")
        tail = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
        return " | ".join(tail) or "?"

    def _read(self, timeout: float) -> tuple[dict | None, str]:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, f"timeout after {timeout:g} s"
            if select.select([fd], [], [], min(left, 1.0))[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return None, f"crash (exit code {self.proc.wait()})"
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line), ""

    def request(self, request: dict, timeout: float) -> tuple[dict, bool]:
        """(the answer, whether the worker is still usable)."""
        if not self.ready:
            answer, why = self._read(300)
            if answer is None:
                return {"ok": False, "error": f"{why} at worker start: {self._tail(0)}"}, False
            self.ready = True
        since = os.fstat(self.log.fileno()).st_size
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            why = f"crash (exit code {self.proc.wait()})"
            return {"ok": False, "error": f"{why}: {self._tail(since)}"[:300]}, False
        answer, why = self._read(timeout)
        if answer is None:
            return {"ok": False, "error": f"{why}: {self._tail(since)}"[:300]}, False
        return answer, not answer.get("error", "").startswith("memory")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


def config_key(row: dict) -> tuple:
    return tuple(
        row.get(k) for k in ("kind", "budget", "ranking", "model", "target", "seed", "method")
    )


def read_rows(path: str | None) -> list[dict]:
    if not path or not Path(path).exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def run(args: argparse.Namespace, budget: Budget, worker_argv: list[str]) -> None:
    done = {config_key(r): r for r in read_rows(args.out)}
    stamp = {"budget": budget.tag(), "commit": commit(), "threads": args.threads}
    stamp["base_budget"] = budget.base_tag()
    worker: Worker | None = None
    restarts = 0

    def ask(request: dict, timeout: float) -> dict:
        nonlocal worker, restarts
        if worker is None:
            worker = Worker(worker_argv, args.threads)
        answer, alive = worker.request(request, timeout)
        if not alive:
            worker.close()
            worker, restarts = None, restarts + 1
        return answer

    def record(row: dict) -> None:
        print(json.dumps(row), flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    def skip(row: dict) -> bool:
        old = done.get(config_key(row))
        return old is not None and (old.get("ok") or not args.retry_failed)

    try:
        for seed, model in itertools.product(args.seeds, args.models):
            base = {"kind": "base", "model": model, "seed": seed, **stamp}
            base.update(budget=stamp["base_budget"], ranking=None, target=None, method=None)
            pending = []
            for target, method in itertools.product(args.targets, args.methods):
                row = {"kind": "run", "model": model, "seed": seed, "target": target}
                row.update(method=method, ranking=args.ranking, **stamp)
                if not skip(row):
                    pending.append(row)
            if not pending and skip(base):
                continue
            answer = ask(base, max(args.timeout, 1800))  # trains it, or loads it from the cache
            if not skip(base) or not answer.get("cached", True):
                record({**base, **answer})
            if not answer["ok"]:
                continue
            for row in pending:
                record({**row, **ask(row, args.timeout)})
    finally:
        if worker is not None:
            worker.close()
    print(f"worker restarts: {restarts}", file=sys.stderr)


# -- the report -------------------------------------------------------------------------------


def mean_std(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    if not values:
        return "-"
    m = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def best(rows_by_method: dict[str, list[dict]], tool: str, field: str) -> tuple[str, list[float]]:
    scored = [
        (statistics.fmean(r[field] for r in rows), m)
        for m, rows in rows_by_method.items()
        if m.startswith(tool) and rows
    ]
    if not scored:
        return "", []
    _, method = max(scored)
    return method, [r[field] for r in rows_by_method[method]]


def report(rows: list[dict]) -> str:
    out: list[str] = []
    bases = defaultdict(list)
    for r in rows:
        if r.get("kind") == "base" and r.get("ok"):
            bases[(r["budget"], r["model"])].append(r)
    runs = defaultdict(lambda: defaultdict(list))
    failed = defaultdict(list)
    for r in rows:
        if r.get("kind") != "run":
            continue
        key = (r["budget"], r["ranking"], r["model"], r["target"])
        (runs[key][r["method"]] if r.get("ok") else failed[key]).append(r)
    for key in sorted(set(runs) | set(failed), key=str):
        budget, ranking, model, target = key
        by_method = runs[key]
        sample = next((r for rs in by_method.values() for r in rs), None) or failed[key][0]
        seeds = sorted({r["seed"] for rs in by_method.values() for r in rs})
        base_acc = {r["seed"]: r["acc"] for r in bases[(sample.get("base_budget"), model)]}
        base_acc = [acc for seed, acc in base_acc.items() if seed in seeds]
        out.append(
            f"### {model}, MACs × {target:g} ({1 / target:g}× fewer), ranking {ranking}\n\n"
            f"budget `{budget}`, seeds {seeds}, commit {sample.get('commit')}, "
            f"{sample.get('threads')} threads; base model accuracy {mean_std(base_acc)}%\n"
        )
        out.append(
            "| method | after pruning | after BN recal. | after KD fine-tune | MACs ratio "
            "| params ratio | time / config (prune) |"
        )
        out.append("|---|---|---|---|---|---|---|")
        for method in METHODS:
            rs = by_method.get(method)
            if not rs:
                continue
            low, high = (f"{f([r['macs_ratio'] for r in rs]):.3f}" for f in (min, max))
            macs = low if low == high else f"{low}–{high}"
            macs += "" if all(r["macs_ok"] for r in rs) else " (off target)"
            seconds = statistics.fmean(r["seconds"] for r in rs)
            prune = statistics.fmean(r["seconds_prune"] for r in rs)
            n = "" if len(rs) == len(seeds) else f" (n={len(rs)})"
            out.append(
                f"| {method}{n} | {mean_std([r['acc_pruned'] for r in rs])} "
                f"| {mean_std([r['acc_bn'] for r in rs])} | {mean_std([r['acc_ft'] for r in rs])} "
                f"| {macs} "
                f"| {statistics.fmean(r['params_ratio'] for r in rs):.3f} "
                f"| {seconds:.1f} s ({prune:.1f} s) |"
            )
        out.append("")
        for field, label in (
            ("acc_ft", "after KD fine-tune"),
            ("acc_bn", "without fine-tuning (after BN recal.)"),
            ("acc_pruned", "right after pruning"),
        ):
            ours, a = best(by_method, "ts:", field)
            theirs, b = best(by_method, "tp:", field)
            if ours and theirs:
                diff = 100 * (statistics.fmean(a) - statistics.fmean(b))
                goal = ""
                if field == "acc_ft":
                    goal = " (goal +0.5: " + ("met)" if diff >= 0.5 else "not met)")
                out.append(
                    f"- best {label}: torchslim {ours} {mean_std(a)} vs Torch-Pruning "
                    f"{theirs} {mean_std(b)}: **{diff:+.2f} points**{goal}"
                )
        for r in failed[key]:
            out.append(f"- failed: {r['method']} seed {r['seed']}: {r.get('error')}")
        out.append("")
    out += across_rankings(runs)
    total = [r for r in rows if r.get("kind") == "run" and r.get("ok")]
    if total:
        seconds = sum(r["seconds"] for r in total)
        train = sum(r.get("seconds", 0) for r in rows if r.get("kind") == "base" and r.get("ok"))
        out.append(
            f"{len(total)} configurations, {seconds / 60:.1f} min in all "
            f"(mean {seconds / len(total):.1f} s); base-model training {train / 60:.1f} min"
        )
    return "\n".join(out)


def across_rankings(runs: dict) -> list[str]:
    """Each tool's best method in any ranking mode, per model and target (methods with every
    seed of the setting only): the summary the issue's goal is judged on."""
    settings = defaultdict(dict)  # (budget, model, target) -> {"method @ ranking": rows}
    rankings = defaultdict(set)
    for (budget, ranking, model, target), by_method in runs.items():
        rankings[(budget, model, target)].add(ranking)
        for method, rs in by_method.items():
            settings[(budget, model, target)][f"{method} @ {ranking}"] = rs
    if not any(len(modes) > 1 for modes in rankings.values()):
        return []
    out = [
        "### Across ranking modes: each tool's best\n",
        "| model, MACs | seeds | after KD: torchslim | after KD: Torch-Pruning | difference "
        "| after BN recal.: torchslim | after BN recal.: Torch-Pruning | difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (_, model, target), by_method in sorted(settings.items(), key=str):
        seeds = max(len(rs) for rs in by_method.values())
        full = {m: rs for m, rs in by_method.items() if len(rs) == seeds}
        cells = []
        for field in ("acc_ft", "acc_bn"):
            ours, a = best(full, "ts:", field)
            theirs, b = best(full, "tp:", field)
            if not (ours and theirs):
                cells += ["", "", ""]
                continue
            diff = 100 * (statistics.fmean(a) - statistics.fmean(b))
            cells += [f"{ours} {mean_std(a)}", f"{theirs} {mean_std(b)}", f"**{diff:+.2f}**"]
        out.append(f"| {model} × {target:g} | {seeds} | " + " | ".join(cells) + " |")
    out.append("")
    return out


# -- command line ----------------------------------------------------------------------------


def methods_from(names: list[str]) -> list[str]:
    chosen: list[str] = []
    for name in names:
        if name in ("ts", "tp"):
            chosen += [m for m in METHODS if m.startswith(name + ":")]
        elif name in METHODS:
            chosen.append(name)
        elif f"ts:{name}" in METHODS:
            chosen.append(f"ts:{name}")
        else:
            raise SystemExit(f"unknown method {name!r}; known: ts, tp, {', '.join(METHODS)}")
    return list(dict.fromkeys(chosen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report", action="store_true", help="print the tables of --out")
    parser.add_argument("--out", default="runs/criteria.jsonl", help="JSON lines, appended")
    parser.add_argument("--cache", default="runs/criteria-cache", help="trained base models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mem-gb", type=float, default=8, help="address-space cap of the worker")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per configuration")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--targets", nargs="+", type=float, default=list(TARGETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument(
        "--methods", nargs="+", default=["ts", "tp"], help="ts:NAME, tp:NAME, or ts / tp for all"
    )
    parser.add_argument("--ranking", choices=RANKINGS, default="local")
    parser.add_argument("--finetune-batches", type=int, default=None, help="KD fine-tune steps")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test")
    parser.add_argument("--retry-failed", action="store_true")
    parser.add_argument("--budget", default=None, help=argparse.SUPPRESS)  # the worker's, as JSON
    args = parser.parse_args()
    if args.report:
        print(report(read_rows(args.out)))
        return
    if args.budget is not None:
        budget = Budget(**json.loads(args.budget))
    else:
        budget = Budget(**(QUICK if args.quick else {}))
        if args.finetune_batches is not None:
            budget = dataclasses.replace(budget, finetune_batches=args.finetune_batches)
    if args.worker:
        serve(args.threads, args.mem_gb, budget, Path(args.cache))
        return
    args.methods = methods_from(args.methods)
    worker_argv = ["--threads", str(args.threads), "--mem-gb", str(args.mem_gb)]
    worker_argv += ["--cache", args.cache, "--budget", json.dumps(dataclasses.asdict(budget))]
    run(args, budget, worker_argv)
    print(
        report(
            [r for r in read_rows(args.out) if r.get("budget") in (budget.tag(), budget.base_tag())]
        )
    )


if __name__ == "__main__":
    main()
