"""Compression methods at equal measured latency: pruning, decomposition, INT8, pruning + INT8.

The base models and their cache are those of ``benchmarks/criteria.py`` (imported from it): per
seed, ImageNet MobileNetV2 transfer-trained on ``mnist5k`` at 32 px (``mobilenet_v2``) and
``DemoResNet`` trained from scratch at 28 px (``demo_resnet``), saved with ``ts.save`` in
``--cache`` (by default criteria's own cache, so a criteria run's base models are reused).

Each base model is exported to ONNX (``ts.export_onnx``, dynamic batch, verified against eager)
and timed in ONNX Runtime on the CPU at batch 1 with ``--threads`` intra-op threads. Targets are
fractions of that measured latency (0.5 and 0.3 by default). Methods:

- ``prune``: ``ts.prune_(target_macs=m, importance=criterion)``, local ranking, the criterion given
  by ``--criterion`` or, by default, the torchslim criterion with the best mean accuracy after the
  KD fine-tune in the criteria results (``--criteria-out``; ``energy`` when there are none), ``m``
  searched so that the measured latency lands within ``tolerance`` of the target;
- ``decompose``: ``ts.decompose_`` (SVD for linear and 1x1 layers, Tucker-2 for k x k ones), a
  uniform rank ratio ``r`` searched the same way; grouped (depthwise) convolutions cannot be
  decomposed;
- ``int8``: the base model's ONNX file quantized (static, QDQ, per-channel INT8 weights,
  ``calibration_batches`` training batches, min-max, UINT8 activations: the combination ONNX
  Runtime's x86 integer kernels fuse) by ``ts.quantize_onnx``. INT8 has no knob, so its row reports
  where it lands (one row per model and seed, shown under every target);
- ``prune+int8``: pruned to the amount whose INT8 file lands near the target (the search
  quantizes every candidate with one calibration batch: the scales do not change the kernels
  that run, so neither the latency), KD fine-tuned in FP32, then quantized like ``int8``.

Widths matter as much as MACs: ONNX Runtime's CPU convolutions work on blocks of channels (16
with AVX-512, 8 with AVX2; NCHWc), and a layer whose channel count is not a multiple falls back to
slower kernels. Measured on MobileNetV2 here (AVX-512, one thread), pruning to half the MACs with
free widths made the model 2.8x *slower*; with widths multiples of 16, 0.57x. So both structural
methods keep widths multiples of ``round_to``, trying ``--round-to`` values in turn (default: the
CPU's block, half of it, 1): pruning passes ``round_to`` to ``ts.prune_``; decomposition, with
``round_to > 1``, decomposes one layer at a time with an absolute rank, the ratio ``r`` of the
layer's full rank rounded up to a multiple (``ts.decompose_`` has no rounding option). The first
multiple that reaches the target is kept, else the candidate nearest the target over all of them.

The search (:func:`search`) works on ``u = log(amount)``: a larger ``u`` compresses less, and
the uncompressed model sits at the top of the range with latency ratio 1 (for ``prune+int8``:
the measured INT8 ratio). It probes a first guess (the target itself as the amount, divided by
the INT8 ratio for ``prune+int8``), then interpolates ``log(latency ratio)`` linearly in ``u``
between the nearest probes on either side of the target (safeguarded regula falsi), or
extrapolates while every probe is too slow, clamped to the range (pruning: down to the fewest
MACs the widths allow, at least 0.05; decomposition: rank ratio 0.02); it stops within
``tolerance`` or after ``search_steps`` probes. Every probe builds the candidate from a fresh
copy of the base model, exports it and measures it. The probe nearest the target is kept; when
even the most compressed end stays too slow the row says ``reached: false`` and the report prints
where the method lands.

Pruned and decomposed models then get the same recovery: batch-norm recalibration
(``bn_batches``), and a knowledge-distillation fine-tune from the base model (``ts.finetune``,
``finetune_batches`` AdamW steps, cosine schedule, the same batches in the same order for every
method of a seed). INT8 alone gets no training (post-training quantization).

Measurements of the final (deployed) file: top-1 accuracy on the 1,000 held-out digits in ONNX
Runtime; MACs of the PyTorch model (INT8 keeps its FP32 model's MACs); size of the ONNX file on
disk; latency relative to the base file. Latency is always a ratio measured in the same process
against the base model's session: after a warm-up of both sessions, rounds alternate the two (the
order flips every round), each block warms up a few untimed runs (so the other session's spinning
threads settle) and then times ``runs_per_round`` single runs; the ratio is the median over rounds
of the per-round ratio of medians, so slow drift of a noisy machine cancels. The base model is
also timed against a second session of itself: that self-ratio shows the noise floor.

Each configuration runs in a long-lived worker subprocess (criteria's protocol: threads pinned,
an address-space cap ``--mem-gb``, a timeout per configuration; a worker that times out, crashes
or runs out of memory is replaced). Results are appended as JSON lines to ``--out``; a rerun skips
the configurations already there (failures too, unless ``--retry-failed``). ``--report`` prints
the Markdown tables.

    python benchmarks/methods.py --threads 2 --out runs/methods.jsonl
    python benchmarks/methods.py --report --out runs/methods.jsonl
    python benchmarks/methods.py --quick --seeds 0 --out /tmp/methods-smoke.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import criteria  # benchmarks/criteria.py: base models, cache, worker protocol, helpers

MODELS = criteria.MODELS
TARGETS = (0.5, 0.3)
SEEDS = (0, 1, 2)
METHODS = ("prune", "decompose", "int8", "prune+int8")
PRUNING = {"prune", "prune+int8"}
DEFAULT_CRITERION = "energy"  # when no criteria results are available

#: Search ranges of the knobs, as (most compressed, uncompressed) amounts.
KNOBS = {"target_macs": (0.05, 1.0), "rank": (0.02, 1.0)}


@dataclass(frozen=True)
class Budget:
    """Every budget and setting of a run, the same for every method; ``--quick`` shrinks them."""

    batch_size: int = 64
    base_steps: int | None = None  # cap on base-model training steps (criteria's setting)
    test_samples: int | None = None  # None: the whole test split (1,000 digits)
    calibration_batches: int = 8  # data-driven criteria and INT8 calibration
    bn_batches: int = 16  # ts.recalibrate_bn before the fine-tune
    finetune_batches: int = 400  # KD fine-tune: AdamW steps (6.4 epochs), cosine schedule to 0
    finetune_lr: float = 1e-3
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    tolerance: float = 0.10  # the latency ratio must land within 10% of the target
    search_steps: int = 6  # probes per search, at most
    search_rounds: int = 10  # latency rounds per probe
    final_rounds: int = 30  # latency rounds for the deployed file
    runs_per_round: int = 20  # timed runs per session and round
    round_to: str = "auto"  # channel and rank multiples tried in turn ("16,8,1"); auto: the CPU's
    int8_calibrate: str = "minmax"
    int8_activations: str = "uint8"  # ts.quantize_onnx(activations=...): uint8 or int8

    def base_budget(self) -> criteria.Budget:
        """criteria's budget for the base models (the cache key only depends on these)."""
        return criteria.Budget(
            batch_size=self.batch_size, base_steps=self.base_steps, test_samples=self.test_samples
        )

    def tag(self) -> str:
        """Names these settings; the report keeps rows of other settings apart."""
        return (
            f"ft{self.finetune_batches}-lr{self.finetune_lr:g}-kd{self.kd_alpha:g}"
            f"-T{self.kd_temperature:g}-cal{self.calibration_batches}-bn{self.bn_batches}"
            f"-b{self.batch_size}-tol{self.tolerance:g}-s{self.search_steps}"
            f"-lat{self.search_rounds}/{self.final_rounds}x{self.runs_per_round}"
            f"-round{self.round_to.replace(',', '.')}-{self.int8_calibrate}-{self.int8_activations}"
            f"-base{self.base_budget().base_tag()}"
            + (f"-test{self.test_samples}" if self.test_samples else "")
        )


