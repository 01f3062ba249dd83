"""Recovery by fine-tuning, with logit distillation from the unpruned model: :func:`finetune`.

The loss mixes cross-entropy on the labels with distillation from a teacher (Hinton et al.)::

    loss = (1 - kd_alpha) * CE(student, labels)
           + kd_alpha * T**2 * KL(softmax(teacher / T) || softmax(student / T))

AdamW (or SGD with momentum) follows a per-step cosine schedule with optional linear warm-up.
Checkpoints (safetensors + JSON, see :mod:`torchslim.train._checkpoint`) make an interrupted run
resume exactly; under ``torchrun`` the model is wrapped in DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from torchslim._inputs import Inputs, as_inputs, eval_mode
from torchslim.errors import CheckpointError, ConfigError
from torchslim.train import _checkpoint, _distributed
from torchslim.train._finetune_config import (
    EpochRecord,
    FinetuneConfig,
    FinetuneResult,
    _make_config,
)

__all__ = ["finetune", "distillation_loss"]

_logger = logging.getLogger(__name__)

# options that may change between a run and its resumption without changing the result
_RESUMABLE_CHANGES = ("checkpoint_every",)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# -- pieces of the loop -----------------------------------------------------------------------


def _logits(output: Any) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, ``.logits``, or the first element."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ConfigError(
        f"cannot find the logits in the model's output of type {type(output).__name__}: return a "
        "tensor, an object with .logits, or a tuple whose first element is the logits"
    )


def _split(batch: Any, device: torch.device) -> tuple[Inputs, torch.Tensor]:
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        raise ConfigError(
            f"finetune needs (inputs, targets) batches; got a {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, tuple | list) else "")
        )
    inputs, targets = batch
    if not isinstance(targets, torch.Tensor):
        raise ConfigError(f"the targets of a batch must be a tensor, got {type(targets).__name__}")
    return as_inputs(inputs).to(device), targets.to(device)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, classes on dim 1, batch mean."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


def _optimizer(model: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters (requires_grad=False everywhere)")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr)


def _schedule(config: FinetuneConfig, total: int) -> Callable[[int], float]:
    """Learning-rate factor after ``step`` steps: linear warm-up, then cosine to ``min_lr``."""
    warmup, floor = config.warmup_steps, config.min_lr / config.lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _steps_per_epoch(data: Iterable[Any], config: FinetuneConfig) -> int:
    try:
        length = len(data)  # type: ignore[arg-type]
    except TypeError:
        if config.batches_per_epoch is None:
            raise ConfigError(
                f"the training data ({type(data).__name__}) has no len(), which the learning-rate "
                "schedule needs; pass batches_per_epoch=N"
            ) from None
        return config.batches_per_epoch
    if length == 0:
        raise ConfigError("the training data has no batches: pass a non-empty data loader")
    return min(length, config.batches_per_epoch or length)


# -- the run ----------------------------------------------------------------------------------


class _Run:
    """One call of :func:`finetune`: its state, the loop, evaluation and checkpoints."""

    def __init__(
        self,
        model: nn.Module,
        teacher: nn.Module | None,
        train_data: Iterable[Any],
        eval_data: Iterable[Any] | None,
        loss_fn: LossFn | None,
        config: FinetuneConfig,
        device: torch.device,
        progress: bool,
        checkpoint_dir: Path | None,
        regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    ) -> None:
        self.model, self.teacher, self.config, self.device = model, teacher, config, device
        self.regularizer = regularizer
        self.train_data, self.eval_data = train_data, eval_data
        self.loss_fn: LossFn = loss_fn or F.cross_entropy
        self.alpha = config.kd_alpha if teacher is not None else 0.0
        self.main = _distributed.rank() == 0
        self.progress = progress and self.main
        self.checkpoint_dir = checkpoint_dir
        self.steps_per_epoch = _steps_per_epoch(train_data, config)
        self.optimizer = _optimizer(model, config)
        total = config.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(config, total))
        self.net: nn.Module = model
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.history: list[EpochRecord] = []
        self.initial: tuple[float | None, float | None] = (None, None)
        self.checked_teacher = False

    # one step

    @torch.no_grad()
    def check_teacher(self, inputs: Inputs, teacher: torch.Tensor) -> None:
        """Compare output shapes once, with the model in eval mode, before anything changes."""
        with eval_mode(self.model):
            shape = tuple(_logits(inputs.call(self.model)).shape)
        if tuple(teacher.shape) != shape:
            raise ConfigError(
                f"the teacher's output has shape {tuple(teacher.shape)} but the model's has "
                f"{shape}; the teacher must predict the same classes (the unpruned model), or "
                "pass teacher=None or kd_alpha=0"
            )
        self.checked_teacher = True

    def loss(self, inputs: Inputs, targets: torch.Tensor) -> torch.Tensor:
        teacher = None
        if self.alpha > 0:
            with torch.no_grad():
                teacher = _logits(inputs.call(self.teacher))
            if not self.checked_teacher:
                self.check_teacher(inputs, teacher)
        logits = _logits(inputs.call(self.net))
        loss = logits.new_zeros(())
        if self.alpha < 1:
            loss = loss + (1 - self.alpha) * self.loss_fn(logits, targets)
        if teacher is not None:
            kd = distillation_loss(logits, teacher, self.config.kd_temperature)
            loss = loss + self.alpha * kd
        return loss

    def train_step(self, batch: Any) -> tuple[torch.Tensor, int]:
        inputs, targets = _split(batch, self.device)
        loss = self.loss(inputs, targets)
        if self.regularizer is not None:
            loss = loss + self.regularizer(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        size = targets.shape[0] if targets.dim() else (inputs.batch_size or 1)
        return loss.detach(), int(size)

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float | None]:
        """Mean task loss and top-1 accuracy on the evaluation data (summed over processes)."""
        loss_sum = samples = correct = counted = 0.0
        with eval_mode(self.model):
            for batch in self.eval_data:
                inputs, targets = _split(batch, self.device)
                logits = _logits(inputs.call(self.model))
                size = targets.shape[0] if targets.dim() else 1
                loss_sum += float(self.loss_fn(logits, targets)) * size
                samples += size
                if not targets.is_floating_point() and logits.dim() == targets.dim() + 1:
                    correct += float((logits.argmax(1) == targets).sum())
                    counted += targets.numel()
        loss_sum, samples, correct, counted = _distributed.all_sum(
            [loss_sum, samples, correct, counted]
        )
        if samples == 0:
            raise ConfigError("the evaluation data has no batches: pass a non-empty loader")
        return loss_sum / samples, (correct / counted if counted else None)

    # checkpoints

    def save(self, batch: int, partial: dict[str, Any] | None, epoch_start: Any) -> None:
        """Checkpoint after ``batch`` batches of the next epoch (0: at an epoch boundary)."""
        own = {
            "rng": _checkpoint.capture_rng(self.train_data),
            "epoch_start": epoch_start,
            "partial": partial,
        }
        ranks = _distributed.gather_json(own)
        if self.main:
            record = {
                "config": self.config.to_dict(),
                "epoch": self.epoch,
                "batch": batch,
                "step": self.step,
                "steps_per_epoch": self.steps_per_epoch,
                "world_size": _distributed.world_size(),
                "history": [dataclasses.asdict(r) for r in self.history],
                "initial_eval": list(self.initial),
                "scheduler": self.scheduler.state_dict(),
                "ranks": ranks,
            }
            _checkpoint.write(
                self.checkpoint_dir, record, model=self.model, optimizer=self.optimizer
            )
        _distributed.barrier()

    def restore(self, record: dict[str, Any]) -> dict[str, Any]:
        """Load a checkpoint; returns this process's record (RNG states, partial epoch)."""
        theirs = {k: v for k, v in record["config"].items() if k not in _RESUMABLE_CHANGES}
        ours = {k: v for k, v in self.config.to_dict().items() if k not in _RESUMABLE_CHANGES}
        changed = sorted(k for k in ours if theirs.get(k) != ours[k])
        if changed:
            detail = ", ".join(f"{k}: {theirs.get(k)!r} -> {ours[k]!r}" for k in changed)
            raise CheckpointError(
                f"the checkpoint in {record['directory']} was written with other options "
                f"({detail}); resume with the same options, or pass resume=False or another "
                "checkpoint_dir to start over"
            )
        if record["steps_per_epoch"] != self.steps_per_epoch:
            raise CheckpointError(
                f"the checkpoint in {record['directory']} was written with "
                f"{record['steps_per_epoch']} batches per epoch, the data now gives "
                f"{self.steps_per_epoch}; resume on the same data, or pass resume=False"
            )
        _checkpoint.load_model_state(self.model, record)
        _checkpoint.load_optimizer_state(self.optimizer, record)
        self.scheduler.load_state_dict(record["scheduler"])
        self.epoch, self.step = record["epoch"], record["step"]
        self.history = [EpochRecord(**r) for r in record["history"]]
        self.initial = tuple(record["initial_eval"])  # type: ignore[assignment]
        ranks = record["ranks"]
        if len(ranks) != _distributed.world_size():
            _logger.warning(
                "the checkpoint was written by %d processes, this run has %d: data order and "
                "random numbers will differ from an uninterrupted run",
                len(ranks),
                _distributed.world_size(),
            )
        return ranks[min(_distributed.rank(), len(ranks) - 1)]

    # the loop

    def train_epoch(self, resume: dict[str, Any] | None) -> None:
        epoch = self.epoch + 1
        sampler = getattr(self.train_data, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch - 1)
        skip = 0
        dtype = torch.float32 if self.device.type == "mps" else torch.float64  # MPS has no f64
        loss_sum = torch.zeros((), dtype=dtype, device=self.device)  # no host sync per step
        samples, seconds = 0, 0.0
        if resume is not None and resume["partial"] is not None:  # mid-epoch: replay the order
            epoch_start = resume["epoch_start"]
            _checkpoint.restore_rng(epoch_start, self.train_data)
            skip = resume["partial"]["batch"]
            loss_sum += resume["partial"]["loss_sum"]
            samples, seconds = resume["partial"]["samples"], resume["partial"]["seconds"]
        else:
            if resume is not None:
                _checkpoint.restore_rng(resume["rng"], self.train_data)
            epoch_start = _checkpoint.capture_rng(self.train_data)
        started = time.perf_counter()
        batches = iter(self.train_data)
        for done in range(skip):
            if next(batches, None) is None:
                raise CheckpointError(
                    f"the training data ran out after {done} batches while skipping the "
                    f"{skip} a checkpoint had done; resume on the same data or pass resume=False"
                )
        if resume is not None and skip:
            _checkpoint.restore_rng(resume["rng"], self.train_data)
        self.net.train()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=skip,
            desc=f"finetune {epoch}/{self.config.epochs}",
            leave=False,
            disable=not self.progress,
        )
        done = skip
        with bar:
            for batch in batches:
                loss, size = self.train_step(batch)
                loss_sum += loss.to(dtype) * size
                samples += size
                done += 1
                bar.update(1)
                if self.progress:
                    bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                every = self.config.checkpoint_every
                if done >= self.steps_per_epoch:
                    break
                if self.checkpoint_dir is not None and every and self.step % every == 0:
                    partial = {
                        "batch": done,
                        "loss_sum": float(loss_sum),
                        "samples": samples,
                        "seconds": seconds + time.perf_counter() - started,
                    }
                    self.save(done, partial, epoch_start)
        loss_total, sample_total = _distributed.all_sum([float(loss_sum), float(samples)])
        _distributed.sync_buffers(self.model)
        eval_loss, accuracy = self.evaluate() if self.eval_data is not None else (None, None)
        self.epoch = epoch
        record = EpochRecord(
            epoch=epoch,
            train_loss=loss_total / max(sample_total, 1),
            eval_loss=eval_loss,
            eval_accuracy=accuracy,
            lr=self.scheduler.get_last_lr()[0],
            steps=done,
            seconds=seconds + time.perf_counter() - started,
        )
        self.history.append(record)
        if self.main:
            evaluated = "" if eval_loss is None else f", eval loss {eval_loss:.4f}"
            if accuracy is not None:
                evaluated += f", accuracy {100 * accuracy:.2f}%"
            _logger.info(
                "epoch %d/%d: train loss %.4f%s, lr %.3g, %.1f s",
                epoch,
                self.config.epochs,
                record.train_loss,
                evaluated,
                record.lr,
                record.seconds,
            )
        if self.checkpoint_dir is not None:
            self.save(0, None, None)

    def fit(self, resume: bool) -> FinetuneResult:
        started = time.perf_counter()
        own = None
        if self.checkpoint_dir is not None and resume:
            record = _checkpoint.read(self.checkpoint_dir)
            if record is not None:
                own = self.restore(record)
                _logger.info(
                    "resuming from %s: epoch %d, step %d",
                    self.checkpoint_dir,
                    self.epoch,
                    self.step,
                )
        elif self.checkpoint_dir is not None and _checkpoint.exists(self.checkpoint_dir):
            if self.main:
                _logger.warning(
                    "resume=False: the checkpoint in %s will be replaced", self.checkpoint_dir
                )
        if own is None and self.eval_data is not None:
            self.initial = self.evaluate()
        resumed_from = self.step if own is not None else None
        if _distributed.active():
            from torch.nn.parallel import DistributedDataParallel

            index = self.device.index
            if self.device.type == "cuda" and index is None:
                index = torch.cuda.current_device()
            ids = [index] if self.device.type == "cuda" else None  # CPU: no device ids
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        while self.epoch < self.config.epochs:
            self.train_epoch(own)
            own = None
        if own is not None:  # the checkpoint was of a finished run: leave the RNG as it left it
            _checkpoint.restore_rng(own["rng"], self.train_data)
        return FinetuneResult(
            config=self.config,
            history=tuple(self.history),
            initial_eval_loss=self.initial[0],
            initial_eval_accuracy=self.initial[1],
            best_epoch=_best(self.history),
            steps=self.step,
            seconds=time.perf_counter() - started,
            resumed_from=resumed_from,
            checkpoint_dir=str(self.checkpoint_dir) if self.checkpoint_dir else None,
        )


