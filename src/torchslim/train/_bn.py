"""Batch-norm recalibration: re-estimate running statistics after pruning, the cheapest recovery."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from torchslim._inputs import as_inputs
from torchslim.errors import ConfigError

__all__ = ["recalibrate_bn"]

_logger = logging.getLogger(__name__)


def _model_inputs(batch: Any) -> Any:
    """A data-loader batch without its targets: ``(x, y)`` -> ``x``; dicts stay whole."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0]
    return batch


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    data: Iterable[Any],
    *,
    batches: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> int:
    """Re-estimate every batch norm's running mean and variance on ``data``, in place.

    Statistics are reset and averaged over the batches seen (not an exponential moving average),
    with only the batch norms in training mode: dropout and everything else stay in eval mode.
    Weights are not changed. Train/eval flags and momenta are restored afterwards.

    Args:
        model: The model.
        data: Batches: ``(inputs, targets)`` pairs (targets ignored), tensors, or keyword dicts.
        batches: Use at most this many batches (``None``: all).
        device: Move inputs there (default: the model's device).
        progress: Show a progress bar.

    Returns:
        The number of batches used.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    if batches is not None and batches < 1:
        raise ConfigError(f"batches must be >= 1 or None, got {batches}")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    flags = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    used = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
            m.train()
        for batch in tqdm(data, total=batches, desc="recalibrate BN", disable=not progress):
            if batches is not None and used >= batches:
                break
            as_inputs(_model_inputs(batch)).to(device).call(model)
            used += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, flag in flags.items():
            m.training = flag
    if used == 0:
        raise ConfigError("recalibrate_bn got no batches: pass a non-empty data loader")
    _logger.info("recalibrated %d batch norms on %d batches", len(norms), used)
    return used