QUICK = dict(
    base_steps=30,
    test_samples=200,
    calibration_batches=2,
    bn_batches=2,
    finetune_batches=4,
    search_steps=3,
    search_rounds=3,
    final_rounds=5,
    runs_per_round=10,
)


# -- measurement: ONNX Runtime sessions, latency ratios, accuracy ------------------------------


def ort_session(path: str | Path, threads: int) -> Any:
    """A CPU session as ``ts.profile(backend="onnxruntime")`` makes them: every graph
    optimisation, ``threads`` intra-op threads, one inter-op thread, sequential execution."""
    from torchslim.export._verify import ort_session as session

    return session(path, threads=threads)


def compare(base: Any, other: Any, example: Any, rounds: int, runs: int, warmup: int = 3) -> dict:
    """Latency of session ``other`` relative to session ``base`` on one example batch.

    Both warm up, then ``rounds`` rounds alternate them (the order flips every round); each block
    runs ``warmup`` untimed runs (for at least ONNX Runtime's ``settle_ms``), then times ``runs``
    runs one by one. The ratio is the median over rounds of the per-round ratio of medians;
    ``ratio_iqr`` its spread over rounds."""
    from torchslim.export import OnnxRuntimeBackend
    from torchslim.profiling import warm_up

    sessions = (base, other)
    feeds = [{s.get_inputs()[0].name: example} for s in sessions]
    samples: list[list[float]] = [[], []]
    ratios = []
    collecting = gc.isenabled()
    gc.disable()
    try:
        for s, feed in zip(sessions, feeds, strict=True):
            for _ in range(10):
                s.run(None, feed)
        for r in range(rounds):
            medians = [0.0, 0.0]
            for i in (0, 1) if r % 2 == 0 else (1, 0):
                s, feed = sessions[i], feeds[i]
                # untimed until the other session's spinning threads are idle
                warm_up(
                    lambda s=s, feed=feed: s.run(None, feed), warmup, OnnxRuntimeBackend.settle_ms
                )
                times = []
                for _ in range(runs):
                    start = time.perf_counter()
                    s.run(None, feed)
                    times.append(time.perf_counter() - start)
                samples[i] += times
                medians[i] = statistics.median(times)
            ratios.append(medians[1] / medians[0])
    finally:
        if collecting:
            gc.enable()
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "ratio": statistics.median(ratios),
        "ratio_iqr": quartiles[2] - quartiles[0],
        "base_ms": 1e3 * statistics.median(samples[0]),
        "ms": 1e3 * statistics.median(samples[1]),
        "runs": rounds * runs,
    }


