"""``SearchConfig``: a whole search as data, for ``torchslim search CONFIG.yaml``.

A config names the space and the evaluator (a registered name, or an import path
``"package.module:Class"``) with their options, the objectives, constraints and budget, the
sampler, and where the study lives. It round-trips through YAML and JSON::

    version: 1
    space: {name: nas201}                   # or just `space: nas201`
    evaluator: {name: nas201-table, options: {dataset: cifar10}}
    objectives: [val_accuracy:max]          # METRIC:max or METRIC:min, one or more
    constraints: {latency_ms: 2.0}          # metric <= bound; {accuracy: {min: 90}} for >=
    budget: 100                             # completed trials of the whole study
    sampler: {name: auto, options: {}}      # auto, tpe, nsga2, random, evolution
    seed: 0
    study_name: null                        # default: "search"
    storage: null                           # default: SQLite file in the run directory
    workers: 1                              # processes on this machine
    prescreen: {proxy: synflow, n: 200, keep: 20}   # optional zero-cost pre-screening
    heartbeat_interval: 10                  # seconds; a dead worker's trial is retried
    grace_period: null                      # default: 3 heartbeats

Only ``space``, ``evaluator``, ``objectives`` and ``budget`` are required. The objective and
constraint parsers live here too (they are pure functions the engine shares).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torchslim.errors import ConfigError

__all__ = ["SearchConfig", "parse_objectives", "parse_constraints", "SEARCH_CONFIG_VERSION"]

#: Version written into every config; a newer file is refused with a clear message.
SEARCH_CONFIG_VERSION = 1

_DIRECTIONS = {
    "max": "maximize",
    "maximize": "maximize",
    "min": "minimize",
    "minimize": "minimize",
}


def parse_objectives(objectives: str | Sequence[Any]) -> tuple[tuple[str, str], ...]:
    """``["val_accuracy:max", "latency_ms:min"]`` -> ``(("val_accuracy", "maximize"), ...)``.

    Each objective is ``"METRIC:max"`` / ``"METRIC:min"`` (or ``maximize``/``minimize``), or a
    ``(metric, direction)`` pair.
    """
    if isinstance(objectives, str):
        objectives = [objectives]
    if not isinstance(objectives, Sequence) or not objectives:
        raise ConfigError(
            f"bad objectives {objectives!r}: give one or more 'METRIC:max' or 'METRIC:min', "
            "e.g. ['val_accuracy:max', 'latency_ms:min']"
        )
    parsed = []
    for item in objectives:
        if isinstance(item, str):
            metric, _, direction = item.rpartition(":")
        elif isinstance(item, Sequence) and len(item) == 2:
            metric, direction = item
        else:
            metric, direction = "", ""
        direction = _DIRECTIONS.get(str(direction).lower())
        if not metric or not isinstance(metric, str) or direction is None:
            raise ConfigError(
                f"bad objective {item!r}: write it as 'METRIC:max' or 'METRIC:min', "
                "e.g. 'val_accuracy:max'"
            )
        parsed.append((metric, direction))
    names = [m for m, _ in parsed]
    if len(set(names)) != len(names):
        raise ConfigError(f"objectives name a metric twice: {names}")
    return tuple(parsed)


def parse_constraints(constraints: Mapping[str, Any] | None) -> tuple[tuple[str, str, float], ...]:
    """``{"latency_ms": 2.0, "accuracy": {"min": 90}}`` -> ``(("latency_ms", "max", 2.0), ...)``.

    A number is an upper bound (``metric <= bound``); ``{"max": b}`` and ``{"min": b}`` are
    explicit upper and lower bounds (both may be given).
    """
    if constraints is None:
        return ()
    if not isinstance(constraints, Mapping):
        raise ConfigError(
            f"bad constraints {constraints!r}: give a mapping metric -> bound, "
            "e.g. {'latency_ms': 2.0} (meaning latency_ms <= 2.0)"
        )
    parsed = []
    for metric, bound in constraints.items():
        bounds = bound if isinstance(bound, Mapping) else {"max": bound}
        if not bounds or set(bounds) - {"min", "max"}:
            raise ConfigError(
                f"bad constraint for {metric!r}: {bound!r}; give a number (an upper bound) or "
                "{'max': B} / {'min': B}"
            )
        for kind in ("min", "max"):
            if kind not in bounds:
                continue
            value = bounds[kind]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"bad {kind} bound for {metric!r}: {value!r}; give a number")
            if not math.isfinite(value):
                raise ConfigError(f"bad {kind} bound for {metric!r}: {value!r}; give a finite one")
            parsed.append((str(metric), kind, float(value)))
    return tuple(parsed)


def _named(value: Any, key: str) -> tuple[str, dict[str, Any]]:
    """``"nas201"`` or ``{name: nas201, options: {...}}`` -> ``("nas201", {...})``.

    Keys beside ``name`` and ``options`` are taken as options too (``{name: x, dataset: y}``).
    """
    if isinstance(value, str):
        return value, {}
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        options = dict(value.get("options") or {})
        for extra, v in value.items():
            if extra in ("name", "options"):
                continue
            if extra in options:
                raise ConfigError(f"{key} option {extra!r} given twice (inline and in options)")
            options[extra] = v
        return value["name"], options
    raise ConfigError(
        f"bad {key} {value!r}: give a name, e.g. {key}: nas201, or a mapping "
        f"{{name: NAME, options: {{...}}}}"
    )


@dataclass(frozen=True)
class SearchConfig:
    """A search, as data. See the module docstring for the YAML layout.

    Attributes:
        space: Registered search space name, or an import path ``"module:Class"``.
        evaluator: Registered evaluator name, or an import path.
        objectives: ``("val_accuracy:max", "latency_ms:min")``.
        budget: Completed trials of the whole study (a resumed study continues to it).
        space_options / evaluator_options: Keyword options of the space / evaluator.
        constraints: ``{metric: upper bound}`` or ``{metric: {"min": b, "max": b}}``.
        sampler / sampler_options: A :func:`list_samplers` name and its options.
        seed: Seeds the sampler (worker ``k`` of a local run uses ``seed + k``).
        study_name: Name of the study in its storage (default ``"search"``).
        storage: ``None`` (SQLite file in the run directory), or an Optuna storage URL such as
            ``postgresql://user@host/db``.
        workers: Worker processes on this machine sharing the study.
        prescreen: ``{"proxy": name, "n": N, "keep": K}``: score ``N`` random candidates with
            a zero-cost proxy and run the best ``K`` first.
        heartbeat_interval / grace_period: Seconds; a trial whose worker stopped sending
            heartbeats for ``grace_period`` is failed and retried.
    """

    space: str
    evaluator: str
    objectives: tuple[str, ...]
    budget: int
    space_options: dict[str, Any] = field(default_factory=dict)
    evaluator_options: dict[str, Any] = field(default_factory=dict)
    constraints: dict[str, Any] = field(default_factory=dict)
    sampler: str = "auto"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    study_name: str | None = None
    storage: str | None = None
    workers: int = 1
    prescreen: dict[str, Any] | None = None
    heartbeat_interval: int = 10
    grace_period: int | None = None
    version: int = SEARCH_CONFIG_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.objectives, str) or not isinstance(self.objectives, Sequence):
            object.__setattr__(self, "objectives", (self.objectives,))
        object.__setattr__(self, "objectives", tuple(self.objectives))
        if self.version != SEARCH_CONFIG_VERSION:
            raise ConfigError(
                f"search config version {self.version!r} is not supported (this torchslim "
                f"reads version {SEARCH_CONFIG_VERSION}); upgrade torchslim or rewrite the file"
            )
        for key in ("space", "evaluator", "sampler"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ConfigError(f"bad {key} {getattr(self, key)!r}: give a name")
        for key in ("space_options", "evaluator_options", "constraints", "sampler_options"):
            if not isinstance(getattr(self, key), Mapping):
                raise ConfigError(f"bad {key} {getattr(self, key)!r}: give a mapping")
            object.__setattr__(self, key, dict(getattr(self, key)))
        parse_objectives(self.objectives)
        parse_constraints(self.constraints)
        _positive_int(self.budget, "budget", "e.g. budget: 100")
        _positive_int(self.workers, "workers", "e.g. workers: 2")
        _positive_int(self.heartbeat_interval, "heartbeat_interval", "seconds, e.g. 10")
        if self.grace_period is not None:
            _positive_int(self.grace_period, "grace_period", "seconds, e.g. 30")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ConfigError(f"bad seed {self.seed!r}: give an integer or null")
        for key in ("study_name", "storage"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"bad {key} {value!r}: give a non-empty string or null")
        if self.prescreen is not None:
            _check_prescreen(self.prescreen)
            object.__setattr__(self, "prescreen", dict(self.prescreen))

    # --- dict / JSON / YAML ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON layout (nested ``{name, options}`` for space, evaluator, sampler)."""
        flat = asdict(self)
        out: dict[str, Any] = {"version": flat.pop("version")}
        for key in ("space", "evaluator", "sampler"):
            out[key] = {"name": flat.pop(key), "options": flat.pop(f"{key}_options")}
        out["objectives"] = list(flat.pop("objectives"))
        out.update(flat)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchConfig:
        """Read the layout of :meth:`to_dict` (``space: NAME`` is accepted too)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a search config must be a mapping, not {type(data).__name__}")
        data = dict(data)
        known = {f.name for f in fields(cls)} - {
            "space_options",
            "evaluator_options",
            "sampler_options",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown search config key(s) {unknown}; known: {', '.join(sorted(known))}"
            )
        missing = [k for k in ("space", "evaluator", "objectives", "budget") if k not in data]
        if missing:
            raise ConfigError(f"search config misses {missing}; see ts.search.SearchConfig")
        kwargs: dict[str, Any] = {}
        for key in ("space", "evaluator", "sampler"):
            if key in data:
                kwargs[key], kwargs[f"{key}_options"] = _named(data.pop(key), key)
        if data.get("constraints") is None:
            data.pop("constraints", None)
        kwargs.update(data)
        return cls(**kwargs)

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> SearchConfig:
        """Read JSON text or a ``.json`` file."""
        text = _read(text_or_path, (".json",))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"search config is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The config as YAML text; also written to ``path`` when given."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> SearchConfig:
        """Read YAML text or a ``.yaml``/``.yml`` file (JSON is YAML too)."""
        import yaml

        text = _read(text_or_path, (".yaml", ".yml", ".json"))
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"search config is not valid YAML: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> SearchConfig:
        """Read a config file, ``.json`` as JSON and anything else as YAML."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"search config file {str(path)!r} does not exist")
        return cls.from_json(path) if path.suffix == ".json" else cls.from_yaml(path)


