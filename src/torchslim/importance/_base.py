"""The criterion contract, the registry, and how per-layer scores combine into a group's scores."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from torchslim.errors import ConfigError

__all__ = [
    "Importance",
    "register_importance",
    "get_importance",
    "list_importances",
    "REDUCTIONS",
    "NORMALIZATIONS",
]

_logger = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[[], Importance]] = {}

REDUCTIONS = ("mean", "sum", "max")
"""How the scores of a group's layers (coupled members) combine into one score per channel."""

NORMALIZATIONS = (None, "mean", "max", "sum")
"""How each layer's scores are scaled before they combine (by the mean, max or sum of |score|)."""


class Importance:
    """Scores the channels of a group.

    Contract: ``__call__(group)`` returns a float array of length ``len(group)``, higher = more
    important; it reads the model (``group.graph.model``) and must not modify it.

    Data-driven criteria set ``requires_calibration = True`` and collect their statistics in
    :meth:`prepare`, which :func:`~torchslim.prune_` calls once per traced graph before scoring.
    ``prepare`` must leave the model exactly as it found it (no hooks, same train/eval flags,
    parameters, buffers, ``requires_grad`` flags and ``.grad``) and keep only running sums whose
    size does not depend on the number of batches. Criteria are not thread safe.
    """

    requires_calibration: bool = False

    def prepare(
        self,
        graph: Any,
        calibration: Any = None,
        *,
        batches: int | None = None,
        loss_fn: Callable[..., Any] | None = None,
    ) -> None:
        """Collect what scoring the groups of ``graph`` needs (nothing, for weight criteria).

        Args:
            graph: The :class:`~torchslim.DependencyGraph` whose groups will be scored.
            calibration: Batches to run the model on: a DataLoader or any iterable of
                ``(inputs, targets)`` pairs, input tensors, or dicts of keyword inputs.
            batches: Use at most this many batches (``None``: all).
            loss_fn: ``loss_fn(outputs, targets) -> scalar`` for gradient-based criteria.
        """
        if calibration is not None:
            _logger.warning(
                "importance %s scores weights only; the calibration data is not used",
                type(self).__name__,
            )

    def __call__(self, group: Any) -> np.ndarray:
        raise NotImplementedError


def register_importance(name: str) -> Callable[[type[Importance]], type[Importance]]:
    """Class decorator registering a criterion under ``name`` (constructed without arguments)."""

    def decorator(cls: type[Importance]) -> type[Importance]:
        if name in _REGISTRY:
            raise ConfigError(f"an importance criterion named {name!r} is already registered")
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_importances() -> list[str]:
    """Names of the registered criteria."""
    return sorted(_REGISTRY)


def get_importance(importance: str | Importance) -> Importance:
    """Resolve a name or instance; an unknown name lists the known ones."""
    if isinstance(importance, Importance):
        return importance
    if importance not in _REGISTRY:
        on_data = [n for n, cls in _REGISTRY.items() if getattr(cls, "requires_calibration", False)]
        weights = [n for n in _REGISTRY if n not in on_data]
        raise ConfigError(
            f"unknown importance {importance!r}; known: {', '.join(weights)}; on calibration "
            f"data: {', '.join(on_data)} (or pass an instance of a ts.Importance subclass)"
        )
    return _REGISTRY[importance]()


def check_choice(what: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def per_channel(values: np.ndarray, group: Any, k: int) -> np.ndarray:
    """Sum ``values`` (one per index of member ``k``'s dimension) over each channel's indices."""
    flat, offsets = group.member_pieces(k)
    return np.add.reduceat(values[flat], offsets)


def combine(per_layer: Sequence[np.ndarray], reduction: str, normalize: str | None) -> np.ndarray:
    """One score per channel from each layer's scores: scale each layer by ``normalize``, then
    reduce over layers (``mean``, ``sum`` or ``max``)."""
    stacked = np.stack([_normalized(np.asarray(s, dtype=float), normalize) for s in per_layer])
    if reduction == "mean":
        return stacked.mean(axis=0)
    if reduction == "sum":
        return stacked.sum(axis=0)
    return stacked.max(axis=0)


def lamp_transform(scores: np.ndarray) -> np.ndarray:
    """LAMP's transform (Lee et al., ICLR 2021): with the scores sorted ascending, each divided by
    the sum of the magnitudes of the scores at least as large, so the largest scores 1."""
    scores = np.asarray(scores, dtype=float)
    order = np.argsort(scores, kind="stable")
    tail = np.cumsum(np.abs(scores[order])[::-1])[::-1]  # each score and every score above it
    out = np.zeros_like(scores)
    out[order] = np.divide(scores[order], tail, out=np.zeros_like(tail), where=tail > 0)
    return out


def _normalized(scores: np.ndarray, normalize: str | None) -> np.ndarray:
    if normalize is None:
        return scores
    magnitude = np.abs(scores)
    scale = {"mean": magnitude.mean, "max": magnitude.max, "sum": magnitude.sum}[normalize]()
    return scores / scale if scale > 0 else scores


class Combined(Importance):
    """Base of the built-in criteria: per-layer scores combined by ``reduction`` after scaling
    each layer's scores by ``normalize``."""

    def __init__(self, reduction: str = "mean", normalize: str | None = None) -> None:
        check_choice("reduction", reduction, REDUCTIONS)
        check_choice("normalize", normalize, NORMALIZATIONS)
        self.reduction = reduction
        self.normalize = normalize

    def combine(self, per_layer: Sequence[np.ndarray]) -> np.ndarray:
        return combine(per_layer, self.reduction, self.normalize)
