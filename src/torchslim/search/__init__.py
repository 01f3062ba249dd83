"""Hardware-aware architecture search on Optuna: spaces, evaluators, samplers, latency model.

``ts.search(space, evaluator, objectives=..., budget=...)`` runs a study and returns its Pareto
front. This package is itself callable, so ``ts.search(...)`` and ``ts.search.SearchSpace`` both
work whether or not ``torchslim.search`` has been imported.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

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

from torchslim.search._blocks import (  # noqa: E402
    BlockRemovalPlan,
    apply_block_removal,
    find_residual_blocks,
    remove_blocks_,
)
from torchslim.search._width import WidthCandidate, WidthEvaluator, WidthSpace  # noqa: E402

__all__ += [
    "BlockRemovalPlan",
    "apply_block_removal",
    "find_residual_blocks",
    "remove_blocks_",
    "WidthSpace",
    "WidthEvaluator",
    "WidthCandidate",
]

from torchslim.search._config import SearchConfig  # noqa: E402
from torchslim.search._engine import Search, run_config, search  # noqa: E402
from torchslim.search._proxies import (  # noqa: E402
    get_proxy,
    grad_norm,
    list_proxies,
    naswot,
    prescreen,
    register_proxy,
    snip,
    synflow,
)
from torchslim.search._result import SearchResult, TrialRecord  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from torchslim.search._samplers import (
        RegularizedEvolutionSampler,
        get_sampler,
        list_samplers,
        register_sampler,
    )

__all__ += [
    "search",
    "Search",
    "SearchResult",
    "TrialRecord",
    "SearchConfig",
    "run_config",
    "register_sampler",
    "get_sampler",
    "list_samplers",
    "RegularizedEvolutionSampler",
    "register_proxy",
    "get_proxy",
    "list_proxies",
    "synflow",
    "naswot",
    "grad_norm",
    "snip",
    "prescreen",
]

from torchslim.search._latency_model import LatencyCorrection, LatencyPrediction  # noqa: E402
from torchslim.search._latency_table import LatencyTable  # noqa: E402

__all__ += ["LatencyTable", "LatencyPrediction", "LatencyCorrection"]

from torchslim.search._nas201 import (  # noqa: E402
    NasBench201Network,
    NasBench201Space,
    NasBench201Table,
    NasBench201TableEvaluator,
)

__all__ += [
    "NasBench201Space",
    "NasBench201Table",
    "NasBench201Network",
    "NasBench201TableEvaluator",
]

# these need optuna, imported on first access so that `import torchslim.search` stays light
_LAZY = {
    name: "torchslim.search._samplers"
    for name in ("register_sampler", "get_sampler", "list_samplers", "RegularizedEvolutionSampler")
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'torchslim.search' has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    """``ts.search(...)`` calls :func:`torchslim.search.search`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
