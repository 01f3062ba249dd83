"""Feature-map criteria: ``activation``, ``hrank`` and ``energy``.

Each hooks the modules whose output carries a group's channels (convolutions, linear layers,
norms; see ``_producers``), computes one number per sample and channel from that output during
calibration, and keeps only its running sum per channel. A channel's feature map of one sample
is its slice of the output with the batch and channel axes removed, seen as a matrix:

- ``(H, W)`` maps (2-D convolutions, channels-last linear layers on ``(N, H, W, C)``): as is;
- 3-D maps ``(D, H, W)``: the ``(D*H, W)`` matrix;
- 1-D maps (1-D convolutions, tokens ``(N, T, C)`` out of a linear layer): the ``1 x T`` row,
  whose nuclear norm is its L2 norm and whose rank is 1 unless it is zero;
- no map (``(N, C)`` out of a linear layer): the ``1 x 1`` matrix of the value.
"""

from __future__ import annotations

from typing import Any

import torch

from torchslim.importance._base import register_importance
from torchslim.importance._calibration import (
    ChannelStatistic,
    calibrating,
    calibration_batches,
    channel_axis,
    model_device,
)

__all__ = ["FeatureMapStatistic", "Activation", "HRank", "Energy", "as_matrices"]


def as_matrices(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, *map)`` -> ``(N, C, rows, cols)``: each sample's channel map as a matrix."""
    n, c, *rest = x.shape
    if not rest:
        return x.reshape(n, c, 1, 1)
    if len(rest) == 1:
        return x.reshape(n, c, 1, rest[0])
    return x.reshape(n, c, -1, rest[-1])


class FeatureMapStatistic(ChannelStatistic):
    """Base of the feature-map criteria: subclasses define :meth:`statistic`."""

    def statistic(self, x: torch.Tensor) -> torch.Tensor:
        """One value per sample and channel, ``(N, C)``, of an output ``x`` of ``(N, C, *map)``."""
        raise NotImplementedError

    def _collect(self, graph: Any, data: Any, batches: int | None, loss_fn: Any) -> None:
        model = graph.model
        with calibrating(model) as handles, torch.no_grad():
            for producer in self._producers.values():
                module = model.get_submodule(producer.module)
                handles.append(module.register_forward_hook(self._hook(producer)))
            for inputs, _ in calibration_batches(data, batches, model_device(model)):
                inputs.call(model)

    def _hook(self, producer: Any) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            x = channel_axis(output, producer)
            if x is not None:
                self.accumulate(producer.module, self.statistic(x).sum(0), x.shape[0])

        return hook


@register_importance("activation")
class Activation(FeatureMapStatistic):
    """Mean absolute activation of each channel's feature map, averaged over the samples."""

    def statistic(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs().flatten(2).mean(-1) if x.dim() > 2 else x.abs()


@register_importance("hrank")
class HRank(FeatureMapStatistic):
    """HRank (Lin et al., CVPR 2020): the average rank of each channel's feature map over the
    calibration samples; low-rank maps carry less information. Ranks use
    ``torch.linalg.matrix_rank``'s default tolerance. On 1-D and single-value maps the rank is 1
    unless the map is zero: the score is then the fraction of samples where the channel fires.
    """

    def statistic(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.matrix_rank(as_matrices(x).float()).to(torch.float64)


@register_importance("energy")
class Energy(FeatureMapStatistic):
    """Energy-aware pruning (Yeom, Shim, Hwang, arXiv 2103.10858): the nuclear norm (sum of
    singular values) of each channel's feature map, averaged over the calibration samples. On
    1-D maps (tokens) it is the L2 norm over the positions; on single values, the absolute value.
    """

    def statistic(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svdvals(as_matrices(x).float()).sum(-1)
