"""Pruning: plans, surgery, layer pruners and the ``prune_`` verb."""

from torchslim.pruning._layers import LayerPruner, get_layer_pruner, register_layer_pruner
from torchslim.pruning._plan import PruningPlan
from torchslim.pruning._prune import PruneResult, prune_
from torchslim.pruning._surgery import apply_plan as _apply_plan

__all__ = [
    "LayerPruner",
    "PruneResult",
    "PruningPlan",
    "apply_plan",
    "get_layer_pruner",
    "prune_",
    "register_layer_pruner",
]


def apply_plan(model, plan, *, example_inputs=None):
    """Replay ``plan`` on a freshly built (unpruned) model, in place; returns the model.

    With ``example_inputs``, the pruned model is run once to check that it works.
    """
    from torchslim._inputs import as_inputs

    if isinstance(plan, dict):
        plan = PruningPlan.from_dict(plan)
    inputs = as_inputs(example_inputs) if example_inputs is not None else None
    return _apply_plan(model, plan, verify_inputs=inputs)