def test_arrays(dataset: Any, limit: int | None) -> tuple[Any, Any]:
    """The test digits as NumPy arrays: all, or criteria's fixed random subset of ``limit``."""
    import torch

    inputs, targets = dataset.tensors
    if limit:  # the same subset as criteria.accuracy
        keep = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))[:limit]
        inputs, targets = inputs[keep], targets[keep]
    return inputs.numpy(), targets.numpy()


def ort_accuracy(session: Any, arrays: tuple[Any, Any]) -> float:
    inputs, targets = arrays
    name = session.get_inputs()[0].name
    correct = 0
    for i in range(0, len(targets), 250):
        logits = session.run(None, {name: inputs[i : i + 250]})[0]
        correct += int((logits.argmax(1) == targets[i : i + 250]).sum())
    return correct / len(targets)


# -- the search --------------------------------------------------------------------------------


def search(
    probe: Callable[[float], float],
    target: float,
    lo: float,
    hi: float,
    start: float,
    *,
    anchor: float = 1.0,
    steps: int = 6,
    tolerance: float = 0.1,
) -> tuple[float, list[tuple[float, float]], bool]:
    """Find the knob ``u`` in ``[lo, hi]`` whose measured latency ratio ``probe(u)`` lands within
    ``tolerance`` of ``target``. A larger ``u`` compresses less; ``hi`` is the uncompressed model,
    whose ratio ``anchor`` is taken as known (not probed unless it is already near or below the
    target). Returns (the probe nearest the target, every probe as (u, ratio), whether it is
    within tolerance)."""
    goal = math.log(target)
    known = {hi: math.log(anchor)}  # u -> log ratio
    probes: list[tuple[float, float]] = []
    u = hi if anchor <= target * (1 + tolerance) else min(max(start, lo), hi)
    for _ in range(steps):
        ratio = probe(u)
        probes.append((u, ratio))
        known[u] = math.log(ratio)
        if abs(ratio / target - 1) <= tolerance:
            break
        slow = sorted(p for p in known.items() if p[1] > goal)  # too slow: compress more
        if not slow:  # even the least compressed candidate is fast enough
            break
        a = slow[0]  # the most compressed candidate that is still too slow
        if a[0] <= lo:  # the end of the range: unreachable
            break
        fast = [p for p in known.items() if p[1] <= goal and p[0] < a[0]]
        if fast:  # interpolate between the nearest probes on either side, kept inside
            b = max(fast)
            width = a[0] - b[0]
            step = (goal - b[1]) * width / (a[1] - b[1])
            u = b[0] + min(max(step, 0.15 * width), 0.85 * width)
        else:  # extrapolate from a and the next slower point
            c = slow[1] if len(slow) > 1 else None
            slope = (c[1] - a[1]) / (c[0] - a[0]) if c else 0.0
            u = a[0] - (a[1] - goal) / slope if slope > 0 else (a[0] + lo) / 2
            u = max(lo, min(u, a[0] - 0.05 * (hi - lo)))
        if any(abs(u - p) < 1e-6 for p, _ in probes):
            break
    best = min(probes, key=lambda p: abs(math.log(p[1]) - goal))
    return best[0], probes, abs(best[1] / target - 1) <= tolerance


