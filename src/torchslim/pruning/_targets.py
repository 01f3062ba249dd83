"""MAC and parameter targets: find the pruning amount that lands on a budget.

``prune_(..., target_macs=0.5)`` searches, by bisection, how many channels to remove, one channel
at a time: under ``global_ranking`` the next channel of the global ranking; otherwise the next
channel of the group whose removed share is lowest (so that every group without its own
``ratios`` entry loses about the same share, as with ``ratio=``). Each candidate is judged
exactly, not estimated:

- parameters from the plan alone (the kept shape of every parameter);
- MACs by applying the plan to a copy of the model on the ``meta`` device (no memory, no
  arithmetic) and counting the MACs of its forward pass with PyTorch's FLOP counter, the same
  count :func:`torchslim.profile` reports. Models that cannot run on ``meta`` (data-dependent
  output sizes, ops without meta kernels) are counted on a real copy instead.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torchslim._inputs import Inputs, eval_mode
from torchslim.errors import ConfigError
from torchslim.pruning._plan import PruningPlan

__all__ = ["resolve_target", "PlanCounter", "search_count"]

_logger = logging.getLogger(__name__)

#: A target is reached when the result is within this fraction of it.
TOLERANCE = 0.02


def resolve_target(value: Any, total: int, what: str) -> int:
    """A target as an absolute count: a float in (0, 1] is a fraction of ``total``, an int is a
    count itself."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{what} must be a fraction of the original (a float in (0, 1]) or an absolute count "
            f"(an int), got {value!r}"
        )
    if isinstance(value, float):
        if not 0 < value <= 1:
            raise ConfigError(
                f"{what}={value} as a fraction must be in (0, 1]; pass an int for an absolute "
                f"count (the model has {total:,})"
            )
        return int(round(value * total))
    if not 0 < value <= total:
        raise ConfigError(f"{what}={value:,} must be between 1 and the model's {total:,}")
    return int(value)


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on ``meta`` (no data copied)."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None and id(p) not in memo:
                memo[id(p)] = nn.Parameter(
                    torch.empty_like(p, device="meta"), requires_grad=p.requires_grad
                )
        for b in module._buffers.values():
            if b is not None and id(b) not in memo:
                memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


class PlanCounter:
    """Counts the parameters and MACs a model would have after a plan, without touching it."""

    def __init__(self, model: nn.Module, inputs: Inputs, macs_before: int) -> None:
        self.model = model
        self.inputs = inputs
        self.macs_before = macs_before
        self._meta: nn.Module | None = None
        self._on_meta = True
        named = dict(model.named_parameters())  # a shared parameter once, by its first name
        self.params_before = sum(p.numel() for p in named.values())
        self._param_names = set(named)

    def params(self, plan: PruningPlan) -> int:
        """Parameters after ``plan``: exact, from the kept shapes."""
        removed = 0
        for name, kept in plan.kept.items():
            if name not in self._param_names:
                continue
            shape = list(plan.shapes[name])
            before = math.prod(shape)
            for d, keep in kept.items():
                shape[d] = len(keep)
            removed += before - math.prod(shape)
        return self.params_before - removed

    def macs(self, plan: PruningPlan) -> int:
        """MACs after ``plan``: the plan applied to a throw-away copy, counted on a forward."""
        from torchslim.profiling._counting import count_macs
        from torchslim.pruning._surgery import apply_plan

        if not plan.kept:
            return self.macs_before
        if self._on_meta:
            try:
                if self._meta is None:
                    self._meta = _meta_copy(self.model)
                trial = copy.deepcopy(self._meta)
                apply_plan(trial, plan)
                with torch.no_grad(), eval_mode(trial):
                    return count_macs(trial, self.inputs.to("meta"))[0]
            except Exception as exc:  # noqa: BLE001 - any meta failure: count for real
                _logger.debug("counting on meta failed (%s); counting on a real copy", exc)
                self._on_meta = False
                self._meta = None
        trial = copy.deepcopy(self.model)
        apply_plan(trial, plan)
        with torch.no_grad(), eval_mode(trial):
            return count_macs(trial, self.inputs)[0]


def search_count(
    measure: Callable[[int], int],
    target: int,
    before: int,
    *,
    upper: int,
    what: str,
) -> tuple[int, int]:
    """Bisect the integer ``k`` in ``[0, upper]`` so that ``measure(k)`` (non-increasing in
    ``k``; each step of ``k`` removes one more channel) lands on ``target``. Returns the best
    ``k`` and its measure; raises when even ``upper`` stays above the target."""
    if target >= before or upper == 0:
        return 0, before
    at_upper = measure(upper)
    if at_upper > target * (1 + TOLERANCE):
        raise ConfigError(
            f"{what} cannot get below {at_upper:,} ({at_upper / before:.3f} of {before:,}) with "
            f"these options; the target is {target:,} ({target / before:.3f}). Prune more layers "
            "(fewer ignore= patterns or ratios=None entries), or raise max_ratio"
        )
    lo, lo_value = 0, before  # measure(lo) > target
    hi, hi_value = upper, at_upper  # measure(hi) <= target, unless even upper is above it
    if at_upper > target:
        return upper, at_upper
    while hi - lo > 1:
        mid = (lo + hi) // 2
        value = measure(mid)
        if value > target:
            lo, lo_value = mid, value
        else:
            hi, hi_value = mid, value
    best = (lo, lo_value) if lo_value - target < target - hi_value else (hi, hi_value)
    if abs(best[1] - target) > TOLERANCE * target:
        _logger.warning(
            "%s: reached %s, %.1f%% from the target %s (one channel more or less moves it further)",
            what,
            f"{best[1]:,}",
            100 * abs(best[1] - target) / target,
            f"{target:,}",
        )
    return best
