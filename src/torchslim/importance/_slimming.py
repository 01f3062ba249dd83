"""Network Slimming (Liu et al., ICCV 2017): prune by the norms' scale factors |gamma|, after
training with an L1 penalty on them that drives unneeded channels' scales towards zero.

Train with the penalty, then prune with ``importance="bn_scale"``::

    for x, y in loader:
        loss = F.cross_entropy(model(x), y) + ts.importance.bn_sparsity_penalty(model, 1e-4)
        opt.zero_grad(); loss.backward(); opt.step()

or, as in the paper's code, add the subgradient after the backward pass::

        loss.backward()
        ts.importance.bn_sparsity_grad_(model, 1e-4)
        opt.step()
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.importance._base import Combined, per_channel, register_importance
from torchslim.importance._magnitude import L2

__all__ = ["BNScale", "NORM_TYPES", "bn_sparsity_penalty", "bn_sparsity_grad_"]

_logger = logging.getLogger(__name__)

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # batch and instance norms
    nn.GroupNorm,
    nn.LayerNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
"""Layers whose ``weight`` is a per-channel scale (gamma) that ``bn_scale`` reads."""


@register_importance("bn_scale")
class BNScale(Combined):
    """|gamma| of the batch, group and layer norms in the group (Network Slimming).

    Several norms in one group (a residual stream) combine by ``reduction``. A group without an
    affine norm falls back to ``l2`` (logged at debug level).
    """

    def __call__(self, group: Any) -> np.ndarray:
        model, tensors = group.graph.model, group.graph.tensors
        layers = []
        for k, m in enumerate(group.members):
            if m.tensor != _join(m.module, "weight"):
                continue
            if not isinstance(model.get_submodule(m.module), NORM_TYPES):
                continue
            gamma = tensors[m.tensor].detach().abs().float().cpu().double().numpy()
            if gamma.ndim == 1:
                layers.append(per_channel(gamma, group, k))
        if not layers:
            _logger.debug("bn_scale: no norm in group %r; scoring it by l2", group)
            return L2()(group)
        return self.combine(layers)


def _join(module: str, local: str) -> str:
    return f"{module}.{local}" if module else local


def _scales(model: nn.Module, types: tuple[type[nn.Module], ...]) -> list[torch.Tensor]:
    return [
        m.weight
        for m in model.modules()
        if isinstance(m, types) and isinstance(getattr(m, "weight", None), nn.Parameter)
    ]


def bn_sparsity_penalty(
    model: nn.Module,
    strength: float = 1e-4,
    *,
    types: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm,),
) -> torch.Tensor:
    """``strength * sum(|gamma|)`` over the model's norm scales: add it to the training loss.

    Args:
        model: The model being trained.
        strength: The penalty's weight (lambda; the paper uses 1e-5 to 1e-4).
        types: Which layers' ``weight`` counts (default: batch norms; pass
            ``ts.importance.NORM_TYPES`` for group and layer norms too).
    """
    scales = _scales(model, types)
    if not scales:
        return torch.zeros(())
    return strength * torch.stack([s.abs().sum() for s in scales]).sum()


@torch.no_grad()
def bn_sparsity_grad_(
    model: nn.Module,
    strength: float = 1e-4,
    *,
    types: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm,),
) -> None:
    """Add ``strength * sign(gamma)`` to the norm scales' gradients, in place: call it after
    ``loss.backward()`` and before ``optimizer.step()`` (the paper's subgradient update).

    Args:
        model: The model being trained.
        strength: The penalty's weight (lambda).
        types: Which layers' ``weight`` counts (default: batch norms).
    """
    for s in _scales(model, types):
        if s.grad is None:
            s.grad = strength * torch.sign(s)
        else:
            s.grad.add_(torch.sign(s), alpha=strength)