def cpu_block() -> int:
    """The channel block of ONNX Runtime's NCHWc convolutions on this CPU (16 with AVX-512, else
    8): convolutions whose channel counts are not multiples of it fall back to slower kernels."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 8
    return 16 if " avx512f" in flags else 8


def prune(net: Any, ex: Any, amount: float, criterion: str, round_to: int, calibration, seed: int):
    """criteria's ``prune_ours`` (local ranking), with channel counts kept multiples of
    ``round_to``."""
    import torchslim as ts
    from torchslim.importance import RandomImportance

    importance = RandomImportance(seed=seed) if criterion == "random" else criterion
    data = {}
    if criterion in criteria.DATA_DRIVEN:
        data = dict(calibration=calibration, calibration_batches=len(calibration))
    ts.prune_(net, ex, target_macs=amount, importance=importance, round_to=round_to or None, **data)


def decompose(net: Any, amount: float, round_to: int) -> None:
    """``ts.decompose_(net, rank=amount)``; with ``round_to > 1``, one layer at a time with an
    absolute rank: ``amount`` of its output channels (its full rank for 1x1 and linear layers,
    the output mode for Tucker-2) rounded up to a multiple of ``round_to`` (the input mode of
    Tucker-2 takes the same rank, at most its own channels)."""
    import torch

    import torchslim as ts

    if round_to <= 1:
        ts.decompose_(net, rank=float(amount))
        return
    layers = [
        (name, m)
        for name, m in net.named_modules()
        if name and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    ]
    for name, m in layers:
        out = m.out_features if isinstance(m, torch.nn.Linear) else m.out_channels
        full = min(out, m.weight[0].numel())
        rank = min(full, round_to * math.ceil(amount * full / round_to))
        ts.decompose_(net, rank=rank, layers=[name])  # skips what would not save MACs


# -- the worker: base models deployed, one configuration ---------------------------------------


class Bench(criteria.Bench):
    """Worker-side state, kept across requests: criteria's data and base models, plus each base
    model's ONNX file, session and measurements."""

    def __init__(self, budget: Budget, cache: Path, threads: int, folder: Path) -> None:
        super().__init__(budget.base_budget(), cache)
        self.settings, self.threads, self.folder = budget, threads, folder
        self.deployed: dict[tuple[str, int], dict] = {}
        self.int8_ratio: dict[tuple[str, int], float] = {}
        self.batches: dict[tuple[str, int], list] = {}

    def fixed(self, model: str, seed: int) -> list:
        """criteria's calibration / recalibration batches of ``seed`` (the same batches)."""
        if (model, seed) not in self.batches:
            s = self.settings
            count = max(s.calibration_batches, s.bn_batches)
            batches = criteria.FixedBatches(self.data(model)[0], s.batch_size, count, 1000 + seed)
            self.batches[(model, seed)] = list(batches)
        return self.batches[(model, seed)]

    def export(self, net: Any, model: str, name: str, verify: bool = False) -> Path:
        import torchslim as ts

        path = self.folder / f"{name}.onnx"
        ts.export_onnx(net.eval(), self.example(model), path, verify=verify)
        return path

    def quantize(self, path: Path, model: str, seed: int, batches: int) -> Path:
        """The INT8 file of ``path``: static, QDQ, per-channel INT8 weights, calibrated on the
        first ``batches`` fixed batches, by ``ts.quantize_onnx`` with ``int8_activations``
        (``uint8`` by default: the combination ONNX Runtime's x86 kernels fuse)."""
        s = self.settings
        out = path.with_name(path.stem + "-int8.onnx")
        calibration = self.fixed(model, seed)[:batches]
        import torchslim as ts

        ts.quantize_onnx(
            path,
            calibration,
            out,
            calibrate=s.int8_calibrate,
            batches=batches,
            per_channel=True,
            activations=s.int8_activations,
            measure_latency=False,
            threads=self.threads,
        )
        return out

    def measure(self, path: Path, model: str, seed: int, rounds: int) -> dict:
        """Latency of the file ``path`` relative to the base model's, in this process."""
        base = self.deploy(model, seed)
        session = ort_session(path, self.threads)
        return compare(
            base["session"], session, base["example"], rounds, self.settings.runs_per_round
        )

    def deploy(self, model: str, seed: int) -> dict:
        """The base model's ONNX file, session, accuracy, size, MACs and latency self-check."""
        key = (model, seed)
        if key in self.deployed:
            return self.deployed[key]
        import torchslim as ts

        s = self.settings
        net, trained = self.base(model, seed)
        path = self.folder / f"{model}-seed{seed}-base.onnx"
        ts.export_onnx(net.eval(), self.example(model), path)
        session = ort_session(path, self.threads)
        example = self.example(model).numpy()
        test = test_arrays(self.data(model)[1], s.test_samples)
        itself = compare(
            session, ort_session(path, self.threads), example, s.final_rounds, s.runs_per_round
        )
        info = {
            "acc_torch": trained["acc"],
            "acc": ort_accuracy(session, test),
            "macs": trained["macs"],
            "params": trained["params"],
            "size_mb": path.stat().st_size / 1e6,
            "latency_ms": itself["base_ms"],
            "self_ratio": itself["ratio"],
            "self_ratio_iqr": itself["ratio_iqr"],
            "cached": trained["cached"],
            "train_seconds": trained.get("seconds"),
        }
        self.deployed[key] = {"session": session, "example": example, "path": path, "info": info}
        return self.deployed[key]

    def final(self, net: Any, path: Path, model: str, seed: int) -> dict:
        """What the report shows of a deployed file: accuracy, MACs, size, latency ratio."""
        import torchslim as ts

        base = self.deploy(model, seed)["info"]
        test = test_arrays(self.data(model)[1], self.settings.test_samples)
        row = {
            "acc": ort_accuracy(ort_session(path, self.threads), test),
            "macs_ratio": ts.profile(net, self.example(model), latency=False, memory=False).macs
            / base["macs"],
            "params_ratio": sum(p.numel() for p in net.parameters()) / base["params"],
            "size_mb": path.stat().st_size / 1e6,
            "acc_base": base["acc"],
        }
        latency = self.measure(path, model, seed, self.settings.final_rounds)
        row.update(
            latency_ratio=latency["ratio"],
            latency_ratio_iqr=latency["ratio_iqr"],
            latency_ms=latency["ms"],
            base_latency_ms=latency["base_ms"],
        )
        return row

    def recover(self, net: Any, model: str, seed: int) -> dict:
        """BN recalibration and the KD fine-tune from the base model, in place."""
        import torch

        import torchslim as ts

        s = self.settings
        base, _ = self.base(model, seed)
        train, test = self.data(model)
        start = time.perf_counter()
        ts.recalibrate_bn(net, self.fixed(model, seed), batches=s.bn_batches)
        acc_before = criteria.accuracy(net, test, s.test_samples)
        torch.manual_seed(seed)  # dropout: the same random stream for every method
        ts.finetune(
            net,
            criteria.FixedBatches(train, s.batch_size, s.finetune_batches, 2000 + seed),
            teacher=base,
            epochs=1,
            lr=s.finetune_lr,
            kd_alpha=s.kd_alpha,
            kd_temperature=s.kd_temperature,
        )
        net.eval()
        return {"acc_before_ft": acc_before, "seconds_ft": time.perf_counter() - start}

    def compressor(
        self, method: str, model: str, seed: int, criterion: str | None, round_to: int
    ) -> tuple[str, float, Callable[[float], Any]]:
        """(knob name, its most compressed amount, amount -> a compressed copy of the base
        model), widths kept multiples of ``round_to``."""
        import copy

        import torchslim as ts

        base, info = self.base(model, seed)
        ex = self.example(model)
        name = "target_macs" if method in PRUNING else "rank"
        lo, hi = KNOBS[name]
        if name == "rank":

            def decomposed(amount: float) -> Any:
                net = copy.deepcopy(base).eval()
                if amount < hi:
                    decompose(net, amount, round_to)
                return net

            return name, lo, decomposed
        calibration = self.fixed(model, seed)[: self.settings.calibration_batches]
        if round_to > 1:  # the fewest MACs these widths allow: every group at round_to channels
            net = copy.deepcopy(base).eval()
            ts.prune_(net, ex, ratio=0.99, importance="l1", round_to=round_to)
            lo = max(lo, ts.profile(net, ex, latency=False, memory=False).macs / info["macs"])

        def pruned(amount: float) -> Any:
            net = copy.deepcopy(base).eval()
            if amount < hi:
                prune(net, ex, amount, criterion, round_to, calibration, seed)
            return net

        return name, lo, pruned

    def anchor(self, model: str, seed: int) -> float:
        """The base model's INT8 latency ratio (from the ``int8`` run, or measured here)."""
        key = (model, seed)
        if key not in self.int8_ratio:
            path = self.deploy(model, seed)["path"]
            quantized = self.quantize(path, model, seed, 1)
            self.int8_ratio[key] = self.measure(
                quantized, model, seed, self.settings.search_rounds
            )["ratio"]
        return self.int8_ratio[key]

    def configuration(
        self, model: str, target: float | None, seed: int, method: str, criterion: str | None
    ) -> dict:
        """One row: ``method`` on the base model of ``seed`` at ``target`` (None for INT8)."""
        start = time.perf_counter()
        self.deploy(model, seed)
        if method == "int8":
            row = self.run_int8(model, seed)
        else:
            row = self.run_searched(model, target, seed, method, criterion)
        row["seconds"] = time.perf_counter() - start
        return row

    def run_int8(self, model: str, seed: int) -> dict:
        s = self.settings
        net, _ = self.base(model, seed)
        d = self.deploy(model, seed)
        quantized = self.quantize(d["path"], model, seed, s.calibration_batches)
        row = self.final(net, quantized, model, seed)
        self.int8_ratio[(model, seed)] = row["latency_ratio"]
        return row

    def run_searched(self, model: str, target: float, seed: int, method: str, criterion) -> dict:
        """Search the amount that lands on ``target``, recover, deploy and measure.

        Widths are kept multiples of each ``round_to`` in turn, coarsest first; the first that
        reaches the target is kept, else the candidate nearest it over all of them."""
        s = self.settings
        int8 = method == "prune+int8"
        anchor = self.anchor(model, seed) if int8 else 1.0
        searches, best = [], None
        t = time.perf_counter()
        for round_to in (int(r) for r in s.round_to.split(",")):
            name, lo, make = self.compressor(method, model, seed, criterion, round_to)
            hi = KNOBS[name][1]
            if lo >= 0.98 * hi:
                searches.append(
                    {"round_to": round_to, "skipped": f"{name} cannot go below {lo:.3f}"}
                )
                continue
            candidates: dict[float, Any] = {}

            def probe(u: float, make=make, candidates=candidates) -> float:
                net = make(math.exp(u))
                path = self.export(net, model, f"probe{len(candidates)}")
                if int8:
                    path = self.quantize(path, model, seed, 1)
                candidates[u] = net
                return self.measure(path, model, seed, s.search_rounds)["ratio"]

            start = min(hi, max(lo, target / anchor))
            u, probes, reached = search(
                probe,
                target,
                math.log(lo),
                math.log(hi),
                math.log(start),
                anchor=anchor,
                steps=s.search_steps,
                tolerance=s.tolerance,
            )
            ratio = dict(probes)[u]
            searches.append(
                {
                    "round_to": round_to,
                    "lo": lo,
                    "probes": [[math.exp(p), r] for p, r in probes],
                    "reached": reached,
                }
            )
            if best is None or abs(math.log(ratio / target)) < abs(math.log(best[2] / target)):
                best = (round_to, math.exp(u), ratio, reached, candidates[u], name)
            if reached:
                break
        if best is None:
            raise RuntimeError(f"{method} cannot compress {model}: {searches}")
        round_to, amount, ratio, reached, net, name = best
        row = {
            "knob": name,
            "amount": amount,
            "round_to": round_to,
            "searches": searches,
            "probes": sum(len(x.get("probes", [])) for x in searches),
            "search_ratio": ratio,
            "reached": reached,
            "seconds_search": time.perf_counter() - t,
        }
        if int8:
            row["int8_anchor"] = anchor
        row.update(self.recover(net, model, seed))
        path = self.export(net, model, "final", verify=True)
        if int8:
            test = test_arrays(self.data(model)[1], s.test_samples)
            row["acc_fp32"] = ort_accuracy(ort_session(path, self.threads), test)
            path = self.quantize(path, model, seed, s.calibration_batches)
        row.update(self.final(net, path, model, seed))
        return row


