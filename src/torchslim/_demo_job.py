"""The main job on the built-in example, run by ``make demo`` / ``torchslim demo``.

Train the built-in demo model (a small residual CNN) on real MNIST digits for a short time, profile
it, prune half of its channels, fine-tune briefly, and compare params, MACs, measured latency and
accuracy. Later issues add distillation and export.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from torchslim.errors import ConfigError

__all__ = ["DemoConfig", "run_demo", "train_epoch", "evaluate"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Options of the demo job.

    Attributes:
        dataset: A :func:`torchslim.load_dataset` name with image inputs.
        epochs: Training epochs (the default takes well under a minute on 2 cores).
        batch_size: Training batch size.
        lr: Peak learning rate of AdamW (cosine schedule).
        seed: Seeds the model initialisation, the split and the data order.
        threads: CPU threads (default: PyTorch's current setting).
        progress: Show progress bars.
        out_dir: Where the trained and pruned models are saved (``None``: not saved).
        prune_ratio: Fraction of the channels of every group that pruning removes.
        finetune_epochs: Epochs of fine-tuning after pruning.
    """

    dataset: str = "mnist5k"
    epochs: int = 2
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    threads: int | None = None
    progress: bool = True
    out_dir: str | None = "runs/demo"
    prune_ratio: float = 0.5
    finetune_epochs: int = 2

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.prune_ratio < 1:
            raise ConfigError(f"prune_ratio must be in [0, 1), got {self.prune_ratio}")
        if self.finetune_epochs < 0:
            raise ConfigError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    progress: bool = True,
    desc: str = "train",
) -> float:
    """One epoch of cross-entropy training; returns the mean loss."""
    model.train()
    total, count = 0.0, 0
    for inputs, targets in tqdm(loader, desc=desc, leave=False, disable=not progress):
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(targets)
        count += len(targets)
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy of ``model`` over ``loader``."""
    model.eval()
    correct = seen = 0
    for inputs, targets in loader:
        correct += (model(inputs).argmax(1) == targets).sum().item()
        seen += len(targets)
    return correct / max(seen, 1)


def _fit(
    model: nn.Module,
    loader: DataLoader,
    test_loader: DataLoader,
    epochs: int,
    lr: float,
    progress: bool,
    label: str,
) -> float:
    """Train with AdamW and a one-cycle schedule; prints test accuracy after each epoch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * len(loader))
    accuracy = evaluate(model, test_loader)
    for epoch in range(1, epochs + 1):
        loss = train_epoch(
            model, loader, optimizer, scheduler, progress=progress, desc=f"{label} {epoch}"
        )
        accuracy = evaluate(model, test_loader)
        print(f"{label} {epoch}: train loss {loss:.4f}, test accuracy {accuracy:.2%}")
    return accuracy


def run_demo(config: DemoConfig = DemoConfig()) -> dict[str, float]:
    """Run the demo job and print what it did; returns the headline figures."""
    from torchslim.data import load_dataset
    from torchslim.models import DemoResNet, save
    from torchslim.profiling import pinned_threads, profile
    from torchslim.pruning import prune_
    from torchslim.train import recalibrate_bn

    with pinned_threads(config.threads) as threads:
        torch.manual_seed(config.seed)
        train = load_dataset(config.dataset, "train", seed=config.seed)
        test = load_dataset(config.dataset, "test", seed=config.seed)
        if len(train.input_shape) != 3:
            raise ConfigError(
                f"the demo model takes images (C, H, W); dataset {config.dataset!r} has inputs "
                f"of shape {train.input_shape}: use mnist5k or digits"
            )
        print(
            f"dataset  {config.dataset}: {len(train)} train / {len(test)} test images of shape "
            f"{tuple(train.input_shape)}, {train.num_classes} classes"
        )
        source_kwargs = {"in_channels": train.input_shape[0], "num_classes": train.num_classes}
        model = DemoResNet(**source_kwargs)
        generator = torch.Generator().manual_seed(config.seed)
        train_loader = DataLoader(train, config.batch_size, shuffle=True, generator=generator)
        test_loader = DataLoader(test, 256)

        print(f"\n1. train DemoResNet for {config.epochs} epochs on {threads} CPU threads")
        start = time.perf_counter()
        accuracy = _fit(
            model, train_loader, test_loader, config.epochs, config.lr, config.progress, "epoch"
        )
        seconds = time.perf_counter() - start
        example = torch.zeros(1, *train.input_shape)
        trained = profile(model, example, threads=threads)
        print(f"trained in {seconds:.1f} s; test accuracy {accuracy:.2%}\n")
        print(trained)

        def keep(name: str, accuracy: float) -> None:
            if config.out_dir is not None:
                saved = save(
                    model,
                    Path(config.out_dir) / name,
                    source="torchslim:demo_resnet",
                    source_kwargs=source_kwargs,
                    overwrite=True,
                    metadata={"dataset": config.dataset, "test_accuracy": accuracy},
                )
                print(f"saved the {name} model to {saved} (safetensors + JSON)")

        keep("trained", accuracy)

        print(f"\n2. prune {config.prune_ratio:.0%} of the channels of every group (l2 magnitude)")
        result = prune_(model, example, ratio=config.prune_ratio, importance="l2")
        pruned_accuracy = evaluate(model, test_loader)
        print(result.table())
        print(f"test accuracy right after pruning: {pruned_accuracy:.2%}")
        recalibrate_bn(model, train_loader, batches=20)
        recalibrated_accuracy = evaluate(model, test_loader)
        print(
            f"after re-estimating batch-norm statistics on 20 batches: {recalibrated_accuracy:.2%}"
        )

        print(f"\n3. fine-tune the pruned model for {config.finetune_epochs} epochs")
        finetuned_accuracy = _fit(
            model,
            train_loader,
            test_loader,
            config.finetune_epochs,
            config.lr,
            config.progress,
            "fine-tune",
        )
        pruned = profile(model, example, threads=threads)
        keep("pruned", finetuned_accuracy)  # the JSON records the pruning plan

    rows = [
        ("", "trained", "pruned + fine-tuned", "ratio"),
        (
            "params",
            f"{trained.params:,}",
            f"{pruned.params:,}",
            f"{pruned.params / trained.params:.3f}",
        ),
        ("MACs", f"{trained.macs:,}", f"{pruned.macs:,}", f"{pruned.macs / trained.macs:.3f}"),
        (
            "latency (ms, median)",
            f"{trained.latency.median_ms:.3f}",
            f"{pruned.latency.median_ms:.3f}",
            f"{pruned.latency.median_ms / trained.latency.median_ms:.3f}",
        ),
        (
            "test accuracy",
            f"{accuracy:.2%}",
            f"{finetuned_accuracy:.2%}",
            f"{finetuned_accuracy - accuracy:+.2%}",
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print("\nsummary")
    for r in rows:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return {
        "accuracy": accuracy,
        "params": trained.params,
        "macs": trained.macs,
        "latency_ms": trained.latency.median_ms,
        "train_seconds": seconds,
        "pruned_accuracy": pruned_accuracy,
        "recalibrated_accuracy": recalibrated_accuracy,
        "finetuned_accuracy": finetuned_accuracy,
        "pruned_params": pruned.params,
        "pruned_macs": pruned.macs,
        "pruned_latency_ms": pruned.latency.median_ms,
    }
