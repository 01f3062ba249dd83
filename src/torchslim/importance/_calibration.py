"""Running the model on calibration batches, for the data-driven criteria.

Calibration data is a DataLoader or any iterable of batches: ``(inputs, targets)`` pairs,
input tensors, tuples of positional inputs, or dicts of keyword inputs. The model runs in eval
mode (batch-norm statistics do not move, dropout is off) with the criterion's hooks, which are
removed afterwards whatever happens; train/eval flags and ``requires_grad`` flags are restored.
Statistics are running sums, one number per channel: memory does not grow with the batches.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim._inputs import Inputs, as_inputs, eval_mode
from torchslim.errors import ConfigError
from torchslim.importance._base import Combined, Importance, per_channel
from torchslim.importance._magnitude import L2
from torchslim.importance._producers import producers

__all__ = [
    "Calibrated",
    "ChannelStatistic",
    "check_calibration",
    "calibration_batches",
    "first_tensor",
]

_logger = logging.getLogger(__name__)


def check_calibration(criterion: Importance, calibration: Any, batches: int | None) -> None:
    """Fail fast: a data-driven criterion needs calibration data, and ``batches`` is >= 1."""
    if batches is not None and (not isinstance(batches, int) or batches < 1):
        raise ConfigError(f"calibration_batches must be an int >= 1 or None, got {batches!r}")
    if criterion.requires_calibration and calibration is None:
        raise ConfigError(
            f"importance {type(criterion).__name__} ranks channels on data: pass calibration= "
            "(a DataLoader or list of batches: (inputs, targets) pairs, tensors or keyword dicts)"
        )


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a batch: pairs split, anything else has no targets."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def calibration_batches(
    data: Iterable[Any], batches: int | None, device: torch.device
) -> Iterator[tuple[Inputs, Any]]:
    """``(inputs, targets)`` of at most ``batches`` batches of ``data``, on ``device``."""
    if batches is not None and batches < 1:
        raise ConfigError(f"batches must be >= 1 or None, got {batches}")
    if isinstance(data, (torch.Tensor, dict)):
        raise ConfigError(
            "calibration must be an iterable of batches (a DataLoader or a list of batches), "
            f"not a single {type(data).__name__}; wrap one batch in a list: calibration=[batch]"
        )
    used = 0
    for batch in data:
        if batches is not None and used >= batches:
            break
        inputs, targets = split_batch(batch)
        if isinstance(targets, torch.Tensor):
            targets = targets.to(device)
        yield as_inputs(inputs).to(device), targets
        used += 1
    if used == 0:
        raise ConfigError("the calibration data yielded no batch: pass a non-empty data loader")
    _logger.debug("calibrated on %d batches", used)


def first_tensor(outputs: Any) -> torch.Tensor:
    """The logits of a model's outputs: the tensor itself, ``.logits`` (Hugging Face), or the
    first tensor of a tuple, list or dict."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    values = outputs.values() if isinstance(outputs, dict) else outputs
    if isinstance(values, Iterable):
        for v in values:
            if isinstance(v, torch.Tensor):
                return v
    raise ConfigError(
        f"cannot find the logits in the model's outputs ({type(outputs).__name__}); return a "
        "tensor, a tuple starting with one, or an object with .logits"
    )


def model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextlib.contextmanager
def calibrating(model: nn.Module, *, grads: bool = False) -> Iterator[list[Any]]:
    """Eval mode for the block; yields a list for hook handles, all removed on exit. With
    ``grads``, every floating-point parameter requires grad inside (flags restored on exit)."""
    handles: list[Any] = []
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        with eval_mode(model):
            if grads:
                for p in flags:
                    if p.is_floating_point():
                        p.requires_grad_(True)
            yield handles
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)


def channel_axis(output: Any, producer: Any) -> torch.Tensor | None:
    """``output`` with the producer's channels on dim 1 (batch on dim 0), or ``None`` when it
    does not have the expected shape."""
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        return None
    if output.dim() == 1:
        output = output.unsqueeze(0)
    axis = producer.axis % output.dim()
    if axis == 0 or output.shape[axis] != producer.size:
        return None
    return output.movedim(axis, 1)


class Calibrated(Combined):
    """Base of criteria that run the model on calibration data in :meth:`prepare`."""

    requires_calibration = True

    def __init__(self, reduction: str = "mean", normalize: str | None = None) -> None:
        super().__init__(reduction, normalize)
        self._graph: Callable[[], Any] | None = None

    def prepare(
        self,
        graph: Any,
        calibration: Any = None,
        *,
        batches: int | None = None,
        loss_fn: Callable[..., Any] | None = None,
    ) -> None:
        check_calibration(self, calibration, batches)
        self._graph = None
        self._reset(graph)
        self._collect(graph, calibration, batches, loss_fn)
        self._graph = weakref.ref(graph)

    def _check_prepared(self, group: Any) -> None:
        if self._graph is None or self._graph() is not group.graph:
            raise ConfigError(
                f"{type(self).__name__} has no statistics for this graph: call "
                "criterion.prepare(graph, calibration=loader) first (ts.prune_ does, given "
                "calibration=)"
            )

    def _reset(self, graph: Any) -> None:
        raise NotImplementedError

    def _collect(self, graph: Any, data: Any, batches: int | None, loss_fn: Any) -> None:
        raise NotImplementedError


class ChannelStatistic(Calibrated):
    """A running per-channel statistic of the outputs of the modules producing the groups'
    channels (see ``_producers``), averaged over samples; the producers of a group combine by
    ``reduction``. A group with no hooked producer (its channels come from a parameter-free
    op or a layer type we cannot read) is scored by ``l2``, logged at debug level."""

    def _reset(self, graph: Any) -> None:
        self._sums: dict[str, torch.Tensor] = {}  # module -> per-channel running sum
        self._counts: dict[str, int] = {}  # module -> samples seen
        self._producers = {p.module: p for g in graph.groups() for p in producers(g)}

    def accumulate(self, module: str, values: torch.Tensor, samples: int) -> None:
        """Add per-channel ``values`` (summed over ``samples`` samples) to ``module``'s sums."""
        values = values.detach().to(_sum_dtype(values.device))
        if module in self._sums:
            self._sums[module] += values
            self._counts[module] += samples
        else:
            self._sums[module] = values.clone()
            self._counts[module] = samples

    def module_scores(self) -> dict[str, np.ndarray]:
        """The statistic of each hooked module's output channels, averaged over samples."""
        return {
            name: (s / max(self._counts[name], 1)).cpu().double().numpy()
            for name, s in self._sums.items()
        }

    def __call__(self, group: Any) -> np.ndarray:
        self._check_prepared(group)
        layers = []
        for p in producers(group):
            if p.module in self._sums:
                mean = (self._sums[p.module] / max(self._counts[p.module], 1)).cpu().double()
                layers.append(per_channel(mean.numpy(), group, p.member))
        if not layers:
            _logger.debug("%s: no producer of %r ran; scoring it by l2", type(self).__name__, group)
            return L2()(group)
        return self.combine(layers)


def _sum_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64