def serve(threads: int, mem_gb: float, budget: Budget, cache: Path) -> None:
    """Worker loop: one JSON request per stdin line, one JSON answer per stdout line. Everything
    else written to stdout (by Python or C code) goes to stderr."""
    import logging
    import resource
    import traceback
    import warnings

    limit = int(mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import onnxruntime  # noqa: F401
    import torch

    import torchslim  # noqa: F401

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="methods-") as folder:
        bench = Bench(budget, cache, threads, Path(folder))

        def answer(result: dict) -> None:
            answers.write(json.dumps(result) + "\n")
            answers.flush()

        answer({"ready": True})
        for line in sys.stdin:
            request = json.loads(line)
            print(f"[worker] {request}", file=sys.stderr, flush=True)
            try:
                if request["kind"] == "base":
                    result = {"ok": True, **bench.deploy(request["model"], request["seed"])["info"]}
                else:
                    keys = ("model", "target", "seed", "method", "criterion")
                    result = {"ok": True, **bench.configuration(*(request[k] for k in keys))}
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


# -- the parent: the run, resumption ------------------------------------------------------------


class Worker(criteria.Worker):
    """criteria's worker protocol (JSON lines over pipes), running this script's worker."""

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


def config_key(row: dict) -> tuple:
    keys = ("kind", "budget", "model", "target", "seed", "method", "criterion")
    return tuple(row.get(k) for k in keys)


