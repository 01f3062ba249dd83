"""Importance criteria: score every channel of a group; the lowest scores are removed first.

A criterion is a small class with one method, ``__call__(group) -> scores`` (one float per channel
of the group, higher = more important), registered by name:

    @ts.register_importance("mine")
    class Mine(ts.Importance):
        def __call__(self, group):
            ...

Anything that takes a criterion takes its name or an instance (``"l2"`` or ``Magnitude(p=1)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from torchslim.errors import ConfigError

__all__ = [
    "Importance",
    "Magnitude",
    "RandomImportance",
    "register_importance",
    "get_importance",
    "list_importances",
]

_REGISTRY: dict[str, Callable[[], Importance]] = {}


class Importance:
    """Scores the channels of a group.

    Contract: ``__call__(group)`` returns a float array of length ``len(group)``; it reads the model
    (``group.graph.model``) and must not modify it.
    """

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
    return sorted(_REGISTRY)


def get_importance(importance: str | Importance) -> Importance:
    """Resolve a name or instance; an unknown name lists the known ones."""
    if isinstance(importance, Importance):
        return importance
    if importance not in _REGISTRY:
        raise ConfigError(
            f"unknown importance {importance!r}; known: {', '.join(list_importances())}"
        )
    return _REGISTRY[importance]()


class Magnitude(Importance):
    """Sum over the group's parameters of the L-p norm of each channel's weights (``l1``, ``l2``).

    Buffers (running statistics) are not weights and are left out.
    """

    def __init__(self, p: float = 2.0) -> None:
        if p <= 0:
            raise ConfigError(f"p must be > 0, got {p}")
        self.p = p

    def __call__(self, group: Any) -> np.ndarray:
        tensors = group.graph.tensors
        scores = np.zeros(len(group))
        for k, m in enumerate(group.members):
            t = tensors.get(m.tensor)
            if not isinstance(t, torch.nn.Parameter):
                continue
            with torch.no_grad():
                w = t.detach().float().abs().pow(self.p)
                others = [d for d in range(w.dim()) if d != m.dim]
                per_index = (w.sum(dim=others) if others else w).cpu().numpy()
            taken = [channel[k] for channel in group.indices]
            starts = np.cumsum([0] + [len(t) for t in taken[:-1]])
            scores += np.add.reduceat(per_index[np.concatenate(taken)], starts)
        return scores ** (1.0 / self.p)


@register_importance("l1")
class L1(Magnitude):
    def __init__(self) -> None:
        super().__init__(p=1.0)


@register_importance("l2")
class L2(Magnitude):
    def __init__(self) -> None:
        super().__init__(p=2.0)


@register_importance("random")
class RandomImportance(Importance):
    """Uniform random scores (a baseline); ``seed`` makes them reproducible."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, group: Any) -> np.ndarray:
        return self.rng.random(len(group))
