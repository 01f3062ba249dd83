"""SearchConfig: YAML/JSON round trips, the accepted layouts, and validation messages."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from torchslim.errors import ConfigError
from torchslim.search import SearchConfig
from torchslim.search._config import parse_constraints, parse_objectives

ROOT = Path(__file__).resolve().parents[2]

FULL = SearchConfig(
    space="nas201",
    evaluator="nas201-table",
    objectives=("val_accuracy:max", "latency_ms:min"),
    budget=100,
    space_options={"num_classes": 10},
    evaluator_options={"dataset": "cifar100", "latency": True},
    constraints={"latency_ms": 2.0, "val_accuracy": {"min": 60}},
    sampler="evolution",
    sampler_options={"population_size": 20, "sample_size": 5},
    seed=3,
    study_name="nb201",
    storage="postgresql://u@h/db",
    workers=2,
    prescreen={"proxy": "synflow", "n": 200, "keep": 20},
    heartbeat_interval=5,
    grace_period=20,
)


def test_yaml_and_json_round_trips(tmp_path):
    assert SearchConfig.from_yaml(FULL.to_yaml()) == FULL
    assert SearchConfig.from_json(FULL.to_json()) == FULL
    FULL.to_yaml(tmp_path / "c.yaml")
    FULL.to_json(tmp_path / "c.json")
    assert SearchConfig.load(tmp_path / "c.yaml") == FULL == SearchConfig.load(tmp_path / "c.json")
    minimal = SearchConfig("a", "b", ("m:min",), 5)
    assert SearchConfig.from_yaml(minimal.to_yaml()) == minimal


def test_the_nested_layout():
    data = FULL.to_dict()
    assert data["version"] == 1
    assert data["space"] == {"name": "nas201", "options": {"num_classes": 10}}
    assert data["sampler"] == {"name": "evolution", "options": {"population_size": 20,
                                                                "sample_size": 5}}  # fmt: skip
    assert data["objectives"] == ["val_accuracy:max", "latency_ms:min"]


def test_short_forms_are_accepted():
    config = SearchConfig.from_yaml(
        "space: nas201\n"
        "evaluator: {name: nas201-table, dataset: cifar10}\n"
        "objectives: val_accuracy:max\n"
        "budget: 10\n"
        "constraints: null\n"
    )
    assert config.space == "nas201" and config.space_options == {}
    assert config.evaluator_options == {"dataset": "cifar10"}
    assert config.objectives == ("val_accuracy:max",) and config.constraints == {}
    assert config.sampler == "auto" and config.storage is None and config.workers == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("space: a\nevaluator: b\nobjectives: [m:max]\nbudget: 5\nbudjet: 3\n",
         r"unknown search config key\(s\) \['budjet'\]; known: budget"),
        ("space: a\nevaluator: b\nobjectives: [m:max]\n", r"misses \['budget'\]"),
        ("space: a\nevaluator: b\nobjectives: [m:up]\nbudget: 5\n", "bad objective 'm:up'"),
        ("space: a\nevaluator: b\nobjectives: [m:max, m:min]\nbudget: 5\n", "metric twice"),
        ("space: a\nevaluator: b\nobjectives: [m:max]\nbudget: 0\n", "bad budget 0"),
        ("space: a\nevaluator: b\nobjectives: [m:max]\nbudget: 5\nworkers: 0\n",
         "bad workers 0"),
        ("space: a\nevaluator: b\nobjectives: [m:max]\nbudget: 5\nversion: 2\n",
         "version 2 is not supported"),
        ("space: a\nevaluator: b\nobjectives: [m:max]\nbudget: 5\nconstraints: {m: fast}\n",
         "bad max bound for 'm': 'fast'"),
        ("space: a\nevaluator: b\nobjectives: [m:max]\nbudget: 5\nconstraints: {m: {lt: 1}}\n",
         "bad constraint for 'm'"),
        ("space: {options: {}}\nevaluator: b\nobjectives: [m:max]\nbudget: 5\n", "bad space"),
        ("space: a\nevaluator: b\nobjectives: [m:max]\nbudget: 5\nprescreen: {proxy: x, k: 1}\n",
         r"unknown prescreen key\(s\) \['k'\]"),
        ("space: a\nevaluator: b\nobjectives: [m:max]\nbudget: 5\nseed: 1.5\n", "bad seed"),
        ("- a\n- b\n", "must be a mapping"),
        ("space: [\n", "not valid YAML"),
    ],
)  # fmt: skip
def test_validation_names_the_value_at_fault(text, message):
    with pytest.raises(ConfigError, match=message):
        SearchConfig.from_yaml(text)


def test_replace_revalidates():
    assert replace(FULL, budget=7).budget == 7
    with pytest.raises(ConfigError, match="bad budget -1"):
        replace(FULL, budget=-1)
    with pytest.raises(ConfigError, match="does not exist"):
        SearchConfig.load("no/such/file.yaml")


def test_objective_and_constraint_parsers():
    assert parse_objectives("acc:max") == (("acc", "maximize"),)
    assert parse_objectives([("lat", "minimize"), "a:b:min"]) == (
        ("lat", "minimize"),
        ("a:b", "minimize"),
    )
    assert parse_constraints({"lat": 2, "acc": {"min": 1, "max": 3}}) == (
        ("lat", "max", 2.0),
        ("acc", "min", 1.0),
        ("acc", "max", 3.0),
    )
    with pytest.raises(ConfigError, match="give a finite one"):
        parse_constraints({"lat": float("inf")})


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "search").glob("*.yaml")), ids=str)
def test_the_example_configs_parse(path):
    config = SearchConfig.load(path)
    assert SearchConfig.from_yaml(config.to_yaml()) == config
