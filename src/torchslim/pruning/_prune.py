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
from torchslim.importance._base import lamp_transform
from torchslim.importance._calibration import check_calibration
from torchslim.profiling import Profile, profile
from torchslim.profiling._counting import MacCounter
from torchslim.pruning._plan import PruningPlan, plan_from_removals
from torchslim.pruning._surgery import apply_plan
from torchslim.pruning._targets import PlanCounter, resolve_target, search_count

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
    #: with ``steps > 1``: each step's own result
    steps: tuple[PruneResult, ...] = ()

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


@dataclass(frozen=True)
class _Settings:
    """The options of one :func:`prune_` call, checked."""

    importance: str | Importance
    ignore: tuple[str, ...]
    ratios: Mapping[str, float | None]
    global_ranking: bool | str
    round_to: int | None
    min_channels: int
    max_ratio: float | None
    measure_latency: bool
    attention: str
    calibration: Iterable[Any] | None
    calibration_batches: int | None
    loss_fn: Callable[..., Any] | None
    group_ratios: Callable[[Any], float | None] | None = None

    def record(self, **more: Any) -> dict[str, Any]:
        """The options as the plan records them (JSON)."""
        importance = self.importance
        return {
            "importance": importance if isinstance(importance, str) else type(importance).__name__,
            "ignore": list(self.ignore),
            "ratios": dict(self.ratios),
            "global_ranking": self.global_ranking,
            "round_to": self.round_to,
            "min_channels": self.min_channels,
            "max_ratio": self.max_ratio,
            "attention": self.attention,
            **more,
        }


