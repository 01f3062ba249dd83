"""Weight criteria: magnitude (``l1``, ``l2``), ``fpgm``, ``lamp``, and the ``random`` baseline."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.importance._base import (
    Combined,
    Importance,
    lamp_transform,
    per_channel,
    register_importance,
)
from torchslim.importance._producers import producers

__all__ = ["Magnitude", "L1", "L2", "FPGM", "LAMP", "RandomImportance"]


def parameter_members(group: Any) -> list[tuple[int, Any, torch.Tensor]]:
    """``(k, member, tensor)`` for the group's members that are parameters (not buffers)."""
    tensors = group.graph.tensors
    out = []
    for k, m in enumerate(group.members):
        t = tensors.get(m.tensor)
        if isinstance(t, nn.Parameter):
            out.append((k, m, t))
    return out


def per_index(t: torch.Tensor, dim: int, fn: Any) -> np.ndarray:
    """``fn`` of ``t`` summed over every dimension but ``dim``: one value per index of ``dim``."""
    with torch.no_grad():
        w = fn(t.detach().float())
        others = [d for d in range(w.dim()) if d != dim]
        return (w.sum(dim=others) if others else w).cpu().double().numpy()


class Magnitude(Combined):
    """The L-p norm of each channel's weights (``l1``, ``l2``).

    Per layer (member) the sum of ``|w|**p`` over the channel's weights; layers combine by
    ``reduction`` (default ``"sum"``: the L-p norm of all the channel's weights in the group),
    and the ``1/p`` power is taken last. Buffers (running statistics) are not weights.
    """

    def __init__(self, p: float = 2.0, reduction: str = "sum", normalize: str | None = None):
        if p <= 0:
            raise ConfigError(f"p must be > 0, got {p}")
        super().__init__(reduction, normalize)
        self.p = p

    def _power(self, w: torch.Tensor) -> torch.Tensor:
        # square() and abs() take a fast path that pow(2.0) does not (25x on large weights)
        if self.p == 2:
            return w.square()
        if self.p == 1:
            return w.abs()
        return w.abs().pow(self.p)

    def __call__(self, group: Any) -> np.ndarray:
        layers = [
            per_channel(per_index(t, m.dim, self._power), group, k)
            for k, m, t in parameter_members(group)
        ]
        if not layers:
            return np.zeros(len(group))
        return self.combine(layers) ** (1.0 / self.p)


@register_importance("l1")
class L1(Magnitude):
    """Sum of absolute weights of each channel."""

    def __init__(self, reduction: str = "sum", normalize: str | None = None) -> None:
        super().__init__(1.0, reduction, normalize)


@register_importance("l2")
class L2(Magnitude):
    """L2 norm of each channel's weights (the default criterion)."""

    def __init__(self, reduction: str = "sum", normalize: str | None = None) -> None:
        super().__init__(2.0, reduction, normalize)


@register_importance("fpgm")
class FPGM(Combined):
    """Filter pruning via geometric median (He et al., CVPR 2019).

    A filter's importance is the sum of its distances (L-p, default L2) to the other filters of
    the same layer: filters near the geometric median are the most replaceable. Filters are the
    output-dimension slices of the group's producing weights (convolution and linear ``weight``
    dim 0); a channel owning several output indices (a head) is the concatenation of their
    slices. Groups without such a weight use every parameter member's slices.
    """

    def __init__(self, p: float = 2.0, reduction: str = "mean", normalize: str | None = None):
        if p <= 0:
            raise ConfigError(f"p must be > 0, got {p}")
        super().__init__(reduction, normalize)
        self.p = p

    def __call__(self, group: Any) -> np.ndarray:
        params = parameter_members(group)
        produced = {p.member for p in producers(group)}
        chosen = [(k, m, t) for k, m, t in params if k in produced and t.dim() >= 2] or params
        if not chosen:
            return np.zeros(len(group))
        return self.combine([self._distances(group, k, m.dim, t) for k, m, t in chosen])

    def _distances(self, group: Any, k: int, dim: int, t: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            rows = t.detach().float().movedim(dim, 0).flatten(1)
            taken = [
                torch.as_tensor(channel[k], dtype=torch.long, device=rows.device)
                for channel in group.indices
            ]
            if len({len(i) for i in taken}) == 1:  # one filter per channel
                filters = rows[torch.stack(taken)].flatten(1)
                return torch.cdist(filters, filters, p=self.p).sum(1).cpu().double().numpy()
            index = torch.cat(taken)  # channels of unequal widths: per index, summed
            d = torch.cdist(rows[index], rows[index], p=self.p).sum(1).cpu().double().numpy()
            starts = np.cumsum([0] + [len(i) for i in taken[:-1]])
            return np.add.reduceat(d, starts)


@register_importance("lamp")
class LAMP(Combined):
    """Layer-adaptive magnitude pruning scores (Lee et al., ICLR 2021), per channel.

    Per layer (member), with ``s_c`` the squared L2 norm of channel ``c``'s weights, sorted so
    that ``s_1 <= s_2 <= …``: ``score_c = s_c / sum(s_d for d >= c)``. The largest channel of every
    layer scores 1, so scores compare across layers (for ``global_ranking``).
    """

    def __call__(self, group: Any) -> np.ndarray:
        layers = []
        for k, m, t in parameter_members(group):
            layers.append(lamp_transform(per_channel(per_index(t, m.dim, torch.square), group, k)))
        return self.combine(layers) if layers else np.zeros(len(group))


@register_importance("random")
class RandomImportance(Importance):
    """Uniform random scores (a baseline); ``seed`` makes them reproducible."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, group: Any) -> np.ndarray:
        return self.rng.random(len(group))
