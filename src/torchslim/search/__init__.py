"""Hardware-aware architecture search on Optuna: spaces, evaluators, samplers, latency model.

``ts.search(space, evaluator, objectives=..., budget=...)`` runs a study and returns its Pareto
front. This package is itself callable, so ``ts.search(...)`` and ``ts.search.SearchSpace`` both
work whether or not ``torchslim.search`` has been imported.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from torchslim.search._space import (
    Evaluator,
    SearchSpace,
    get_evaluator,
    get_search_space,
    list_evaluators,
    list_search_spaces,
    register_evaluator,
    register_search_space,
)

# each module of this package adds its public names below, next to its own import
__all__ = [
    "SearchSpace",
    "Evaluator",
    "register_search_space",
    "get_search_space",
    "list_search_spaces",
    "register_evaluator",
    "get_evaluator",
    "list_evaluators",
]


class _CallableModule(types.ModuleType):
    """``ts.search(...)`` calls :func:`torchslim.search.search`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
