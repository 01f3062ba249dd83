"""Importance criteria: score every channel of a group; the lowest scores are removed first.

A criterion is a small class with one method, ``__call__(group) -> scores`` (one float per channel
of the group, higher = more important), registered by name:

    @ts.register_importance("mine")
    class Mine(ts.Importance):
        def __call__(self, group):
            ...

Anything that takes a criterion takes its name or an instance (``"l2"`` or ``Magnitude(p=1)``).
Data-driven criteria (``taylor``, ``activation``, ``hrank``, ``energy``, ``lrp``) collect
statistics in ``prepare(graph, calibration=...)`` first; ``ts.prune_(..., calibration=loader)``
does that. Every criterion, its paper and its options: ``docs/criteria.md``.
"""

from torchslim.importance._base import (
    NORMALIZATIONS,
    REDUCTIONS,
    Importance,
    get_importance,
    list_importances,
    register_importance,
)
from torchslim.importance._calibration import Calibrated, ChannelStatistic
from torchslim.importance._features import Activation, Energy, FeatureMapStatistic, HRank
from torchslim.importance._gradient import Taylor
from torchslim.importance._lrp import LRP
from torchslim.importance._magnitude import FPGM, L1, L2, LAMP, Magnitude, RandomImportance
from torchslim.importance._slimming import (
    NORM_TYPES,
    BNScale,
    bn_sparsity_grad_,
    bn_sparsity_penalty,
)

__all__ = [
    "Importance",
    "register_importance",
    "get_importance",
    "list_importances",
    "REDUCTIONS",
    "NORMALIZATIONS",
    "Magnitude",
    "L1",
    "L2",
    "FPGM",
    "LAMP",
    "RandomImportance",
    "BNScale",
    "NORM_TYPES",
    "bn_sparsity_penalty",
    "bn_sparsity_grad_",
    "Calibrated",
    "ChannelStatistic",
    "FeatureMapStatistic",
    "Activation",
    "HRank",
    "Energy",
    "Taylor",
    "LRP",
]