def best_criteria(path: str, models: list[str]) -> dict[str, tuple[str, str]]:
    """Per model, torchslim's criterion with the best mean accuracy after the KD fine-tune in
    criteria's results (full-budget rows, over both MAC targets and every seed; only criteria
    with as many rows as the most complete one), and why it was chosen."""
    rows = [
        r
        for r in criteria.read_rows(path)
        if r.get("kind") == "run" and r.get("ok") and "-test" not in r.get("budget", "-test")
    ]
    chosen = {}
    for model in models:
        by_method = defaultdict(list)
        for r in rows:
            if r["model"] == model and r["method"].startswith("ts:"):
                by_method[r["method"][3:]].append(r["acc_ft"])
        if not by_method:
            chosen[model] = (DEFAULT_CRITERION, f"default: no criteria results in {path}")
            continue
        most = max(len(v) for v in by_method.values())
        score, name = max((statistics.fmean(v), m) for m, v in by_method.items() if len(v) == most)
        chosen[model] = (name, f"best after KD in {path}: {100 * score:.2f}% over {most} runs")
    return chosen


def run(args: argparse.Namespace, budget: Budget, worker_argv: list[str]) -> None:
    done = {config_key(r): r for r in criteria.read_rows(args.out)}
    stamp = {"budget": budget.tag(), "commit": criteria.commit(), "threads": args.threads}
    if args.criterion == "best":
        chosen = best_criteria(args.criteria_out, args.models)
    else:
        chosen = {m: (args.criterion, "--criterion") for m in args.models}
    for model, (name, why) in chosen.items():
        print(f"{model}: pruning criterion {name} ({why})", file=sys.stderr)
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
            base = {"kind": "base", "model": model, "seed": seed, "target": None, **stamp}
            base.update(method=None, criterion=None)
            configs = []
            if "int8" in args.methods:  # first: prune+int8 starts from where INT8 lands
                configs.append({**base, "kind": "run", "method": "int8"})
            for target, method in itertools.product(args.targets, args.methods):
                if method != "int8":
                    criterion = chosen[model][0] if method in PRUNING else None
                    configs.append(
                        {**base, "kind": "run", "target": target, "method": method}
                        | {"criterion": criterion, "criterion_source": chosen[model][1]}
                    )
            pending = [row for row in configs if not skip(row)]
            if not pending and skip(base):
                continue
            answer = ask(base, max(args.timeout, 1800))  # trains the base model if not cached
            if not skip(base):
                record({**base, **answer})
            if not answer["ok"]:
                continue
            for row in pending:
                record({**row, **ask(row, args.timeout)})
    finally:
        if worker is not None:
            worker.close()
    print(f"worker restarts: {restarts}", file=sys.stderr)


