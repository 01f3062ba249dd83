"""Where a group's channels show up in feature maps: the modules whose output carries them.

A member whose dimension is the output dimension of its module (a convolution's or linear
layer's ``weight`` dim 0, a norm's ``weight`` dim 0, an embedding's dim 1, …) *produces* the
group's channels: channel ``c`` is index ``indices[c][k]`` of that module's output on its channel
axis (dim 1 for convolution and batch-norm outputs, the last dim for linear layers, embeddings and
layer norms). Feature-map criteria hook these modules; weight criteria that work on filters
(``fpgm``) read these members.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["Producer", "output_axis", "producers"]

_CHANNEL_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm)
_LAST_DIM_NORMS = (nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


@dataclass(frozen=True)
class Producer:
    """A module whose output carries a group's channels.

    Attributes:
        member: Position of the producing member in ``group.members``.
        module: The module's fully qualified name.
        axis: The channel axis of its output (negative: counted from the end).
        size: The number of channels of that axis.
    """

    member: int
    module: str
    axis: int
    size: int


def output_axis(module: nn.Module, local: str, dim: int) -> int | None:
    """The axis of ``module``'s output that dimension ``dim`` of its tensor ``local`` indexes,
    or ``None`` when that dimension is not an output dimension (input channels, gate rows, …)."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        if (local == "weight" and dim == 1 and module.groups == 1) or (local, dim) == ("bias", 0):
            return 1
        return None
    if isinstance(module, nn.modules.conv._ConvNd):
        return 1 if local in ("weight", "bias") and dim == 0 else None
    if isinstance(module, nn.Linear):
        return -1 if local in ("weight", "bias") and dim == 0 else None
    if isinstance(module, _CHANNEL_NORMS):
        return 1 if dim == 0 else None
    if isinstance(module, _LAST_DIM_NORMS):
        return dim - len(module.normalized_shape) if local in ("weight", "bias") else None
    if isinstance(module, nn.Embedding):
        return -1 if local == "weight" and dim == 1 else None
    if isinstance(module, nn.PReLU):
        return 1 if module.num_parameters > 1 else None
    return None


def producers(group: Any) -> list[Producer]:
    """The modules whose outputs carry ``group``'s channels, one entry per module."""
    graph = group.graph
    found: dict[str, Producer] = {}
    for k, m in enumerate(group.members):
        if m.module in found:
            continue
        module = graph.model.get_submodule(m.module)
        local = m.tensor[len(m.module) + 1 :] if m.module else m.tensor
        axis = output_axis(module, local, m.dim)
        if axis is not None:
            found[m.module] = Producer(k, m.module, axis, graph.shapes[m.tensor][m.dim])
    return list(found.values())
