"""Samplers: the registry, every sampler on a toy space, and regularised evolution's
tournament, mutation and its edge over random search."""

from __future__ import annotations

import math
import statistics

import optuna
import pytest
from _toy import ToyEvaluator, ToySpace
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import StudyDirection

import torchslim as ts
from torchslim.errors import ConfigError
from torchslim.search import (
    RegularizedEvolutionSampler,
    get_sampler,
    list_samplers,
    register_sampler,
)


def test_the_registry_lists_the_builtin_samplers_and_builds_them():
    assert {"auto", "tpe", "nsga2", "random", "evolution"} <= set(list_samplers())
    assert isinstance(get_sampler("auto", n_objectives=1), optuna.samplers.TPESampler)
    nsga = get_sampler("auto", n_objectives=2, budget=100)
    assert isinstance(nsga, optuna.samplers.NSGAIISampler)
    assert nsga.population_size == 10  # a tenth of the budget: ten generations
    evo = get_sampler("evolution", n_objectives=1, options={"population_size": 8})
    assert isinstance(evo, RegularizedEvolutionSampler) and evo.population_size == 8
    mine = optuna.samplers.RandomSampler()
    assert get_sampler(mine, n_objectives=3) is mine


def test_registry_errors_name_the_fix():
    with pytest.raises(ConfigError, match="unknown sampler 'nope'; known: auto, evolution"):
        get_sampler("nope", n_objectives=1)
    with pytest.raises(ConfigError, match="bad options .* for sampler 'evolution'"):
        get_sampler("evolution", n_objectives=1, options={"sample_size": 99})
    with pytest.raises(ConfigError, match="already registered"):
        register_sampler("tpe")(lambda **kw: None)


def test_a_registered_sampler_is_used_by_name():
    calls = []

    @register_sampler("test-qmc")
    def qmc(*, n_objectives, seed, budget, **options):
        calls.append((n_objectives, seed, budget))
        return optuna.samplers.QMCSampler(seed=seed, **options)

    result = ts.search(
        ToySpace(), ToyEvaluator(), objectives="score:max", budget=4, sampler="test-qmc",
        seed=3, progress=False,
    )  # fmt: skip
    assert calls == [(1, 3, 4)] and len(result.trials) == 4
    assert isinstance(result.study.sampler, optuna.samplers.QMCSampler)


@pytest.mark.parametrize("sampler", ["auto", "tpe", "nsga2", "random", "evolution"])
@pytest.mark.parametrize("objectives", [["score:max"], ["score:max", "cost:min"]])
def test_every_sampler_runs_under_a_constraint(sampler, objectives):
    result = ts.search(
        ToySpace(n=3, kind="int", choices=6),
        ToyEvaluator(target=2.0),
        objectives=objectives,
        constraints={"cost": 6.0},
        budget=24,
        sampler=sampler,
        sampler_options={"population_size": 6} if sampler in ("nsga2", "evolution") else None,
        seed=0,
        progress=False,
    )
    assert len(result.trials) == 24
    assert result.pareto and all(r.metrics["cost"] <= 6.0 for r in result.pareto)


def _trial(values, constraint=None, number=0):
    constraints = None if constraint is None else {"c": constraint}
    trial = optuna.trial.create_trial(values=values, params={}, distributions={},
                                      constraints=constraints)  # fmt: skip
    trial.number = number
    return trial


def test_the_tournament_prefers_feasible_then_less_infeasible_then_better():
    evo = RegularizedEvolutionSampler(seed=0)
    best_but_infeasible = _trial([10.0], constraint=1.0)
    feasible = _trial([1.0], constraint=0.0)
    nearly = _trial([5.0], constraint=0.5)
    maximize = [StudyDirection.MAXIMIZE]
    assert evo._winner([best_but_infeasible, feasible, nearly], maximize) is feasible
    assert evo._winner([best_but_infeasible, nearly], maximize) is nearly
    a, b = _trial([1.0]), _trial([2.0])
    assert evo._winner([a, b], maximize) is b
    assert evo._winner([a, b], [StudyDirection.MINIMIZE]) is a


def test_a_multi_objective_tournament_picks_from_the_non_dominated_members():
    evo = RegularizedEvolutionSampler(seed=0)
    directions = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    front = [_trial([3.0, 3.0]), _trial([1.0, 1.0])]
    dominated = [_trial([0.5, 3.5]), _trial([2.0, 3.5])]
    winners = {id(evo._winner(front + dominated, directions)) for _ in range(50)}
    assert winners == {id(t) for t in front}  # both front members win sometimes, nothing else


def test_a_mutation_changes_exactly_one_parameter_within_its_distribution():
    evo = RegularizedEvolutionSampler(seed=0)
    space = {
        "cat": CategoricalDistribution(["a", "b", "c"]),
        "int": IntDistribution(0, 10, step=2),
        "logint": IntDistribution(1, 1024, log=True),
        "float": FloatDistribution(-1.0, 1.0),
        "logfloat": FloatDistribution(1e-4, 1.0, log=True),
        "stepfloat": FloatDistribution(0.0, 1.0, step=0.25),
    }
    parent = {"cat": "b", "int": 4, "logint": 32, "float": 0.0, "logfloat": 0.01,
              "stepfloat": 0.5}  # fmt: skip
    changed = set()
    for _ in range(300):
        child = evo._mutate(parent, space)
        diff = [k for k in parent if child[k] != parent[k]]
        assert len(diff) <= 1
        if diff:
            changed.add(diff[0])
        for name, dist in space.items():
            assert dist._contains(dist.to_internal_repr(child[name])), (name, child[name])
    # every parameter gets mutated, and (apart from the log-int draw) always to a new value
    assert changed == set(space)


def _separable_best(sampler, seed, budget=120):
    """Best score on a separable objective: 8 parameters of 6 values, one right value each."""
    target = [seed % 6, 2, 5, 1, 3, 0, 4, (seed + 3) % 6]

    def objective(trial):
        return sum(trial.suggest_int(f"x{i}", 0, 5) == t for i, t in enumerate(target))

    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=budget)
    return study.best_value, statistics.mean(t.value for t in study.trials[-40:])


def test_evolution_beats_random_search_on_a_separable_objective():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    evo, rnd = [], []
    for seed in range(5):
        evo.append(_separable_best(RegularizedEvolutionSampler(seed=seed), seed))
        rnd.append(_separable_best(optuna.samplers.RandomSampler(seed=seed), seed))
    # the best found, and the quality of the last trials (the population has moved uphill)
    assert statistics.mean(b for b, _ in evo) > statistics.mean(b for b, _ in rnd) + 1
    assert statistics.mean(m for _, m in evo) > statistics.mean(m for _, m in rnd) + 2
    assert all(math.isfinite(b) for b, _ in evo)


def test_evolution_is_random_until_the_population_is_full_then_mutates_a_member():
    evo = RegularizedEvolutionSampler(population_size=5, sample_size=2, seed=0)
    study = optuna.create_study(direction="maximize", sampler=evo)
    study.optimize(lambda t: t.suggest_int("a", 0, 9) + t.suggest_int("b", 0, 9), n_trials=30)
    trials = study.trials
    for i, trial in enumerate(trials[5:], start=5):
        earlier = [t.params for t in trials[i - 5 : i]]  # the population when it was asked
        one_off = [p for p in earlier if sum(p[k] != trial.params[k] for k in ("a", "b")) == 1]
        assert one_off, (i, trial.params, earlier)
