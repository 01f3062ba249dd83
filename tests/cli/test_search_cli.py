"""``torchslim search CONFIG.yaml``: runs, writes the result files, resumes, reports errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from torchslim.cli import main

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """\
version: 1
space: {name: 'tests.search._toy:ToySpace', options: {n: 3}}
evaluator: {name: 'tests.search._toy:ToyEvaluator'}
objectives: [score:max, cost:min]
constraints: {cost: 2.5}
budget: 6
seed: 0
"""


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the config names its space by an import path from the root


def test_search_writes_the_front_and_resumes(tmp_path, in_root, capsys):
    config = tmp_path / "toy.yaml"
    config.write_text(CONFIG)
    run_dir = tmp_path / "run"
    assert main(["search", str(config), "--run-dir", str(run_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "6 completed trials" in out and "score" in out and "cost" in out
    for name in ("pareto.json", "pareto.csv", "pareto.png", "trials.csv", "trials.json",
                 "config.yaml", "study.db"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    pareto = json.loads((run_dir / "pareto.json").read_text())
    assert pareto["n_complete"] == 6 and pareto["pareto"]
    assert all(p["metrics"]["cost"] <= 2.5 for p in pareto["pareto"])
    assert len((run_dir / "trials.csv").read_text().splitlines()) == 7
    first = json.loads((run_dir / "trials.json").read_text())["trials"]

    # the same command with a larger budget resumes the study
    assert main(["search", str(config), "--run-dir", str(run_dir), "--budget", "9",
                 "--no-progress"]) == 0  # fmt: skip
    again = json.loads((run_dir / "trials.json").read_text())["trials"]
    assert len(again) == 9 and again[:6] == first
    assert "budget: 9" in (run_dir / "config.yaml").read_text()


def test_search_storage_and_study_name_options(tmp_path, in_root):
    config = tmp_path / "toy.yaml"
    config.write_text(CONFIG)
    db = tmp_path / "elsewhere.db"
    args = ["search", str(config), "--run-dir", str(tmp_path / "r"), "--no-progress"]
    assert main([*args, "--storage", f"sqlite:///{db}", "--study-name", "s1", "--budget", "2"]) == 0
    assert db.is_file() and not (tmp_path / "r" / "study.db").exists()
    import optuna

    assert optuna.load_study(study_name="s1", storage=f"sqlite:///{db}").trials[1].number == 1


def test_search_errors_are_reported_with_exit_code_2(tmp_path, in_root, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(CONFIG.replace("score:max", "accuracy:max"))
    assert main(["search", str(config), "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "objective metric 'accuracy' is not a metric of evaluator" in err
    assert main(["search", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert os.getcwd() == str(ROOT)