def prune_(
    model: nn.Module,
    example_inputs: Any,
    *,
    ratio: float = 0.5,
    importance: str | Importance = "l2",
    ignore: Iterable[str] = (),
    ratios: Mapping[str, float | None] | None = None,
    global_ranking: bool | str = False,
    round_to: int | None = None,
    min_channels: int = 1,
    max_ratio: float | None = None,
    target_macs: float | int | None = None,
    target_params: float | int | None = None,
    steps: int = 1,
    callback: Callable[[int, nn.Module, PruneResult], Any] | None = None,
    measure_latency: bool = False,
    attention: str = "heads",
    calibration: Iterable[Any] | None = None,
    calibration_batches: int | None = None,
    loss_fn: Callable[..., Any] | None = None,
    group_ratios: Callable[[Any], float | None] | None = None,
) -> PruneResult:
    """Structurally prune ``model`` in place: remove channels, so the model really shrinks.

    Coupled layers (residual adds, concatenations, depthwise convs, flatten into linear, …) are
    found by tracing the model on ``example_inputs``; every group of coupled dimensions loses the
    same channels, chosen by ``importance``. The model's outputs keep their shape (the final
    classifier keeps its classes). All or nothing: on any failure the model is restored exactly
    (with ``steps > 1``, to the end of the last step that succeeded).

    Args:
        model: The model to prune.
        example_inputs: A tensor, a tuple of tensors, or a dict of keyword inputs.
        ratio: Fraction of each group's channels to remove (with ``global_ranking``, of all
            channels). Ignored when a target is given.
        importance: Criterion name (``"l2"``, ``"l1"``, ``"fpgm"``, ``"energy"``, …; see
            ``ts.list_importances()``) or instance.
        ignore: Module-name patterns (exact, glob, ``re:``) to keep whole.
        ratios: Per-module ratios by pattern; the first pattern matching a group's module wins;
            ``None`` keeps the group whole. With a target, these groups keep their own ratio and
            the others share the searched one.
        global_ranking: Rank channels across groups and remove the lowest ``ratio`` of all
            channels, instead of ``ratio`` of each group. So that groups compare, each group's
            scores are first scaled: ``True`` or ``"mean"`` divides them by their mean magnitude;
            ``"max"`` and ``"sum"`` by those; ``"lamp"`` applies LAMP's transform to them
            (sorted ascending, each score divided by the sum of the scores at least as large,
            so every group's best channel scores 1; Lee et al., ICLR 2021); ``"none"`` compares
            them as they are (criteria whose scores already compare across layers).
        round_to: Keep channel counts multiples of this (hardware-friendly widths).
        min_channels: Never keep fewer channels than this in a group.
        max_ratio: Never remove more than this fraction of any group.
        target_macs: Prune until the model has this many MACs: a float in (0, 1] is a fraction
            of the original, an int an absolute count. Reached within 2%, measured by a forward
            pass, not estimated.
        target_params: The same for the parameter count. At most one target.
        steps: Reach the ratio or target in this many steps (iterative pruning): each step
            traces and scores the model again, and removes an equal share (geometric: the same
            fraction of what is left).
        callback: ``callback(step, model, step_result)`` after every step (``1..steps``), e.g. to
            fine-tune before the next step scores the channels.
        measure_latency: Also measure latency in the before/after profiles.
        attention: How attention widths shrink: ``"heads"`` removes whole heads (and updates
            ``num_heads``), ``"head_dim"`` removes the same dimensions from every head.
        calibration: Data for data-driven criteria (``taylor``, ``activation``, ``hrank``,
            ``energy``, ``lrp``): a DataLoader or any iterable of batches (``(inputs, targets)``
            pairs, tensors, or keyword dicts). The model runs on it in eval mode and is left
            exactly as it was. With ``steps > 1`` it must be re-iterable (a DataLoader or list).
        calibration_batches: Use at most this many calibration batches (``None``: all).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` for gradient criteria (``taylor``);
            default: cross-entropy on ``(inputs, targets)`` batches.
        group_ratios: ``group_ratios(group) -> ratio or None`` decides every traced group's own
            ratio (``None`` or 0 keeps it whole), instead of ``ratio`` and ``ratios``: for
            callers that choose per group, such as a width search. Not with a target or
            ``global_ranking`` or ``steps``. The plan's options record the ratios chosen, with
            each group's first module.

    Returns:
        A :class:`PruneResult` with the plan (all steps composed) and the profiles before the
        first and after the last step; ``steps`` holds each step's own result.
    """
    _check_ratio(ratio, "ratio")
    for pattern, value in (ratios or {}).items():
        _check_ratio(value, f"ratios[{pattern!r}]")
    if round_to is not None and round_to < 1:
        raise ConfigError(f"round_to must be >= 1, got {round_to}")
    if min_channels < 1:
        raise ConfigError(f"min_channels must be >= 1, got {min_channels}")
    if max_ratio is not None and not (isinstance(max_ratio, (int, float)) and 0 < max_ratio < 1):
        raise ConfigError(f"max_ratio must be a number in (0, 1) or None, got {max_ratio!r}")
    if target_macs is not None and target_params is not None:
        raise ConfigError("pass one of target_macs and target_params, not both")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    if callback is not None and not callable(callback):
        raise ConfigError(f"callback must be callable, got {type(callback).__name__}")
    if group_ratios is not None:
        if not callable(group_ratios):
            raise ConfigError(
                f"group_ratios must be callable (group -> ratio), got {type(group_ratios).__name__}"
            )
        if target_macs is not None or target_params is not None or global_ranking or steps > 1:
            raise ConfigError(
                "group_ratios sets every group's ratio: it cannot be combined with target_macs, "
                "target_params, global_ranking or steps > 1"
            )
    if steps > 1 and calibration is not None and iter(calibration) is calibration:
        raise ConfigError(
            "with steps > 1 every step calibrates again: pass a DataLoader or a list as "
            "calibration=, not a one-shot iterator"
        )
    if global_ranking not in (False, True, *GLOBAL_SCALINGS):
        raise ConfigError(
            f"global_ranking must be True, False or one of {', '.join(map(repr, GLOBAL_SCALINGS))}"
            f" (how each group's scores are scaled before ranking across groups); "
            f"got {global_ranking!r}"
        )
    criterion = get_importance(importance)
    check_calibration(criterion, calibration, calibration_batches)
    settings = _Settings(
        importance=importance,
        ignore=tuple(ignore),
        ratios=dict(ratios or {}),
        global_ranking=global_ranking,
        round_to=round_to,
        min_channels=min_channels,
        max_ratio=max_ratio,
        measure_latency=measure_latency,
        attention=attention,
        calibration=calibration,
        calibration_batches=calibration_batches,
        loss_fn=loss_fn,
        group_ratios=group_ratios,
    )
    kind, value = (
        ("macs", target_macs)
        if target_macs is not None
        else ("params", target_params)
        if target_params is not None
        else (None, None)
    )
    inputs = as_inputs(example_inputs)
    results: list[PruneResult] = []
    goal: int | None = None  # the final target, as an absolute count
    for step in range(1, steps + 1):
        with _gc_paused():  # tracing allocates many small objects; a full collection is slow
            if kind is None:
                # the same share of what is left (one step: the ratio itself, not 1 - (1 - r))
                step_ratio = ratio if steps == 1 else 1 - (1 - ratio) ** (1 / steps)
                result = _prune(model, inputs, settings, get_importance(importance), step_ratio)
            else:
                result = _prune(
                    model,
                    inputs,
                    settings,
                    get_importance(importance),
                    None,
                    target=(kind, value, goal, step, steps),
                    original=results[0].before if results else None,
                )
        if goal is None and kind is not None:
            goal = resolve_target(value, _metric(result.before, kind), f"target_{kind}")
        results.append(result)
        if callback is not None:
            callback(step, model, result)
    if len(results) == 1:
        return results[0]
    plan = results[0].plan
    for later in results[1:]:
        plan = plan.then(later.plan)
    return PruneResult(
        plan=plan,
        before=results[0].before,
        after=results[-1].after,
        skipped=tuple(s for r in results for s in r.skipped),
        steps=tuple(results),
    )


