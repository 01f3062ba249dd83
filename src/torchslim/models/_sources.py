"""Model specs: one string names any model the CLI and configs can load, offline.

- ``torchvision:resnet18``: a torchvision model, randomly initialised (no download).
- ``timm:resnet50``: a timm model, randomly initialised.
- ``torchslim:demo_resnet``: a built-in model (the demo model and the test zoo).
- ``pretrained:mobilenet_v2``: a model with real pretrained weights shipped in an installed
  package (see :mod:`torchslim.models._pretrained`).
- ``path/to/file.py:factory``: a Python callable returning a model.
- ``path/to/saved``: a model saved with :func:`torchslim.save`.

Sources are a registry: ``@register_model_source("hub")`` makes ``hub:NAME`` loadable.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import logging
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from torchslim._extras import require
from torchslim.errors import ModelSpecError

__all__ = ["register_model_source", "list_model_sources", "load_model", "provenance"]

_logger = logging.getLogger(__name__)
_SOURCES: dict[str, Callable[..., torch.nn.Module]] = {}
# model -> (spec, kwargs) for models that load_model built, so ts.save can record how to rebuild
_PROVENANCE: weakref.WeakKeyDictionary[torch.nn.Module, tuple[str, dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


def register_model_source(prefix: str) -> Callable:
    """Decorator: ``fn(name, **kwargs) -> nn.Module`` loads specs of the form ``PREFIX:NAME``."""

    def decorator(fn: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        if prefix in _SOURCES and _SOURCES[prefix] is not fn:
            raise ModelSpecError(f"a model source named {prefix!r} is already registered")
        _SOURCES[prefix] = fn
        return fn

    return decorator


def list_model_sources() -> list[str]:
    """Registered spec prefixes."""
    return sorted(_SOURCES)


def provenance(model: torch.nn.Module) -> tuple[str, dict[str, Any]] | None:
    """The ``(spec, kwargs)`` that :func:`load_model` built ``model`` from, if it did."""
    return _PROVENANCE.get(model)


def _unknown(kind: str, name: str, known: list[str]) -> ModelSpecError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ModelSpecError(f"unknown {kind} model {name!r}{hint} ({len(known)} known)")


@register_model_source("torchvision")
def _torchvision(name: str, **kwargs: Any) -> torch.nn.Module:
    models = require("torchvision.models", f"the model spec 'torchvision:{name}'")
    known = models.list_models()
    if name not in known:
        raise _unknown("torchvision", name, known)
    return models.get_model(name, weights=None, **kwargs)


@register_model_source("timm")
def _timm(name: str, **kwargs: Any) -> torch.nn.Module:
    timm = require("timm", f"the model spec 'timm:{name}'")
    known = timm.list_models()
    if name not in known:
        raise _unknown("timm", name, known)
    return timm.create_model(name, pretrained=False, **kwargs)


@register_model_source("torchslim")
def _builtin(name: str, **kwargs: Any) -> torch.nn.Module:
    from torchslim.models._zoo import get_zoo_model

    entry = get_zoo_model(name)
    return entry.build(**kwargs)


def _from_file(path: Path, factory: str, **kwargs: Any) -> torch.nn.Module:
    if not path.is_file():
        raise ModelSpecError(f"model file {str(path)!r} does not exist")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"torchslim_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelSpecError(f"cannot import {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ModelSpecError(
            f"importing {str(path)!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    fn = getattr(module, factory, None)
    if not callable(fn):
        names = [n for n in vars(module) if callable(vars(module)[n]) and not n.startswith("_")]
        raise _unknown(f"factory in {path}:", factory, names)
    model = fn(**kwargs)
    if not isinstance(model, torch.nn.Module):
        raise ModelSpecError(
            f"{path}:{factory}() returned {type(model).__name__}, not a torch.nn.Module; "
            "the factory must return the model itself"
        )
    return model


def load_model(spec: str | Path, **kwargs: Any) -> torch.nn.Module:
    """Build the model a spec names (see the module docstring for the forms).

    Args:
        spec: The model spec.
        **kwargs: Passed to the model's constructor or factory (e.g. ``num_classes=10``).

    Raises:
        ModelSpecError: the spec is malformed or names no known model (the message lists close
            matches); MissingExtraError when the source needs an extra that is not installed.
    """
    from torchslim.models._saved import is_saved_model, load

    spec_str = str(spec)
    path = Path(spec_str)
    if is_saved_model(path):
        if kwargs:
            raise ModelSpecError(f"a saved model ({spec_str}) takes no constructor arguments")
        return load(path)
    if ":" in spec_str:
        head, _, name = spec_str.rpartition(":")
        if head.endswith(".py"):
            model = _from_file(Path(head), name, **kwargs)
        elif head in _SOURCES:
            model = _SOURCES[head](name, **kwargs)
        else:
            raise ModelSpecError(
                f"unknown model source {head!r} in {spec_str!r}; known sources: "
                f"{', '.join(list_model_sources())}, or path/to/file.py:factory"
            )
    else:
        raise ModelSpecError(
            f"cannot read the model spec {spec_str!r}: use SOURCE:NAME (sources: "
            f"{', '.join(list_model_sources())}), path/to/file.py:factory, or the directory of "
            "a model saved with torchslim.save"
        )
    _PROVENANCE[model] = (spec_str, dict(kwargs))
    _logger.debug("loaded %s with %s", spec_str, kwargs)
    return model
