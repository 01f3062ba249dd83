"""Samplers: a registry of Optuna samplers by name, and regularised evolution as one of them.

``ts.search(..., sampler="auto")`` picks TPE for one objective and NSGA-II for several; "tpe",
"nsga2", "random" and "evolution" name the others, and any ``optuna.samplers.BaseSampler``
instance works too. A factory registered with :func:`register_sampler` receives the number of
objectives, the seed and the study's budget (or ``None``), plus its options::

    @ts.search.register_sampler("cmaes")
    def cmaes(*, n_objectives, seed, budget, **options):
        return optuna.samplers.CmaEsSampler(seed=seed, **options)

Constraints reach every sampler the way Optuna 5 expects them: the engine stores each trial's
constraint values with ``trial.set_constraint`` (feasible when all are <= 0), and NSGA-II, TPE
and :class:`RegularizedEvolutionSampler` read them from the finished trials.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from torchslim._extras import require
from torchslim.errors import ConfigError

optuna = require("optuna", "ts.search samplers")

from optuna.distributions import (  # noqa: E402
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, RandomSampler  # noqa: E402
from optuna.search_space import IntersectionSearchSpace  # noqa: E402
from optuna.study import StudyDirection  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

__all__ = [
    "RegularizedEvolutionSampler",
    "register_sampler",
    "get_sampler",
    "list_samplers",
]

_SAMPLERS: dict[str, Callable[..., BaseSampler]] = {}


def register_sampler(name: str) -> Callable[[Callable[..., BaseSampler]], Callable[..., Any]]:
    """Decorator registering a sampler factory ``(*, n_objectives, seed, budget, **options)``."""

    def decorator(factory: Callable[..., BaseSampler]) -> Callable[..., BaseSampler]:
        if name in _SAMPLERS:
            raise ConfigError(f"a sampler named {name!r} is already registered")
        _SAMPLERS[name] = factory
        return factory

    return decorator


def list_samplers() -> list[str]:
    """Names of the registered samplers."""
    return sorted(_SAMPLERS)


def get_sampler(
    sampler: str | BaseSampler,
    *,
    n_objectives: int,
    seed: int | None = None,
    budget: int | None = None,
    options: dict[str, Any] | None = None,
) -> BaseSampler:
    """A sampler by name (built for the study's objectives, seed and budget) or the instance."""
    if isinstance(sampler, BaseSampler):
        if options:
            raise ConfigError(f"sampler options {sorted(options)} given with a sampler instance")
        return sampler
    if sampler not in _SAMPLERS:
        raise ConfigError(
            f"unknown sampler {sampler!r}; known: {', '.join(list_samplers())} "
            "(or pass an optuna.samplers.BaseSampler instance)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _SAMPLERS[sampler](
                n_objectives=n_objectives, seed=seed, budget=budget, **(options or {})
            )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad options {options or {}} for sampler {sampler!r}: {exc}") from exc


def _nsga2_population(budget: int | None) -> int:
    # Optuna's default of 50 leaves a budget of 100 two generations; a tenth of the budget
    # (10..50) gives about ten.
    return 50 if budget is None else min(50, max(10, budget // 10))


@register_sampler("auto")
def _auto(*, n_objectives: int, seed: int | None, budget: int | None, **options: Any) -> Any:
    """TPE (multivariate, Optuna's default for one objective) or NSGA-II for several."""
    if n_objectives == 1:
        return _tpe(n_objectives=n_objectives, seed=seed, budget=budget, **options)
    return _nsga2(n_objectives=n_objectives, seed=seed, budget=budget, **options)


@register_sampler("tpe")
def _tpe(*, n_objectives: int, seed: int | None, budget: int | None, **options: Any) -> Any:
    return optuna.samplers.TPESampler(seed=seed, **options)


@register_sampler("nsga2")
def _nsga2(*, n_objectives: int, seed: int | None, budget: int | None, **options: Any) -> Any:
    options.setdefault("population_size", _nsga2_population(budget))
    return optuna.samplers.NSGAIISampler(seed=seed, **options)


@register_sampler("random")
def _random(*, n_objectives: int, seed: int | None, budget: int | None, **options: Any) -> Any:
    return RandomSampler(seed=seed, **options)


@register_sampler("evolution")
def _evolution(*, n_objectives: int, seed: int | None, budget: int | None, **options: Any) -> Any:
    return RegularizedEvolutionSampler(seed=seed, **options)


class RegularizedEvolutionSampler(BaseSampler):
    """Regularised (aging) evolution, Real et al. 2019, as an Optuna sampler.

    The population is the ``population_size`` most recently *completed* trials of the study
    (so the oldest die first, whichever worker ran them). Each new trial samples
    ``sample_size`` members at random, takes the tournament's winner and mutates one of its
    parameters: a categorical or integer parameter takes another of its values, a float a new
    uniform (log-uniform for log scales) draw. Until the population is full, trials are random.

    The winner of a tournament is the best feasible member: infeasible members (a constraint
    value > 0, see ``trial.set_constraint``) lose to feasible ones and to less infeasible ones;
    with several objectives, members are ranked by non-domination within the tournament and
    ties are broken at random.

    Args:
        population_size: Members of the population P (Real et al.: 100 at large scale; the
            default 20 suits budgets of about a hundred trials).
        sample_size: Tournament size S (``2 <= S <= P``).
        seed: Seeds the random choices.
        avoid_duplicates: Re-draw a mutation (up to 20 times) whose parameters equal a trial
            the study already holds. Real et al. do not; on small discrete spaces (NAS-Bench
            cells) repeats would spend the budget on nothing new.
    """

    def __init__(
        self,
        population_size: int = 20,
        sample_size: int = 5,
        seed: int | None = None,
        avoid_duplicates: bool = True,
    ) -> None:
        if isinstance(population_size, bool) or not isinstance(population_size, int):
            raise ValueError(f"population_size must be an integer, not {population_size!r}")
        if population_size < 2:
            raise ValueError(f"population_size must be >= 2, not {population_size}")
        if not isinstance(sample_size, int) or not 2 <= sample_size <= population_size:
            raise ValueError(
                f"sample_size must be an integer in [2, population_size={population_size}], "
                f"not {sample_size!r}"
            )
        self.population_size = population_size
        self.sample_size = sample_size
        self.avoid_duplicates = avoid_duplicates
        self._seed = seed
        self._rng = _Rng(seed)
        self._random_sampler = RandomSampler(seed=seed)
        self._search_space = IntersectionSearchSpace()

    def reseed_rng(self) -> None:
        self._rng.rng.seed()
        self._random_sampler.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        space = self._search_space.calculate(study)
        return {name: dist for name, dist in space.items() if not dist.single()}

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(complete) < self.population_size:
            return {}
        complete = sorted(complete, key=lambda t: (t.datetime_complete or 0, t.number))
        population = complete[-self.population_size :]
        rng = self._rng.rng
        picks = rng.choice(len(population), size=self.sample_size, replace=False)
        tournament = [population[i] for i in picks]
        parent = self._winner(tournament, study.directions)
        seen = None
        if self.avoid_duplicates:
            names = sorted(search_space)
            seen = {
                tuple(t.params.get(n) for n in names)
                for t in study.get_trials(deepcopy=False)
                if all(n in t.params for n in names)
            }
        child = self._mutate(parent.params, search_space)
        for _ in range(20):
            if seen is None or tuple(child[n] for n in sorted(search_space)) not in seen:
                break
            child = self._mutate(parent.params, search_space)
        return child

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._random_sampler.sample_independent(study, trial, param_name, param_distribution)

    # --- tournament and mutation ------------------------------------------------------------

    def _winner(
        self, tournament: Sequence[FrozenTrial], directions: Sequence[StudyDirection]
    ) -> FrozenTrial:
        signs = [1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in directions]
        losses = [[s * v for s, v in zip(signs, t.values, strict=False)] for t in tournament]
        penalties = [sum(max(0.0, c) for c in t.constraints.values()) for t in tournament]
        least = min(penalties)
        candidates = [i for i, p in enumerate(penalties) if p == least]
        if least == 0.0:  # feasible members: the first non-dominated front among them
            candidates = [
                i
                for i in candidates
                if not any(_dominates(losses[j], losses[i]) for j in candidates if j != i)
            ]
        return tournament[candidates[int(self._rng.rng.randint(len(candidates)))]]

    def _mutate(
        self, params: dict[str, Any], search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        child = {name: params[name] for name in search_space}
        name = sorted(search_space)[int(self._rng.rng.randint(len(search_space)))]
        child[name] = self._other_value(search_space[name], params[name])
        return child

    def _other_value(self, dist: BaseDistribution, current: Any) -> Any:
        rng = self._rng.rng
        if isinstance(dist, CategoricalDistribution):
            index = dist.to_internal_repr(current)
            others = [i for i in range(len(dist.choices)) if i != index]
            return dist.choices[others[int(rng.randint(len(others)))]]
        if isinstance(dist, IntDistribution):
            count = (dist.high - dist.low) // dist.step + 1
            if dist.log:
                value = int(round(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))))
                return min(dist.high, max(dist.low, value))
            offset = int(rng.randint(count - 1))
            value = dist.low + offset * dist.step
            return value + dist.step if value >= current else value
        if isinstance(dist, FloatDistribution):
            if dist.step is not None:
                count = int(round((dist.high - dist.low) / dist.step)) + 1
                offset = int(rng.randint(count - 1))
                value = dist.low + offset * dist.step
                return value + dist.step if value >= current - dist.step / 2 else value
            if dist.log:
                return float(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))
            return float(rng.uniform(dist.low, dist.high))
        raise ConfigError(f"regularised evolution cannot mutate a {type(dist).__name__}")


class _Rng:
    """A numpy RandomState created on first use (a deep-copied sampler gets its own)."""

    def __init__(self, seed: int | None) -> None:
        self._seed = seed
        self._state: np.random.RandomState | None = None

    @property
    def rng(self) -> np.random.RandomState:
        if self._state is None:
            self._state = np.random.RandomState(self._seed)
        return self._state


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` dominates ``b`` (losses: lower is better)."""
    return all(x <= y for x, y in zip(a, b, strict=False)) and any(
        x < y for x, y in zip(a, b, strict=False)
    )
