"""Low-rank decomposition: factorise linear and convolution layers into thinner ones.

``ts.decompose_(model, energy=0.9)`` replaces layers in place (SVD for linear layers and 1x1
convolutions, Tucker-2 for k x k convolutions) where that lowers MACs, and returns a plan that
``ts.save``/``ts.load`` store and replay.
"""

from torchslim.decompose._decompose import (
    DecomposedLayer,
    DecompositionPlan,
    DecompositionResult,
    apply_decomposition,
    decompose_,
)
from torchslim.decompose._ranks import energy_rank, ratio_rank, vbmf_rank

__all__ = [
    "DecomposedLayer",
    "DecompositionPlan",
    "DecompositionResult",
    "apply_decomposition",
    "decompose_",
    "energy_rank",
    "ratio_rank",
    "vbmf_rank",
]
