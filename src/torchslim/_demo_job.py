"""The main job, run by ``make demo`` / ``torchslim demo``: the whole story on real data, offline.

1. **data**: the 5,000 real MNIST digits of ``mnist5k``, prepared for an ImageNet network (the grey
   channel repeated three times, resized to 32x32, ImageNet mean and std);
2. **transfer**: torchvision's ImageNet MobileNetV2 (``pretrained:mobilenet_v2``) with a fresh
   10-class head, fine-tuned for a few epochs; profiled (params, MACs, measured latency) and saved;
3. **prune** to half the MACs, channels ranked by the ``energy`` criterion on a few calibration
   batches, then batch-norm statistics re-estimated;
4. **recover** with knowledge distillation from the unpruned model;
5. **compare** accuracy, params, MACs and latency before and after; save the pruned model with its
   plan and check that it reloads to the same outputs;
6. **deploy**: export the pruned model to ONNX, verify it in ONNX Runtime against eager PyTorch, and
   time both models in ONNX Runtime next to eager (skipped without the ``onnx`` extra).

The defaults take about 75 s on 2 CPU threads and 95 s on one (measured on a shared machine).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from torchslim.errors import ConfigError

__all__ = ["DemoConfig", "run_demo", "evaluate"]

_logger = logging.getLogger(__name__)

#: The network and the dataset the demo uses.
MODEL, DATASET = "pretrained:mobilenet_v2", "mnist5k"


@dataclass(frozen=True)
class DemoConfig:
    """Options of the demo job (the defaults take 1-2 minutes on 2 CPU cores)."""

    size: int = 32  # digits resized to size x size; MobileNetV2 at 32 px: 6.1 M MACs
    epochs: int = 3  # transfer fine-tuning epochs (about 15 s each on one thread)
    lr: float = 2e-3  # peak learning rate of AdamW (cosine decay) for the transfer
    batch_size: int = 64
    target_macs: float = 0.5  # prune to this fraction of the MACs
    # channel counts kept multiples of this: ONNX Runtime's CPU kernels ran the pruned model 2.7x
    # slower than the original with arbitrary counts, and 0.64x with multiples of 8 (measured)
    round_to: int | None = 8
    calibration_batches: int = 4  # training batches the energy criterion sees
    recalibration_batches: int = 20  # training batches that re-estimate batch-norm statistics
    finetune_epochs: int = 6  # epochs of distillation after pruning (0: none)
    finetune_lr: float = 2e-3
    kd_alpha: float = 0.5  # weight of the teacher's soft labels, 0..1
    kd_temperature: float = 4.0
    train_images: int | None = None  # a seeded random subset of the 4,000 training digits
    test_images: int | None = None  # a seeded random subset of the 1,000 test digits
    seed: int = 0  # seeds the new head, the subsets and the data order
    threads: int | None = None  # CPU threads for everything (None: PyTorch's current setting)
    progress: bool = True  # progress bars
    out_dir: str | None = "runs/demo"  # where both models are saved (None: not saved)
    export: bool = True  # export the pruned model to ONNX, verify it, time it in ONNX Runtime

    def __post_init__(self) -> None:
        def at_least(name: str, minimum: int, optional: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")

        at_least("size", 16)
        at_least("epochs", 1)
        at_least("batch_size", 1)
        at_least("calibration_batches", 1)
        at_least("recalibration_batches", 1)
        at_least("finetune_epochs", 0)
        at_least("train_images", 10, optional=True)
        at_least("test_images", 10, optional=True)
        at_least("threads", 1, optional=True)
        at_least("round_to", 1, optional=True)
        for name in ("lr", "finetune_lr", "kd_temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.target_macs < 1:
            raise ConfigError(f"target_macs must be in (0, 1), got {self.target_macs!r}")
        if not 0 <= self.kd_alpha <= 1:
            raise ConfigError(f"kd_alpha must be in [0, 1], got {self.kd_alpha!r}")


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy of ``model`` over ``loader`` (in eval mode; the mode is restored)."""
    training = model.training
    model.eval()
    correct = seen = 0
    for inputs, targets in loader:
        correct += (model(inputs).argmax(1) == targets).sum().item()
        seen += len(targets)
    model.train(training)
    return correct / max(seen, 1)


def _subset(data: Dataset, count: int | None, seed: int) -> Dataset:
    if count is None or count >= len(data):  # type: ignore[arg-type]
        return data
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))  # type: ignore[arg-type]
    return Subset(data, order[:count].tolist())


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in str(text).splitlines())