def _metric(profile_: Profile, kind: str) -> int:
    return int(profile_.macs if kind == "macs" else profile_.params)


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
    inputs: Any,
    settings: _Settings,
    criterion: Importance,
    ratio: float | None,
    *,
    target: tuple[str, Any, int | None, int, int] | None = None,
    original: Profile | None = None,
) -> PruneResult:
    """One step: trace, score, choose (by ``ratio``, or by searching for ``target``), apply."""
    counted = MacCounter(model)  # MACs before are counted while tracing: one forward pass less
    graph = trace(
        model, inputs, ignore=settings.ignore, attention=settings.attention, _alongside=counted
    )
    criterion.prepare(
        graph, settings.calibration, batches=settings.calibration_batches, loss_fn=settings.loss_fn
    )
    before = profile(
        model, inputs, latency=settings.measure_latency, memory=False, _counted=counted.result()
    )
    chooser = _Chooser(graph, settings, criterion)
    if target is None:
        assert ratio is not None
        searched = ratio
        removals = chooser.removals(ratio)
    else:
        kind, value, goal, step, steps = target
        first = original or before
        if goal is None:
            goal = resolve_target(value, _metric(first, kind), f"target_{kind}")
        # this step's share of the way, geometric in the metric
        step_goal = int(
            round(_metric(first, kind) * (goal / _metric(first, kind)) ** (step / steps))
        )
        counter = PlanCounter(model, inputs, before.macs)

        def measure(k: int) -> int:
            plan = plan_from_removals(model, chooser.removals_at(k), {})
            return counter.macs(plan) if kind == "macs" else counter.params(plan)

        count, _ = search_count(
            measure, step_goal, _metric(before, kind), upper=chooser.most, what=f"target_{kind}"
        )
        removals = chooser.removals_at(count)
        searched = sum(len(c) for _, c in removals) / max(1, chooser.channels)
    if settings.group_ratios is not None:  # what the function chose, by the groups' first module
        searched = sum(len(c) for _, c in removals) / max(1, chooser.channels)
        chosen = [[g.modules[0], own] for g, own in chooser.entries]
    options = settings.record(
        ratio=searched,
        **({} if settings.group_ratios is None else {"group_ratios": chosen}),
        **({} if target is None else {f"target_{target[0]}": target[1]}),
        **({} if target is None or target[4] == 1 else {"step": target[3], "steps": target[4]}),
    )
    plan, skipped, counted = _apply_largest_working(
        model, removals, options, inputs, graph.output_shapes
    )
    after = profile(
        model, inputs, latency=settings.measure_latency, memory=False, _counted=counted.result()
    )
    _logger.info(
        "pruned %s: params %d -> %d, MACs %d -> %d",
        type(model).__name__,
        before.params,
        after.params,
        before.macs,
        after.macs,
    )
    return PruneResult(plan=plan, before=before, after=after, skipped=tuple(skipped))


_FREE = object()  # a group without its own ``ratios`` entry: it takes the shared ratio