# -- the report ---------------------------------------------------------------------------------


def spread(values: list[float], digits: int = 2) -> str:
    """``low–high`` of ``values`` (one value when they agree at ``digits``)."""
    low, high = (f"{f(values):.{digits}f}" for f in (min, max))
    return low if low == high else f"{low}–{high}"


def notes(method: str, rows: list[dict]) -> str:
    parts = []
    if method in PRUNING:
        parts.append(
            f"{rows[0].get('criterion')}, target_macs {spread([r['amount'] for r in rows])}"
        )
    elif method == "decompose":
        parts.append(f"rank ratio {spread([r['amount'] for r in rows])}")
    if method != "int8":
        widths = sorted({r["round_to"] for r in rows}, reverse=True)
        parts.append("widths × " + "/".join(map(str, widths)))
    if method == "int8":
        parts.append("no knob: lands where it lands")
        parts.append(f"FP32 {criteria.mean_std([r['acc_base'] for r in rows])}%")
    if method == "prune+int8":
        parts.append(f"FP32 after KD {criteria.mean_std([r['acc_fp32'] for r in rows])}%")
    if method != "int8":
        parts.append(f"{statistics.fmean(r['probes'] for r in rows):.1f} probes")
        missed = [r for r in rows if not r["reached"]]
        if missed:
            lands = spread([r["search_ratio"] for r in missed])
            parts.append(f"**target not reached** in {len(missed)}/{len(rows)}: lands at {lands}×")
    return "; ".join(parts)