def _read(text_or_path: str | Path, suffixes: tuple[str, ...]) -> str:
    if isinstance(text_or_path, Path) or (
        isinstance(text_or_path, str)
        and "\n" not in text_or_path
        and text_or_path.endswith(suffixes)
    ):
        path = Path(text_or_path)
        if not path.is_file():
            raise ConfigError(f"search config file {str(path)!r} does not exist")
        return path.read_text()
    return str(text_or_path)


def _positive_int(value: Any, key: str, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"bad {key} {value!r}: give an integer >= 1 ({example})")


def _check_prescreen(prescreen: Any) -> None:
    if not isinstance(prescreen, Mapping) or "proxy" not in prescreen:
        raise ConfigError(
            f"bad prescreen {prescreen!r}: give {{proxy: NAME, n: N, keep: K}}, "
            "e.g. {proxy: synflow, n: 200, keep: 20}"
        )
    unknown = set(prescreen) - {"proxy", "n", "keep", "batch_size", "seed"}
    if unknown:
        raise ConfigError(
            f"unknown prescreen key(s) {sorted(unknown)}; known: proxy, n, keep, batch_size, seed"
        )
    for key in ("n", "keep", "batch_size"):
        if key in prescreen:
            _positive_int(prescreen[key], f"prescreen {key}", "e.g. 100")
