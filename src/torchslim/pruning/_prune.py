"""``ts.prune_``: structured pruning in place, with a plan and before/after profiles."""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from torchslim._inputs import as_inputs
from torchslim._patterns import first_match
from torchslim.errors import ConfigError, PruningError
from torchslim.graph import trace
from torchslim.importance import Importance, get_importance
from torchslim.importance._calibration import check_calibration
from torchslim.profiling import Profile, profile
from torchslim.profiling._counting import MacCounter
from torchslim.pruning._plan import PruningPlan, plan_from_removals
from torchslim.pruning._surgery import apply_plan

__all__ = ["PruneResult", "prune_"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune_` did: the plan, the model's profile before and after, and the groups kept
    whole because pruning them broke the model (their modules, and why)."""

    plan: PruningPlan
    before: Profile
    after: Profile
    skipped: tuple[tuple[tuple[str, ...], str], ...] = ()

    def table(self) -> str:
        """Before/after comparison of params, MACs and (where measured) latency."""
        from torchslim.profiling import human

        rows = [("", "before", "after", "after/before")]

        def add(label: str, a: float, b: float, fmt) -> None:
            rows.append((label, fmt(a), fmt(b), f"{b / a:.3f}" if a else "-"))

        add("params", self.before.params, self.after.params, human)
        add("MACs", self.before.macs, self.after.macs, human)
        if self.before.latency and self.after.latency:
            add(
                "latency (ms)",
                self.before.latency.median_ms,
                self.after.latency.median_ms,
                lambda v: f"{v:.3f}",
            )
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
            for r in rows
        )


def _check_ratio(value: Any, what: str) -> None:
    if value is not None and not (isinstance(value, (int, float)) and 0 <= value < 1):
        raise ConfigError(f"{what} must be a number in [0, 1) or None, got {value!r}")


def _keep_count(n: int, ratio: float, round_to: int | None, min_channels: int) -> int:
    keep = n - int(math.floor(ratio * n + 1e-9))
    if round_to:
        keep = max(round_to, int(round(keep / round_to)) * round_to)
    return min(n, max(keep, min_channels))


def prune_(
    model: nn.Module,
    example_inputs: Any,
    *,
    ratio: float = 0.5,
    importance: str | Importance = "l2",
    ignore: Iterable[str] = (),
    ratios: Mapping[str, float | None] | None = None,
    global_ranking: bool = False,
    round_to: int | None = None,
    min_channels: int = 1,
    measure_latency: bool = False,
    attention: str = "heads",
    calibration: Iterable[Any] | None = None,
    calibration_batches: int | None = None,
    loss_fn: Callable[..., Any] | None = None,
) -> PruneResult:
    """Structurally prune ``model`` in place: remove channels, so the model really shrinks.

    Coupled layers (residual adds, concatenations, depthwise convs, flatten into linear, …) are
    found by tracing the model on ``example_inputs``; every group of coupled dimensions loses the
    same channels, chosen by ``importance``. The model's outputs keep their shape (the final
    classifier keeps its classes). All or nothing: on any failure the model is restored exactly.

    Args:
        model: The model to prune.
        example_inputs: A tensor, a tuple of tensors, or a dict of keyword inputs.
        ratio: Fraction of each group's channels to remove.
        importance: Criterion name (``"l2"``, ``"l1"``, ``"fpgm"``, ``"energy"``, …; see
            ``ts.list_importances()``) or instance.
        ignore: Module-name patterns (exact, glob, ``re:``) to keep whole.
        ratios: Per-module ratios by pattern; the first pattern matching a group's module wins;
            ``None`` keeps the group whole.
        global_ranking: Rank channels across groups (scores normalised per group) and remove the
            lowest ``ratio`` of all channels, instead of ``ratio`` of each group.
        round_to: Keep channel counts multiples of this (hardware-friendly widths).
        min_channels: Never keep fewer channels than this in a group.
        measure_latency: Also measure latency in the before/after profiles.
        attention: How attention widths shrink: ``"heads"`` removes whole heads (and updates
            ``num_heads``), ``"head_dim"`` removes the same dimensions from every head.
        calibration: Data for data-driven criteria (``taylor``, ``activation``, ``hrank``,
            ``energy``, ``lrp``): a DataLoader or any iterable of batches (``(inputs, targets)``
            pairs, tensors, or keyword dicts). The model runs on it in eval mode and is left
            exactly as it was.
        calibration_batches: Use at most this many calibration batches (``None``: all).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` for gradient criteria (``taylor``);
            default: cross-entropy on ``(inputs, targets)`` batches.

    Returns:
        A :class:`PruneResult` with the plan and before/after profiles.
    """
    _check_ratio(ratio, "ratio")
    for pattern, value in (ratios or {}).items():
        _check_ratio(value, f"ratios[{pattern!r}]")
    if round_to is not None and round_to < 1:
        raise ConfigError(f"round_to must be >= 1, got {round_to}")
    if min_channels < 1:
        raise ConfigError(f"min_channels must be >= 1, got {min_channels}")
    check_calibration(get_importance(importance), calibration, calibration_batches)
    with _gc_paused():  # tracing allocates many small objects; a full collection mid-way is slow
        return _prune(
            model,
            example_inputs,
            ratio=ratio,
            importance=importance,
            ignore=ignore,
            ratios=ratios,
            global_ranking=global_ranking,
            round_to=round_to,
            min_channels=min_channels,
            measure_latency=measure_latency,
            attention=attention,
            calibration=calibration,
            calibration_batches=calibration_batches,
            loss_fn=loss_fn,
        )


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _prune(
    model: nn.Module,
    example_inputs: Any,
    *,
    ratio: float,
    importance: str | Importance,
    ignore: Iterable[str],
    ratios: Mapping[str, float | None] | None,
    global_ranking: bool,
    round_to: int | None,
    min_channels: int,
    measure_latency: bool,
    attention: str,
    calibration: Iterable[Any] | None = None,
    calibration_batches: int | None = None,
    loss_fn: Callable[..., Any] | None = None,
) -> PruneResult:
    inputs = as_inputs(example_inputs)
    criterion = get_importance(importance)
    options = {
        "ratio": ratio,
        "importance": importance if isinstance(importance, str) else type(importance).__name__,
        "ignore": list(ignore),
        "ratios": dict(ratios or {}),
        "global_ranking": global_ranking,
        "round_to": round_to,
        "min_channels": min_channels,
        "attention": attention,
    }
    counted = MacCounter(model)  # MACs before are counted while tracing: one forward pass less
    graph = trace(model, inputs, ignore=ignore, attention=attention, _alongside=counted)
    criterion.prepare(graph, calibration, batches=calibration_batches, loss_fn=loss_fn)
    before = profile(
        model, inputs, latency=measure_latency, memory=False, _counted=counted.result()
    )

    targets: list[tuple[Any, float]] = []
    for group in graph.groups():
        group_ratio = ratio
        if ratios:
            pattern = first_match(group.modules, ratios)
            if pattern is not None:
                group_ratio = ratios[pattern]
        if group_ratio:
            targets.append((group, group_ratio))

    removals = []
    if global_ranking and targets:
        scored = []
        for group, _ in targets:
            s = np.asarray(criterion(group), dtype=float)
            scored.append(s / (s.mean() + 1e-12))
        total = sum(len(g) for g, _ in targets)
        budget = int(math.floor(ratio * total))
        pool = sorted((float(s[c]), gi, c) for gi, s in enumerate(scored) for c in range(len(s)))
        chosen: dict[int, list[int]] = {gi: [] for gi in range(len(targets))}
        for _, gi, c in pool:
            if budget == 0:
                break
            group = targets[gi][0]
            if len(group) - len(chosen[gi]) - 1 < min_channels:
                continue
            chosen[gi].append(c)
            budget -= 1
        for gi, channels in chosen.items():
            group = targets[gi][0]
            if round_to:  # give back channels so that the kept count is a multiple
                keep = len(group) - len(channels)
                extra = (-keep) % round_to
                channels = sorted(channels, key=lambda c: -scored[gi][c])[extra:]
            removals.append((group, sorted(channels)))
    else:
        for group, group_ratio in targets:
            keep = _keep_count(len(group), group_ratio, round_to, min_channels)
            if keep >= len(group):
                continue
            scores = np.asarray(criterion(group), dtype=float)
            if scores.shape != (len(group),):
                raise ConfigError(
                    f"importance {options['importance']!r} returned {scores.shape} scores for a "
                    f"group of {len(group)} channels"
                )
            order = np.argsort(scores, kind="stable")
            removals.append((group, sorted(order[: len(group) - keep].tolist())))

    plan, skipped, counted = _apply_largest_working(
        model, removals, options, inputs, graph.output_shapes
    )
    after = profile(model, inputs, latency=measure_latency, memory=False, _counted=counted.result())
    _logger.info(
        "pruned %s: params %d -> %d, MACs %d -> %d",
        type(model).__name__,
        before.params,
        after.params,
        before.macs,
        after.macs,
    )
    return PruneResult(plan=plan, before=before, after=after, skipped=tuple(skipped))


def _apply_largest_working(
    model: nn.Module, removals: list, options: dict, inputs: Any, reference: list
) -> tuple[PruningPlan, list[tuple[tuple[str, ...], str]], MacCounter]:
    """Apply all removals; if the pruned model fails, find the groups at fault by bisection on
    copies of the model, leave them whole, and apply the rest. Returns the plan, the skipped
    groups (their modules and the reason), and the MACs counted while verifying the result."""
    skipped: list[tuple[tuple[str, ...], str]] = []
    first_error: PruningError | None = None
    pending = list(removals)
    for _ in range(3):
        plan = plan_from_removals(model, pending, options)
        counted = MacCounter(model)
        try:
            apply_plan(model, plan, verify_inputs=inputs, reference=reference, _alongside=counted)
            return plan, skipped, counted
        except PruningError as exc:
            first_error = first_error or exc
            if len(pending) <= 1:
                break
        faulty = _faulty_groups(model, pending, options, inputs, reference)
        if not faulty:
            break
        bad = {id(g) for g, _ in faulty}
        for group, reason in faulty:
            _logger.warning("keeping group %s whole: %s", ", ".join(group.modules[:4]), reason)
            skipped.append((tuple(group.modules), reason))
        pending = [r for r in pending if id(r[0]) not in bad]
    raise first_error


def _faulty_groups(
    model: nn.Module, removals: list, options: dict, inputs: Any, reference: list
) -> list:
    """Bisect ``removals`` on copies of the model: the single groups whose pruning fails."""
    trial = copy.deepcopy(model)
    try:
        plan = plan_from_removals(trial, removals, options)
        apply_plan(trial, plan, verify_inputs=inputs, reference=reference)
        return []
    except PruningError as exc:
        if len(removals) == 1:
            return [(removals[0][0], str(exc))]
    mid = len(removals) // 2
    return _faulty_groups(model, removals[:mid], options, inputs, reference) + _faulty_groups(
        model, removals[mid:], options, inputs, reference
    )