def report(rows: list[dict]) -> str:
    out: list[str] = []
    bases = defaultdict(list)
    runs = defaultdict(lambda: defaultdict(list))
    failed = defaultdict(list)
    targets = defaultdict(set)
    for r in rows:
        if r.get("kind") == "base" and r.get("ok"):
            bases[(r["budget"], r["model"])].append(r)
        elif r.get("kind") == "run":
            if r.get("target") is not None:
                targets[(r["budget"], r["model"])].add(r["target"])
            if r.get("ok"):
                runs[(r["budget"], r["model"])][(r["method"], r["target"])].append(r)
            else:
                failed[(r["budget"], r["model"])].append(r)
    for key in sorted(set(runs) | set(failed), key=str):
        budget, model = key
        sample = next((r for rs in runs[key].values() for r in rs), None) or failed[key][0]
        base = bases.get(key, [])
        for target in sorted(targets[key], reverse=True) or [None]:
            title = f"latency × {target:g}" if target is not None else "INT8"
            seeds = sorted({r["seed"] for (m, t), rs in runs[key].items() for r in rs})
            out.append(f"### {model}, {title}\n")
            head = (
                f"settings `{budget}`, seeds {seeds}, commit {sample.get('commit')}, "
                f"ONNX Runtime CPU, {sample.get('threads')} threads, batch 1"
            )
            if base:
                head += (
                    f"; base model: accuracy {criteria.mean_std([b['acc'] for b in base])}% "
                    f"(ONNX Runtime), {base[0]['macs'] / 1e6:.2f} MMACs, "
                    f"{base[0]['size_mb']:.2f} MB, "
                    f"{statistics.fmean(b['latency_ms'] for b in base):.3f} ms; "
                    f"base against itself {criteria.mean_std([b['self_ratio'] for b in base], 1)}×"
                )
            out.append(head + "\n")
            out.append(
                "| method | accuracy (%) | before KD, after BN recal. (%) | MACs ratio | size (MB) "
                "| ORT latency ratio | notes |"
            )
            out.append("|---|---|---|---|---|---|---|")
            for method in METHODS:
                rs = runs[key].get((method, None if method == "int8" else target))
                if not rs:
                    continue
                before = [r["acc_before_ft"] for r in rs if "acc_before_ft" in r]
                n = "" if len(rs) == len(seeds) else f" (n={len(rs)})"
                out.append(
                    f"| {method}{n} | {criteria.mean_std([r['acc'] for r in rs])} "
                    f"| {criteria.mean_std(before) if before else '-'} "
                    f"| {statistics.fmean(r['macs_ratio'] for r in rs):.3f} "
                    f"| {statistics.fmean(r['size_mb'] for r in rs):.3f} "
                    f"| {criteria.mean_std([r['latency_ratio'] for r in rs], 1)} "
                    f"| {notes(method, rs)} |"
                )
            errors = [r for r in failed[key] if r.get("target") in (target, None)]
            if errors:
                out.append("")
            for r in errors:
                out.append(f"- failed: {r['method']} seed {r['seed']}: {r.get('error')}")
            out.append("")
    done = [r for r in rows if r.get("kind") == "run" and r.get("ok")]
    if done:
        seconds = sum(r["seconds"] for r in done)
        out.append(
            f"{len(done)} configurations, {seconds / 60:.1f} min in all "
            f"(mean {seconds / len(done):.1f} s)"
        )
    return "\n".join(out)


# -- command line ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report", action="store_true", help="print the tables of --out")
    parser.add_argument("--out", default="runs/methods.jsonl", help="JSON lines, appended")
    parser.add_argument(
        "--cache", default="runs/criteria-cache", help="trained base models (criteria's cache)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mem-gb", type=float, default=8, help="address-space cap of the worker")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--targets", nargs="+", type=float, default=list(TARGETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--criterion",
        choices=("best", *criteria.OURS),
        default="best",
        help="pruning criterion; 'best' (default): the best after KD in --criteria-out",
    )
    parser.add_argument(
        "--criteria-out", default="runs/criteria.jsonl", help="criteria.py's results"
    )
    parser.add_argument(
        "--round-to",
        nargs="+",
        type=int,
        default=None,
        help="width multiples tried in turn (default: the CPU's NCHWc block, half of it, 1)",
    )
    parser.add_argument(
        "--int8-activations",
        choices=("uint8", "int8"),
        default=None,
        help="activations of the INT8 files (ts.quantize_onnx); uint8 (default) is what ONNX "
        "Runtime's x86 integer kernels fuse, int8 ran 1.4x slower than FP32",
    )
    parser.add_argument("--finetune-batches", type=int, default=None, help="KD fine-tune steps")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test")
    parser.add_argument("--retry-failed", action="store_true")
    parser.add_argument("--budget", default=None, help=argparse.SUPPRESS)  # the worker's, as JSON
    args = parser.parse_args()
    if args.report:
        print(report(criteria.read_rows(args.out)))
        return
    if args.budget is not None:
        budget = Budget(**json.loads(args.budget))
    else:
        budget = Budget(**(QUICK if args.quick else {}))
        if args.finetune_batches is not None:
            budget = dataclasses.replace(budget, finetune_batches=args.finetune_batches)
        block = cpu_block()
        round_to = args.round_to or list(dict.fromkeys((block, block // 2, 1)))
        budget = dataclasses.replace(budget, round_to=",".join(map(str, round_to)))
        if args.int8_activations is not None:
            budget = dataclasses.replace(budget, int8_activations=args.int8_activations)
    if args.worker:
        serve(args.threads, args.mem_gb, budget, Path(args.cache))
        return
    if not all(0 < t < 1 for t in args.targets):
        raise SystemExit(
            f"--targets are fractions of the base latency in (0, 1), got {args.targets}"
        )
    worker_argv = ["--threads", str(args.threads), "--mem-gb", str(args.mem_gb)]
    worker_argv += ["--cache", args.cache, "--budget", json.dumps(dataclasses.asdict(budget))]
    run(args, budget, worker_argv)
    print(report([r for r in criteria.read_rows(args.out) if r.get("budget") == budget.tag()]))


if __name__ == "__main__":
    main()