class _Chooser:
    """Scores every group once; then, for any shared ratio, which channels each group loses."""

    def __init__(self, graph: Any, settings: _Settings, criterion: Importance) -> None:
        self.settings = settings
        self.entries: list[tuple[Any, Any]] = []  # (group, own ratio or _FREE)
        for group in graph.groups():
            own: Any = _FREE
            if settings.group_ratios is not None:
                own = settings.group_ratios(group)
                _check_ratio(own, f"group_ratios(group of {', '.join(group.modules[:2])})")
            elif settings.ratios:
                pattern = first_match(group.modules, settings.ratios)
                if pattern is not None:
                    own = settings.ratios[pattern]
            if own is _FREE or own:
                self.entries.append((group, own))
        name = settings.importance if isinstance(settings.importance, str) else None
        self.scores = []
        for group, _ in self.entries:
            scores = np.asarray(criterion(group), dtype=float)
            if scores.shape != (len(group),):
                raise ConfigError(
                    f"importance {name or type(criterion).__name__!r} returned {scores.shape} "
                    f"scores for a group of {len(group)} channels"
                )
            self.scores.append(scores)
        self.order = [np.argsort(s, kind="stable") for s in self.scores]
        if settings.global_ranking and self.entries:
            scaling = "mean" if settings.global_ranking is True else settings.global_ranking
            normalised = [global_scale(s, scaling) for s in self.scores]
            flat = np.concatenate(normalised)
            owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(normalised)])
            channel = np.concatenate([np.arange(len(s)) for s in normalised])
            # equal scores (HRank's ranks saturate at full rank) go in turn across their groups,
            # by the share of its group each channel's removal would take, not group by group
            share = np.concatenate(
                [(np.argsort(np.argsort(o, kind="stable")) + 1) / len(o) for o in self.order]
            )
            rank = np.lexsort((channel, owner, share, flat))
            self.pool = (owner[rank], channel[rank])
            self.normalised = normalised

        # for targets: removing one channel at a time, in a fixed order (see removals_at)
        self.channels = sum(len(g) for g, _ in self.entries)
        if settings.global_ranking:
            self.most = sum(self._cap(len(g)) for g, _ in self.entries)
        else:
            events = []  # (share removed after it, group, count): the next allowed count
            for gi, (group, own) in enumerate(self.entries):
                if own is not _FREE:
                    continue
                n = len(group)
                for count in range(1, self._cap(n) + 1):
                    if settings.round_to and (n - count) % settings.round_to:
                        continue
                    events.append((count / n, gi, count))
            events.sort()
            self.events = events
            self.most = len(events)

    def _cap(self, n: int) -> int:
        """The most channels a group of ``n`` may lose."""
        s = self.settings
        cap = n - s.min_channels
        if s.max_ratio is not None:
            cap = min(cap, int(math.floor(s.max_ratio * n + 1e-9)))
        return max(cap, 0)

    def removals(self, ratio: float) -> list[tuple[Any, list[int]]]:
        s = self.settings
        if s.global_ranking:
            return self._global(int(math.floor(ratio * self.channels + 1e-9)))
        out = []
        for (group, own), order in zip(self.entries, self.order, strict=True):
            r = ratio if own is _FREE else own
            keep = _keep_count(len(group), r, s.round_to, s.min_channels)
            keep = max(keep, len(group) - self._cap(len(group)))
            if keep < len(group):
                out.append((group, sorted(order[: len(group) - keep].tolist())))
        return out

    def removals_at(self, k: int) -> list[tuple[Any, list[int]]]:
        """The first ``k`` single-channel removals: under global ranking the ``k`` lowest
        channels overall; otherwise groups lose channels in turn, the group whose share removed
        would stay lowest first (groups with their own ratio keep it)."""
        if self.settings.global_ranking:
            return self._global(k)
        counts = {}
        for _, gi, count in self.events[:k]:
            counts[gi] = count
        out = []
        for gi, ((group, own), order) in enumerate(zip(self.entries, self.order, strict=True)):
            if own is _FREE:
                gone = counts.get(gi, 0)
            else:
                keep = _keep_count(
                    len(group), own, self.settings.round_to, self.settings.min_channels
                )
                gone = min(len(group) - keep, self._cap(len(group)))
            if gone:
                out.append((group, sorted(order[:gone].tolist())))
        return out

    def _global(self, budget: int) -> list[tuple[Any, list[int]]]:
        s = self.settings
        if not self.entries:
            return []
        caps = [self._cap(len(g)) for g, _ in self.entries]
        chosen: list[list[int]] = [[] for _ in self.entries]
        owners, channels = self.pool
        for gi, c in zip(owners.tolist(), channels.tolist(), strict=True):
            if budget == 0:
                break
            if len(chosen[gi]) >= caps[gi]:
                continue
            chosen[gi].append(c)
            budget -= 1
        out = []
        for gi, picked in enumerate(chosen):
            group = self.entries[gi][0]
            if s.round_to:  # give back channels so that the kept count is a multiple
                extra = (-(len(group) - len(picked))) % s.round_to
                picked = sorted(picked, key=lambda c: -self.normalised[gi][c])[extra:]
            if picked:
                out.append((group, sorted(picked)))
        return out


#: How ``global_ranking`` scales each group's scores so that groups compare.
GLOBAL_SCALINGS = ("mean", "max", "sum", "lamp", "none")


def global_scale(scores: np.ndarray, scaling: str) -> np.ndarray:
    """One group's scores scaled for a global ranking (see ``prune_(global_ranking=...)``)."""
    scores = np.asarray(scores, dtype=float)
    if scaling == "none" or not len(scores):
        return scores
    if scaling == "lamp":
        return lamp_transform(scores)
    magnitude = np.abs(scores)
    scale = {"mean": magnitude.mean, "max": magnitude.max, "sum": magnitude.sum}[scaling]()
    return scores / (scale + 1e-12)


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
