"""Spaces and evaluators by registered name, import path (``"module:Class"``) or instance.

An import path lets a config name a class that is not registered, e.g. one of your own:
``space: {name: "my_project.spaces:MySpace", options: {...}}``. The module is imported with
the current directory on ``sys.path`` (like ``python -m``), so a worker started in the project
directory finds it.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from torchslim.errors import ConfigError
from torchslim.search._space import Evaluator, SearchSpace, get_evaluator, get_search_space

__all__ = ["resolve_space", "resolve_evaluator", "import_object", "describe"]


def import_object(path: str) -> Any:
    """The object at ``"package.module:Name"`` (``Name`` may be dotted)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"bad import path {path!r}: write it as 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name is None or not module_name.startswith(exc.name) or cwd in sys.path:
            raise ConfigError(f"cannot import {module_name!r} for {path!r}: {exc}") from exc
        sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as again:
            raise ConfigError(
                f"cannot import {module_name!r} for {path!r}: {again} (searched sys.path and "
                f"the current directory {cwd})"
            ) from again
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(f"{module_name!r} has no {attr!r} (from {path!r})") from exc
    return obj


def _resolve(value: Any, options: dict[str, Any], base: type, kind: str, getter: Any) -> Any:
    if isinstance(value, base):
        if options:
            raise ConfigError(f"{kind} options {sorted(options)} given with a {kind} instance")
        return value
    if isinstance(value, type) and issubclass(value, base):
        obj: Any = value
    elif isinstance(value, str) and ":" in value:
        obj = import_object(value)
    elif isinstance(value, str):
        return getter(value, **options)
    else:
        raise ConfigError(
            f"bad {kind} {value!r}: give a registered name, an import path "
            f"'module:Class', or a ts.search.{base.__name__} instance"
        )
    if isinstance(obj, base):
        if options:
            raise ConfigError(f"{kind} {value!r} is an instance; it takes no options")
        return obj
    if not callable(obj):
        raise ConfigError(f"{kind} {value!r} is neither a {base.__name__} class nor a factory")
    try:
        made = obj(**options)
    except TypeError as exc:
        raise ConfigError(f"bad options {options} for {kind} {value!r}: {exc}") from exc
    if not isinstance(made, base):
        raise ConfigError(
            f"{kind} {value!r} made a {type(made).__name__}, not a ts.search.{base.__name__}"
        )
    return made


def resolve_space(space: Any, options: dict[str, Any]) -> SearchSpace:
    """A :class:`SearchSpace` from a name, an import path, a class or an instance."""
    return _resolve(space, options, SearchSpace, "search space", get_search_space)


def resolve_evaluator(evaluator: Any, options: dict[str, Any]) -> Evaluator:
    """An :class:`Evaluator` from a name, an import path, a class or an instance."""
    return _resolve(evaluator, options, Evaluator, "evaluator", get_evaluator)


def describe(obj: Any) -> str:
    """How a config names ``obj``: its registered name, else ``module:QualName``."""
    cls = obj if isinstance(obj, type) else type(obj)
    name = getattr(cls, "name", "")
    if name:
        return name
    return f"{cls.__module__}:{cls.__qualname__}"
