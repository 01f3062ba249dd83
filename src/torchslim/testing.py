"""Helpers for testing pruning, for torchslim's tests and for third-party layer pruners."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from torchslim.pruning._plan import PruningPlan

__all__ = ["zero_removed", "outputs_close"]


def zero_removed(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """A copy of the unpruned ``model`` whose removed slices contribute nothing.

    Every slice the plan removes is set to zero (weights, biases, norm scales and shifts, running
    means); removed running variances are set to 1 so that normalisation stays finite. On
    channel-separable architectures this copy computes exactly what the pruned model computes: the
    zero-contribution oracle.
    """
    zeroed = copy.deepcopy(model)
    from torchslim.pruning._surgery import named_tensors

    tensors = named_tensors(zeroed)
    with torch.no_grad():
        for name in plan.kept:
            t = tensors[name]
            for dim in plan.kept[name]:
                removed = plan.removed(name, dim)
                if not removed:
                    continue
                index = torch.as_tensor(removed, dtype=torch.long, device=t.device)
                fill = 1.0 if name.endswith("running_var") else 0.0
                t.index_fill_(dim, index, fill)
    return zeroed


def outputs_close(a: Any, b: Any, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Whether two model outputs (tensors, or containers of them) agree within tolerances."""
    from torchslim.graph._trace import _output_tensors

    ta, tb = _output_tensors(a), _output_tensors(b)
    return len(ta) == len(tb) and all(
        x.shape == y.shape and torch.allclose(x, y, rtol=rtol, atol=atol)
        for x, y in zip(ta, tb, strict=True)
    )


def torchvision_mac_references() -> list[tuple[str, int, dict, float, str]]:
    """torchvision's published operation counts: ``(model, input size, constructor kwargs, GMACs,
    weights)`` for every distinct (classification model, reference input size) pair.

    The reference size is the weights' ``crop_size``; ViT's position embedding fixes its input size,
    so it is built with ``image_size`` set to the weights' ``min_size``. The ``_ops`` metadata is
    named GFLOPS but holds multiply-accumulates (resnet50: 4.089).
    """
    import torchvision

    cases: dict[tuple[str, int], tuple[dict, float, str]] = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        for weights in torchvision.models.get_model_weights(name):
            if "_ops" not in weights.meta:
                continue
            kwargs = {}
            size = weights.transforms().crop_size[0]
            if name.startswith("vit_"):
                size = kwargs["image_size"] = weights.meta["min_size"][0]
            cases[(name, size)] = (kwargs, weights.meta["_ops"], str(weights))
    return [(name, size, *rest) for (name, size), rest in cases.items()]
