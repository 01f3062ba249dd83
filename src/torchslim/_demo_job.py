"""The main job on the built-in example, run by ``make demo`` / ``torchslim demo``.

Today: train the built-in demo model (a small residual CNN) on real MNIST digits for a short time,
report its accuracy, and print its profile. Later issues extend it to prune -> recover -> export.
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
        out_dir: Where the trained model is saved (``None``: not saved).
    """

    dataset: str = "mnist5k"
    epochs: int = 2
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    threads: int | None = None
    progress: bool = True
    out_dir: str | None = "runs/demo"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


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


def run_demo(config: DemoConfig = DemoConfig()) -> dict[str, float]:
    """Run the demo job and print what it did; returns the headline figures."""
    from torchslim.data import load_dataset
    from torchslim.models import DemoResNet, save
    from torchslim.profiling import human, pinned_threads, profile

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
        model = DemoResNet(in_channels=train.input_shape[0], num_classes=train.num_classes)
        generator = torch.Generator().manual_seed(config.seed)
        train_loader = DataLoader(train, config.batch_size, shuffle=True, generator=generator)
        test_loader = DataLoader(test, 256)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=5e-4)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, config.lr, total_steps=config.epochs * len(train_loader)
        )
        print(f"training DemoResNet for {config.epochs} epochs on {threads} CPU threads")
        start = time.perf_counter()
        for epoch in range(1, config.epochs + 1):
            loss = train_epoch(
                model,
                train_loader,
                optimizer,
                scheduler,
                progress=config.progress,
                desc=f"epoch {epoch}",
            )
            accuracy = evaluate(model, test_loader)
            print(f"epoch {epoch}: train loss {loss:.4f}, test accuracy {accuracy:.2%}")
        seconds = time.perf_counter() - start
        example = torch.zeros(1, *train.input_shape)
        result = profile(model, example, threads=threads)
    print(f"trained in {seconds:.1f} s; test accuracy {accuracy:.2%}")
    if config.out_dir is not None:
        saved = save(
            model,
            Path(config.out_dir) / "trained",
            source="torchslim:demo_resnet",
            source_kwargs={"in_channels": train.input_shape[0], "num_classes": train.num_classes},
            metadata={"dataset": config.dataset, "test_accuracy": accuracy},
            overwrite=True,
        )
        print(f"saved the trained model to {saved} (safetensors + JSON)")
    print()
    print(result)
    print(
        f"\nsummary: {human(result.params)} params, {human(result.macs)} MACs, "
        f"{result.latency.median_ms:.3f} ms median latency, {accuracy:.2%} top-1"
    )
    return {
        "accuracy": accuracy,
        "params": result.params,
        "macs": result.macs,
        "latency_ms": result.latency.median_ms,
        "train_seconds": seconds,
    }
