"""``taylor``: first-order Taylor importance (Molchanov et al., CVPR 2019)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from torchslim.errors import ConfigError
from torchslim.importance._base import register_importance
from torchslim.importance._calibration import (
    Calibrated,
    calibrating,
    calibration_batches,
    first_tensor,
    model_device,
)
from torchslim.importance._magnitude import parameter_members

__all__ = ["Taylor", "default_loss"]


def default_loss(outputs: Any, targets: Any) -> torch.Tensor:
    """``outputs.loss`` when the model computed one (Hugging Face, given labels), else the
    cross-entropy of the logits (class axis last) against ``targets``."""
    loss = getattr(outputs, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    if targets is None:
        raise ConfigError(
            "taylor needs a loss: give (inputs, targets) batches for the default cross-entropy, "
            "or loss_fn=lambda outputs, targets: ... (a scalar)"
        )
    logits = first_tensor(outputs)
    if logits.dim() > 2:  # (N, ..., classes) against (N, ...)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return F.cross_entropy(logits, targets)


@register_importance("taylor")
class Taylor(Calibrated):
    """First-order Taylor estimate of the loss change when a channel is removed.

    Per batch and per layer (parameter member), ``(sum of w * dL/dw over the channel's
    weights)**2``; averaged over the calibration batches; layers combine by ``reduction``. The
    model runs in eval mode; gradients come from ``torch.autograd.grad``, so parameters'
    ``.grad`` are never touched, and ``requires_grad`` flags are restored.

    Args:
        loss_fn: ``loss_fn(outputs, targets) -> scalar``; default: :func:`default_loss`
            (cross-entropy on ``(inputs, targets)`` batches). A ``loss_fn`` given to
            :meth:`prepare` (``ts.prune_(..., loss_fn=...)``) takes precedence.
        reduction: How the layers of a group combine: ``"mean"``, ``"sum"`` or ``"max"``.
        normalize: Scale each layer's scores by their ``"mean"``, ``"max"`` or ``"sum"`` first.
    """

    def __init__(
        self,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        reduction: str = "mean",
        normalize: str | None = None,
    ) -> None:
        super().__init__(reduction, normalize)
        self.loss_fn = loss_fn

    def _reset(self, graph: Any) -> None:
        # per group: (tensor name, dim, indices, channel of each index) for each parameter member
        self._layout: dict[int, list[tuple[str, int, torch.Tensor, torch.Tensor]]] = {}
        self._sums: dict[int, torch.Tensor] = {}  # per group: (members, channels) sums of squares
        self._batches = 0
        for group in graph.groups():
            layout = []
            for k, m, _ in parameter_members(group):
                taken = [torch.as_tensor(ch[k], dtype=torch.long) for ch in group.indices]
                chan = torch.repeat_interleave(
                    torch.arange(len(group)), torch.tensor([len(t) for t in taken])
                )
                layout.append((m.tensor, m.dim, torch.cat(taken), chan))
            self._layout[id(group)] = layout
            self._sums[id(group)] = torch.zeros(len(layout), len(group), dtype=torch.float64)

    def _collect(self, graph: Any, data: Any, batches: int | None, loss_fn: Any) -> None:
        model, tensors = graph.model, graph.tensors
        loss_fn = loss_fn or self.loss_fn or default_loss
        names = list(dict.fromkeys(name for lay in self._layout.values() for name, *_ in lay))
        params = list({id(tensors[n]): tensors[n] for n in names}.values())
        with calibrating(model, grads=True), torch.enable_grad():
            for inputs, targets in calibration_batches(data, batches, model_device(model)):
                loss = loss_fn(inputs.call(model), targets)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                by_id = {id(p): g for p, g in zip(params, grads, strict=True)}
                contrib: dict[tuple[str, int], torch.Tensor] = {}  # w * dL/dw per index
                for gid, layout in self._layout.items():
                    for j, (name, dim, index, chan) in enumerate(layout):
                        if (name, dim) not in contrib:
                            contrib[name, dim] = _per_index(
                                tensors[name], by_id[id(tensors[name])], dim
                            )
                        values = contrib[name, dim][index]
                        per_channel = torch.zeros(self._sums[gid].shape[1], dtype=torch.float64)
                        self._sums[gid][j] += per_channel.index_add_(0, chan, values).square()
                self._batches += 1

    def __call__(self, group: Any) -> np.ndarray:
        self._check_prepared(group)
        sums = self._sums[id(group)]
        if not len(sums):
            return np.zeros(len(group))
        return self.combine(list((sums / max(self._batches, 1)).numpy()))


def _per_index(w: torch.Tensor, grad: torch.Tensor | None, dim: int) -> torch.Tensor:
    """``sum(w * grad)`` over every dimension but ``dim`` (float32 on the device), on the CPU."""
    if grad is None:
        return torch.zeros(w.shape[dim], dtype=torch.float64)
    prod = w.detach().float() * grad.float()
    others = [d for d in range(prod.dim()) if d != dim]
    return (prod.sum(dim=others) if others else prod).cpu().to(torch.float64)
