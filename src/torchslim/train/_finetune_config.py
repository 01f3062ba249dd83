"""The data of :func:`~torchslim.train.finetune`: options in (:class:`FinetuneConfig`), records out
(:class:`EpochRecord`, :class:`FinetuneResult`), all frozen and round-tripping through JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchslim.errors import ConfigError

__all__ = ["CONFIG_VERSION", "OPTIMIZERS", "FinetuneConfig", "EpochRecord", "FinetuneResult"]

CONFIG_VERSION = 1
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class FinetuneConfig:
    """Options of :func:`finetune`; round-trips through JSON with ``to_dict``/``from_dict``."""

    epochs: int  # passes over the training data
    lr: float  # peak learning rate, reached after warm-up
    optimizer: str = "adamw"  # "adamw", or "sgd" (with momentum, Nesterov off)
    weight_decay: float = 1e-4  # on weights (ndim >= 2) only, not on biases or norm scales
    momentum: float = 0.9  # SGD only
    warmup_steps: int = 0  # linear warm-up steps, then cosine decay to min_lr, stepped per batch
    min_lr: float = 0.0  # learning rate at the end of the cosine schedule
    kd_alpha: float = 0.5  # weight of distillation; 0: labels only, 1: teacher only
    kd_temperature: float = 4.0  # softens both distributions; the KL term is scaled by T**2
    grad_clip: float | None = None  # clip the gradients' global L2 norm to this value
    batches_per_epoch: int | None = None  # use at most this many batches per epoch
    checkpoint_every: int | None = None  # also checkpoint every N steps (mid-epoch resume)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        def number(name: str, value: Any) -> float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name}={value!r} must be a number")
            if not math.isfinite(value):
                raise ConfigError(f"{name}={value!r} must be finite")
            return float(value)

        def count(name: str, value: Any, hint: str, optional: bool = False) -> None:
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be an integer >= 1{hint}")

        count("epochs", self.epochs, ", e.g. epochs=3")
        if number("lr", self.lr) <= 0:
            raise ConfigError(f"lr={self.lr!r} must be > 0, e.g. lr=1e-3 (AdamW) or 0.01 (SGD)")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer={self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if number("weight_decay", self.weight_decay) < 0:
            raise ConfigError(f"weight_decay={self.weight_decay!r} must be >= 0, e.g. 1e-4")
        if not 0 <= number("momentum", self.momentum) < 1:
            raise ConfigError(f"momentum={self.momentum!r} must lie in [0, 1), e.g. 0.9")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int):
            raise ConfigError(f"warmup_steps={self.warmup_steps!r} must be an integer >= 0")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps={self.warmup_steps!r} must be >= 0 (0: no warm-up)")
        if not 0 <= number("min_lr", self.min_lr) <= self.lr:
            raise ConfigError(f"min_lr={self.min_lr!r} must lie in [0, lr={self.lr!r}]")
        if not 0 <= number("kd_alpha", self.kd_alpha) <= 1:
            raise ConfigError(
                f"kd_alpha={self.kd_alpha!r} must lie in [0, 1]: 0 trains on the labels only, "
                "1 on the teacher only; e.g. kd_alpha=0.5"
            )
        if number("kd_temperature", self.kd_temperature) <= 0:
            raise ConfigError(
                f"kd_temperature={self.kd_temperature!r} must be > 0, e.g. 4.0 (1.0: no softening)"
            )
        if self.grad_clip is not None and number("grad_clip", self.grad_clip) <= 0:
            raise ConfigError(f"grad_clip={self.grad_clip!r} must be > 0, or None to not clip")
        count("batches_per_epoch", self.batches_per_epoch, " or None (all)", optional=True)
        count("checkpoint_every", self.checkpoint_every, " or None (every epoch)", optional=True)
        if self.version > CONFIG_VERSION:
            raise ConfigError(
                f"FinetuneConfig version {self.version} is newer than this torchslim reads "
                f"({CONFIG_VERSION}); upgrade torchslim"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinetuneConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown fine-tuning option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**data)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of :func:`finetune`: mean training loss, evaluation, last learning rate, time.

    ``eval_loss`` and ``eval_accuracy`` are ``None`` without ``eval_data``; ``eval_accuracy`` is
    also ``None`` when the targets are not class indices. ``seconds`` counts training and
    evaluation of this epoch, across an interruption.
    """

    epoch: int
    train_loss: float
    eval_loss: float | None
    eval_accuracy: float | None
    lr: float
    steps: int
    seconds: float


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` did, as data (``to_dict``/``from_dict`` round-trip through JSON).

    Attributes:
        config: The options used.
        history: One record per epoch, including epochs run before a resumption.
        initial_eval_loss: Evaluation loss before the first epoch (``None`` without eval data).
        initial_eval_accuracy: Top-1 accuracy before the first epoch.
        best_epoch: The epoch with the highest eval accuracy (lowest eval loss when there is no
            accuracy); ``None`` without eval data.
        steps: Optimizer steps in total.
        seconds: Wall time of this call.
        resumed_from: The step of the checkpoint this call resumed from, or ``None``.
        checkpoint_dir: Where checkpoints were written, or ``None``.
    """

    config: FinetuneConfig
    history: tuple[EpochRecord, ...]
    initial_eval_loss: float | None
    initial_eval_accuracy: float | None
    best_epoch: int | None
    steps: int
    seconds: float
    resumed_from: int | None = None
    checkpoint_dir: str | None = None

    @property
    def train_loss(self) -> list[float]:
        return [r.train_loss for r in self.history]

    @property
    def eval_accuracy(self) -> list[float | None]:
        return [r.eval_accuracy for r in self.history]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["history"] = [dataclasses.asdict(r) for r in self.history]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinetuneResult:
        fields = dict(data)
        fields["config"] = FinetuneConfig.from_dict(fields["config"])
        fields["history"] = tuple(EpochRecord(**r) for r in fields["history"])
        return cls(**fields)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    def table(self) -> str:
        """Per-epoch losses, accuracy and learning rate as a text table."""

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{100 * v:.2f}%"

        def num(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"

        lines = [
            f"{'epoch':>5}  {'train loss':>10}  {'eval loss':>9}  {'accuracy':>8}  "
            f"{'lr':>9}  {'seconds':>7}"
        ]
        if self.initial_eval_loss is not None:
            lines.append(
                f"{0:>5}  {'-':>10}  {num(self.initial_eval_loss):>9}  "
                f"{pct(self.initial_eval_accuracy):>8}  {'-':>9}  {'-':>7}"
            )
        for r in self.history:
            best = " *" if r.epoch == self.best_epoch else ""
            lines.append(
                f"{r.epoch:>5}  {r.train_loss:>10.4f}  {num(r.eval_loss):>9}  "
                f"{pct(r.eval_accuracy):>8}  {r.lr:>9.3g}  {r.seconds:>7.2f}{best}"
            )
        return "\n".join(lines)


def _make_config(config: FinetuneConfig | None, options: dict[str, Any]) -> FinetuneConfig:
    if config is not None and not isinstance(config, FinetuneConfig):
        raise ConfigError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    known = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"finetune got unknown option(s) {', '.join(unknown)}; the options are "
            f"{', '.join(sorted(known - {'version'}))}"
        )
    if config is not None:
        return dataclasses.replace(config, **options)
    missing = [name for name in ("epochs", "lr") if name not in options]
    if missing:
        raise ConfigError(f"finetune needs {' and '.join(missing)}, e.g. epochs=3, lr=1e-3")
    return FinetuneConfig(**options)