def _best(history: list[EpochRecord]) -> int | None:
    if any(r.eval_accuracy is not None for r in history):
        return max(history, key=lambda r: (r.eval_accuracy or 0.0, -r.epoch)).epoch
    if any(r.eval_loss is not None for r in history):
        return min(history, key=lambda r: (r.eval_loss, r.epoch)).epoch  # type: ignore[arg-type]
    return None


def finetune(
    model: nn.Module,
    train_data: Iterable[Any],
    config: FinetuneConfig | None = None,
    *,
    teacher: nn.Module | None = None,
    eval_data: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    device: torch.device | str | None = None,
    progress: bool = False,
    **options: Any,
) -> FinetuneResult:
    """Fine-tune ``model`` in place, distilling from ``teacher``, with exact resumption.

    Options are the fields of :class:`FinetuneConfig` (``epochs`` and ``lr`` are required):
    ``finetune(model, loader, teacher=unpruned, epochs=3, lr=1e-3, kd_alpha=0.7)``, or pass a
    ``config`` (options given too override its fields).

    Batches are ``(inputs, targets)`` pairs; inputs may be a tensor, a tuple of positional inputs
    or a dict of keyword inputs. Classes lie on dim 1 of the logits (PyTorch's cross-entropy
    convention). The model is trained in train mode; its train/eval flags are restored at the end.

    Resumption: with ``checkpoint_dir``, a checkpoint is written after every epoch (and every
    ``checkpoint_every`` steps). With ``resume=True`` (the default) a run that finds a checkpoint
    there continues from it into the same (already pruned) ``model`` and gives the weights an
    uninterrupted run would have given: weights, optimizer, schedule, history, random-number
    states and the data order (the generators of a DataLoader, or the global RNG it draws from)
    are restored, and batches already done in a partial epoch are skipped. So rerunning the same
    command after a crash, or ``torchrun --max-restarts``, picks up where it stopped; a finished
    run returns at once. ``resume=False`` starts over and replaces the checkpoint.

    Distributed: when ``torch.distributed`` is initialised (``torchrun``), the model is wrapped in
    DistributedDataParallel, a DataLoader is re-built over a DistributedSampler (its batch size is
    per process; other iterables must yield this process's share themselves), metrics are summed
    over processes, and only rank 0 writes checkpoints and shows progress. Every process must see
    ``checkpoint_dir`` (a shared file system across machines).

    Args:
        model: The model to train (moved to ``device``).
        train_data: Training batches, e.g. a DataLoader; it needs a ``len()`` unless
            ``batches_per_epoch`` is given.
        config: A :class:`FinetuneConfig`; alternatively give its fields as keyword options.
        teacher: The model to distil from, usually the unpruned original; moved to ``device``,
            kept in eval mode and run without gradients. ``None``: labels only (``kd_alpha``
            is ignored).
        eval_data: Batches to evaluate on before training and after every epoch (top-1 accuracy
            and the task loss, under ``no_grad`` in eval mode).
        loss_fn: ``loss_fn(logits, targets) -> loss`` instead of cross-entropy for the label
            term (and the evaluation loss); the distillation term is added as usual.
        regularizer: ``regularizer(model) -> scalar`` added to every training step's loss, e.g.
            Network Slimming's sparsity penalty on batch-norm scales before ``bn_scale``
            pruning: ``regularizer=lambda m: ts.importance.bn_sparsity_penalty(m, 1e-4)``.
        checkpoint_dir: Where to write checkpoints; ``None``: no checkpoints.
        resume: Continue from a checkpoint found in ``checkpoint_dir`` (see above).
        device: Where to train (default: the model's device); the teacher moves there too.
        progress: Show a progress bar (rank 0 only).
        **options: Fields of :class:`FinetuneConfig`.

    Returns:
        A :class:`FinetuneResult`: per-epoch losses and accuracy, best epoch, steps, time.

    Raises:
        ConfigError: an invalid option (the message names it and the fix), a teacher whose
            output shape differs from the model's, or batches that are not ``(inputs, targets)``.
        CheckpointError: a checkpoint that does not fit the model, the data or the options.
    """
    config = _make_config(config, options)
    for name, data in (("train_data", train_data), ("eval_data", eval_data)):
        if isinstance(data, torch.utils.data.Dataset) and not isinstance(
            data, torch.utils.data.IterableDataset
        ):
            raise ConfigError(
                f"{name} is a Dataset of single samples; pass batches, e.g. "
                f"DataLoader({name}, batch_size=64{', shuffle=True' * (name == 'train_data')})"
            )
    if teacher is not None and teacher is model:
        raise ConfigError(
            "the teacher is the model being trained; keep a copy of the unpruned model "
            "(copy.deepcopy(model) before pruning) and pass that as teacher"
        )
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    model.to(device)
    if teacher is not None:
        teacher.to(device)
    train_data = _distributed.shard_train(train_data)
    if eval_data is not None:
        eval_data = _distributed.shard_eval(eval_data)
    run = _Run(
        model,
        teacher,
        train_data,
        eval_data,
        loss_fn,
        config,
        device,
        progress,
        Path(checkpoint_dir) if checkpoint_dir is not None else None,
        regularizer,
    )
    flags = {m: m.training for m in model.modules()}
    try:
        with eval_mode(teacher) if teacher is not None else contextlib.nullcontext():
            return run.fit(resume)
    finally:
        for m, flag in flags.items():
            m.training = flag