def run_demo(config: DemoConfig = DemoConfig()) -> dict[str, float]:
    """Run the demo job and print what it did; returns the headline figures."""
    from torchslim.data import load_dataset
    from torchslim.models import load, load_model, save
    from torchslim.profiling import pinned_threads, profile
    from torchslim.pruning import prune_
    from torchslim.train import finetune, recalibrate_bn

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> str:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = now - clock
        clock = now
        return f"[{stage}: {seconds[stage]:.1f} s]"

    with pinned_threads(config.threads) as threads:
        print(
            f"torchslim demo: ImageNet MobileNetV2 -> MNIST digits -> half the MACs, on {threads} "
            f"CPU thread{'s' * (threads != 1)}\n"
        )
        # 1. data
        options: dict[str, Any] = {"size": config.size, "channels": 3, "normalize": "imagenet"}
        train = _subset(load_dataset(DATASET, "train", **options), config.train_images, config.seed)
        test = _subset(load_dataset(DATASET, "test", **options), config.test_images, config.seed)
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        train_loader = DataLoader(train, config.batch_size, shuffle=True, generator=generator)
        test_loader = DataLoader(test, 250)
        calibration = DataLoader(
            train,
            config.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(config.seed + 1),
        )
        example = train[0][0].unsqueeze(0)
        print(
            f"1/6 data: {len(train):,} train / {len(test):,} test real MNIST digits "
            f"({DATASET}), as {tuple(example.shape[1:])} images with ImageNet mean/std "
            f"{lap('data')}"
        )

        # 2. transfer
        model = load_model(MODEL, num_classes=10, seed=config.seed)
        print(
            f"\n2/6 transfer: {MODEL} (ImageNet weights) with a new 10-class head, "
            f"{config.epochs} epochs of AdamW (lr {config.lr:g}, cosine)"
        )
        history = finetune(
            model,
            train_loader,
            epochs=config.epochs,
            lr=config.lr,
            warmup_steps=len(train_loader) // 4,
            eval_data=test_loader,
            progress=config.progress,
        )
        print(_indent(history.table()))
        accuracy = evaluate(model, test_loader)
        measured = profile(model, example, threads=threads)
        print(f"    test accuracy {accuracy:.2%} {lap('transfer')}")
        print(_indent(measured.summary()))
        print(_indent(measured.table(top=5, sort="macs")))
        paths = {}
        if config.out_dir is not None:
            paths["transfer"] = save(
                model,
                Path(config.out_dir) / "transfer",
                source=MODEL,
                source_kwargs={"num_classes": 10, "seed": config.seed},
                overwrite=True,
                metadata={"dataset": DATASET, "options": options, "test_accuracy": accuracy},
            )
            print(f"    saved to {paths['transfer']} (safetensors + JSON)")
        teacher = copy.deepcopy(model).eval()  # the unpruned model teaches the pruned one

        # 3. prune
        print(
            f"\n3/6 prune to {config.target_macs:.0%} of the MACs; channels ranked by the energy "
            f"criterion on {config.calibration_batches} calibration batches"
        )
        result = prune_(
            model,
            example,
            target_macs=config.target_macs,
            importance="energy",
            calibration=calibration,
            calibration_batches=config.calibration_batches,
            round_to=config.round_to,
        )
        print(_indent(result.table()))
        pruned_accuracy = evaluate(model, test_loader)
        recalibrate_bn(
            model, train_loader, batches=config.recalibration_batches, progress=config.progress
        )
        recalibrated_accuracy = evaluate(model, test_loader)
        print(
            f"    test accuracy right after pruning {pruned_accuracy:.2%}; after re-estimating "
            f"batch-norm statistics on {config.recalibration_batches} batches "
            f"{recalibrated_accuracy:.2%} {lap('prune')}"
        )

        # 4. recover
        finetuned_accuracy = recalibrated_accuracy
        if config.finetune_epochs:
            print(
                f"\n4/6 recover: {config.finetune_epochs} epochs of distillation from the unpruned "
                f"model (kd_alpha {config.kd_alpha:g}, temperature {config.kd_temperature:g}, "
                f"lr {config.finetune_lr:g})"
            )
            recovery = finetune(
                model,
                train_loader,
                teacher=teacher,
                epochs=config.finetune_epochs,
                lr=config.finetune_lr,
                kd_alpha=config.kd_alpha,
                kd_temperature=config.kd_temperature,
                eval_data=test_loader,
                progress=config.progress,
            )
            print(_indent(recovery.table()))
            finetuned_accuracy = evaluate(model, test_loader)
            print(f"    test accuracy {finetuned_accuracy:.2%} {lap('recover')}")
        else:
            print("\n4/6 recover: skipped (finetune_epochs=0)")

        # 5. compare (latency of both measured back to back, alike) and save
        print(
            "\n5/6 compare: profile both models (latency: median of 200 runs at batch 1, back to "
            "back) and save the pruned one with its plan"
        )
        dense = profile(teacher, example, threads=threads, warmup=20, runs=200)
        pruned = profile(model, example, threads=threads, warmup=20, runs=200)
        reload_diff = float("nan")
        if config.out_dir is not None:
            paths["pruned"] = save(
                model,
                Path(config.out_dir) / "pruned",
                source=MODEL,
                source_kwargs={"num_classes": 10, "seed": config.seed},
                plan=result.plan,
                overwrite=True,
                metadata={
                    "dataset": DATASET,
                    "options": options,
                    "test_accuracy": finetuned_accuracy,
                },
            )
            reloaded = load(paths["pruned"]).eval()
            batch = next(iter(test_loader))[0]
            with torch.no_grad():
                reload_diff = (reloaded(batch) - model.eval()(batch)).abs().max().item()
        lap("compare")

        # 6. deploy: ONNX export of the pruned model, verified; ONNX Runtime latency of both
        deployed = (
            _deploy(config, teacher, model, example, threads, paths) if config.export else None
        )
        if deployed is not None:
            lap("deploy")

    def ratio(after: float, before: float) -> str:
        return f"{after / before:.3f}x"

    rows = [
        ("", "before (transfer)", "after (pruned + KD)", "after/before"),
        ("test accuracy", f"{accuracy:.2%}", f"{finetuned_accuracy:.2%}", ""),
        ("params", f"{dense.params:,}", f"{pruned.params:,}", ratio(pruned.params, dense.params)),
        ("MACs", f"{dense.macs:,}", f"{pruned.macs:,}", ratio(pruned.macs, dense.macs)),
        (
            f"latency (ms, median, {threads} thr)",
            f"{dense.latency.median_ms:.2f}",
            f"{pruned.latency.median_ms:.2f}",
            ratio(pruned.latency.median_ms, dense.latency.median_ms),
        ),
    ]
    if deployed is not None:
        ort_dense, ort_pruned, exported = deployed
        rows.append(
            (
                f"ONNX Runtime latency (ms, {threads} thr)",
                f"{ort_dense:.2f}",
                f"{ort_pruned:.2f}",
                ratio(ort_pruned, ort_dense),
            )
        )
    rows[1] = (*rows[1][:3], f"{100 * (finetuned_accuracy - accuracy):+.2f} pt")
    print(
        "\nsummary: before / after (latencies measured back to back on this machine, as loaded now)"
    )
    print(_indent(_table(rows)))
    if paths:
        print(
            f"    saved the pruned model with its plan to {paths['pruned']}; ts.load rebuilds it "
            f"(largest output difference {reload_diff:.1e})"
        )
    if deployed is not None:
        worst = max(exported.max_abs_diff.values())
        print(
            f"    exported the pruned model to {exported.path} "
            f"({exported.file_bytes / 1e6:.2f} MB, opset {exported.opset}); ONNX Runtime matches "
            f"eager PyTorch within {worst:.1e} on batches of "
            f"{', '.join(map(str, exported.batch_sizes))}"
        )
    total = sum(seconds.values())
    print(
        "\nstage timings: "
        + ", ".join(f"{stage} {s:.1f} s" for stage, s in seconds.items())
        + f"; total {total:.1f} s on {threads} thread{'s' * (threads != 1)}"
    )
    return {
        "accuracy": accuracy,
        "params": dense.params,
        "macs": dense.macs,
        "latency_ms": dense.latency.median_ms,
        "pruned_accuracy": pruned_accuracy,
        "recalibrated_accuracy": recalibrated_accuracy,
        "finetuned_accuracy": finetuned_accuracy,
        "pruned_params": pruned.params,
        "pruned_macs": pruned.macs,
        "pruned_latency_ms": pruned.latency.median_ms,
        "reload_max_diff": reload_diff,
        **(
            {
                "ort_latency_ms": deployed[0],
                "pruned_ort_latency_ms": deployed[1],
                "onnx_max_abs_diff": max(deployed[2].max_abs_diff.values()),
                "onnx_path": str(deployed[2].path),
            }
            if deployed is not None
            else {}
        ),
        "threads": threads,
        **{f"seconds_{stage}": s for stage, s in seconds.items()},
        "seconds_total": total,
    }


def _deploy(
    config: DemoConfig,
    dense: nn.Module,
    pruned: nn.Module,
    example: torch.Tensor,
    threads: int,
    paths: dict[str, Path],
) -> tuple[float, float, Any] | None:
    """Export the pruned model (verified against eager) and time both models in ONNX Runtime."""
    import importlib.util
    import tempfile

    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        print("\n6/6 deploy: skipped (pip install 'torchslim[onnx]' for ONNX export)")
        return None
    from torchslim.export import export_onnx
    from torchslim.profiling import profile

    print("\n6/6 deploy: export the pruned model to ONNX and time both models in ONNX Runtime")
    folder = Path(config.out_dir) if config.out_dir is not None else Path(tempfile.mkdtemp())
    exported = export_onnx(pruned.eval(), example, folder / "pruned.onnx")
    if config.out_dir is not None:
        paths["onnx"] = exported.path
    timings = []
    for model in (dense, pruned):
        measured = profile(
            model,
            example,
            backend="onnxruntime",
            threads=threads,
            warmup=20,
            runs=200,
            memory=False,
        )
        timings.append(measured.latency.median_ms)
    return timings[0], timings[1], exported
