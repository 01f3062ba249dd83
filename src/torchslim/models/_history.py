"""What torchslim did to a model in this process, in order, so that ``ts.save`` can record it.

Each entry is ``(kind, plan)``: ``("prune", PruningPlan)``, ``("decompose",
DecompositionPlan)`` or ``("remove_blocks", BlockRemovalPlan)`` (residual blocks replaced by
``nn.Identity``, :func:`torchslim.search.remove_blocks_`). Consecutive pruning plans are
composed into one (``PruningPlan.then``), so a model pruned in steps is stored as one plan; a
decomposition or block removal in between starts a new entry, since the layers after it have new
names or shapes.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import nn

__all__ = ["record_transform", "transforms"]

_HISTORY: weakref.WeakKeyDictionary[nn.Module, list[tuple[str, Any]]] = weakref.WeakKeyDictionary()


def record_transform(model: nn.Module, kind: str, plan: Any) -> None:
    """Append ``plan`` to ``model``'s history (composing it with a pruning plan just before)."""
    history = _HISTORY.setdefault(model, [])
    if kind == "prune" and history and history[-1][0] == "prune":
        history[-1] = ("prune", history[-1][1].then(plan))
    else:
        history.append((kind, plan))


def transforms(model: nn.Module) -> list[tuple[str, Any]]:
    """The transforms applied to ``model`` in this process, oldest first."""
    return list(_HISTORY.get(model, ()))
