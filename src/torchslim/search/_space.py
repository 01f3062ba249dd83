"""Search spaces and evaluators: what a search explores and how a candidate is scored.

A :class:`SearchSpace` draws a candidate's parameters from an Optuna trial (define-by-run, so
every Optuna sampler works on it) and returns a JSON-serialisable *config*; it may also build the
candidate as a real network. An :class:`Evaluator` turns a config into named metrics
(``{"accuracy": 93.1, "latency_ms": 1.7}``); the search's objectives and constraints refer to
those names. Both are registries, so a YAML file can name them::

    @ts.search.register_search_space("mine")
    class Mine(ts.search.SearchSpace):
        def suggest(self, trial):
            return {"width": trial.suggest_categorical("width", [16, 32, 64])}
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from torchslim.errors import ConfigError, UnsupportedOpError

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

_SPACES: dict[str, type[SearchSpace]] = {}
_EVALUATORS: dict[str, type[Evaluator]] = {}


class SearchSpace(ABC):
    """The candidates a search may propose.

    Contract: :meth:`suggest` draws every parameter through ``trial.suggest_*`` (the same names
    and choices on every call, so samplers that need a fixed space, NSGA-II and regularised
    evolution, see one) and returns the candidate's config: a JSON-serialisable dict that
    :meth:`build` and evaluators understand. It must not depend on anything but the trial, so a
    config can be rebuilt from a stored trial's ``params`` with :meth:`config_from_params`.
    Spaces are constructed from keyword options (``get_search_space(name, **options)``) and
    report them with :meth:`options` so that a YAML file round-trips.
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def suggest(self, trial: Any) -> dict[str, Any]:
        """Draw one candidate's parameters from ``trial``; return its config."""

    def config_from_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The config of a stored trial's ``params`` (by default: replays :meth:`suggest`)."""
        import optuna

        return self.suggest(optuna.trial.FixedTrial(dict(params)))

    def build(self, config: Mapping[str, Any]) -> Any:
        """The candidate as a ``torch.nn.Module`` (spaces that can build one override this)."""
        raise UnsupportedOpError(
            f"search space {self.name or type(self).__name__!r} cannot build networks; "
            "evaluate its configs with an evaluator that does not need one"
        )

    def example_inputs(self) -> Any:
        """Inputs for :meth:`build`'s networks (profiling, latency, export)."""
        raise UnsupportedOpError(
            f"search space {self.name or type(self).__name__!r} has no example inputs"
        )

    def options(self) -> dict[str, Any]:
        """The keyword options this space was built with (JSON/YAML-serialisable)."""
        return {}


class Evaluator(ABC):
    """Scores a candidate config: returns ``{metric name: float}``.

    Contract: :attr:`metrics` lists the names :meth:`__call__` returns (objectives and
    constraints are checked against it before a search starts). ``trial`` is the Optuna trial
    when the evaluator runs inside a search (to report intermediate values or store user
    attributes), else ``None``. An evaluator must be safe to call from several processes on the
    same machine (no shared temporary files without unique names).
    """

    name: ClassVar[str] = ""
    metrics: tuple[str, ...] = ()

    @abstractmethod
    def __call__(
        self, space: SearchSpace, config: Mapping[str, Any], trial: Any = None
    ) -> dict[str, float]:
        """Evaluate one candidate."""

    def options(self) -> dict[str, Any]:
        """The keyword options this evaluator was built with (JSON/YAML-serialisable)."""
        return {}


def _register(table: dict, kind: str, name: str) -> Callable[[type], type]:
    def decorator(cls: type) -> type:
        if name in table:
            raise ConfigError(f"a {kind} named {name!r} is already registered")
        cls.name = name
        table[name] = cls
        return cls

    return decorator


def _get(table: dict, kind: str, name: Any, base: type, options: Mapping[str, Any]) -> Any:
    if isinstance(name, base):
        if options:
            raise ConfigError(f"options {sorted(options)} given with a {kind} instance")
        return name
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        raise ConfigError(
            f"unknown {kind} {name!r}; known: {known} (or pass an instance of "
            f"ts.search.{base.__name__})"
        )
    try:
        return table[name](**options)
    except TypeError as exc:
        raise ConfigError(f"bad options for {kind} {name!r}: {exc}") from exc


def register_search_space(name: str) -> Callable[[type[SearchSpace]], type[SearchSpace]]:
    """Class decorator registering a :class:`SearchSpace` under ``name``."""
    return _register(_SPACES, "search space", name)


def register_evaluator(name: str) -> Callable[[type[Evaluator]], type[Evaluator]]:
    """Class decorator registering an :class:`Evaluator` under ``name``."""
    return _register(_EVALUATORS, "evaluator", name)


def _load_builtins() -> None:
    # the built-in spaces and evaluators register themselves on import
    from torchslim.search import _nas201, _width  # noqa: F401


def get_search_space(space: str | SearchSpace, **options: Any) -> SearchSpace:
    """A space by name (built with ``options``) or the instance itself."""
    _load_builtins()
    return _get(_SPACES, "search space", space, SearchSpace, options)


def get_evaluator(evaluator: str | Evaluator, **options: Any) -> Evaluator:
    """An evaluator by name (built with ``options``) or the instance itself."""
    _load_builtins()
    return _get(_EVALUATORS, "evaluator", evaluator, Evaluator, options)


def list_search_spaces() -> list[str]:
    """Names of the registered search spaces."""
    _load_builtins()
    return sorted(_SPACES)


def list_evaluators() -> list[str]:
    """Names of the registered evaluators."""
    _load_builtins()
    return sorted(_EVALUATORS)
