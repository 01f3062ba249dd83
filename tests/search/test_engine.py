"""The engine: budgets, results, constraints, failures, resume, ask/tell, local workers, and
SQLite kill-and-resume."""

from __future__ import annotations

import json

import optuna
import pytest
from _killresume import check_kill_resume, run_kill_resume
from _toy import ToyEvaluator, ToySpace, read_log
from optuna.trial import TrialState

import torchslim as ts
from torchslim.errors import ConfigError, TorchSlimError
from torchslim.search import Search

SPACE = "tests.search._toy:ToySpace"
EVALUATOR = "tests.search._toy:ToyEvaluator"


def _states(study):
    trials = study.get_trials(deepcopy=False)
    return {s: sum(t.state == s for t in trials) for s in TrialState}


def _dominates(a, b, objectives):
    signs = [1 if d == "maximize" else -1 for _, d in objectives]
    pa = [s * a.metrics[m] for s, (m, _) in zip(signs, objectives, strict=True)]
    pb = [s * b.metrics[m] for s, (m, _) in zip(signs, objectives, strict=True)]
    return all(x >= y for x, y in zip(pa, pb, strict=True)) and pa != pb


def test_search_reaches_the_budget_exactly_and_keeps_configs_and_metrics():
    result = ts.search(
        ToySpace(),
        ToyEvaluator(),
        objectives="score:max",
        budget=12,
        sampler="random",
        seed=0,
        progress=False,
    )
    assert _states(result.study)[TrialState.COMPLETE] == 12 == len(result.trials)
    assert len(result.study.trials) == 12
    for record, trial in zip(result.trials, result.study.trials, strict=True):
        assert record.config == {"x": [trial.params[f"x{i}"] for i in range(4)]}
        xs = record.config["x"]
        assert record.metrics["score"] == pytest.approx(-sum((x - 0.7) ** 2 for x in xs))
        assert record.metrics["cost"] == pytest.approx(sum(xs))
        assert trial.user_attrs["metrics"] == record.metrics
    best = max(result.trials, key=lambda r: r.metrics["score"])
    assert result.pareto == [best] and result.best() == best
    assert result.best("cost", "min") == min(result.trials, key=lambda r: r.metrics["cost"])


def test_two_objectives_give_the_non_dominated_front():
    objectives = [("score", "maximize"), ("cost", "minimize")]
    result = ts.search(
        SPACE,
        EVALUATOR,
        objectives=["score:max", "cost:min"],
        budget=30,
        seed=1,
        progress=False,
    )
    front = {r.number for r in result.pareto}
    assert front
    for r in result.trials:
        dominated = any(_dominates(o, r, objectives) for o in result.trials)
        assert dominated == (r.number not in front), r


def test_constraints_are_stored_for_optuna_and_the_front_is_feasible():
    result = ts.search(
        SPACE,
        EVALUATOR,
        objectives=["score:max"],
        constraints={"cost": 1.5},
        budget=25,
        sampler="random",
        seed=3,
        progress=False,
    )
    assert any(not r.feasible for r in result.trials) and any(r.feasible for r in result.trials)
    for record, trial in zip(result.trials, result.study.trials, strict=True):
        assert trial.constraints == {"cost:max": pytest.approx(record.metrics["cost"] - 1.5)}
        assert record.feasible == (record.metrics["cost"] <= 1.5)
    best = max((r for r in result.trials if r.feasible), key=lambda r: r.metrics["score"])
    assert result.pareto == [best]


def test_a_lower_bound_constraint():
    result = ts.search(
        SPACE,
        EVALUATOR,
        objectives=["cost:min"],
        constraints={"score": {"min": -0.5}},
        budget=15,
        sampler="random",
        seed=0,
        progress=False,
    )
    for r in result.trials:
        assert r.feasible == (r.metrics["score"] >= -0.5)
    assert all(r.metrics["score"] >= -0.5 for r in result.pareto)


def test_evaluator_failures_fail_the_trial_with_the_error_and_the_search_goes_on(caplog):
    result = ts.search(
        SPACE,
        EVALUATOR,
        objectives="score:max",
        budget=10,
        sampler="random",
        seed=0,
        evaluator_options={"fail_below": 0.3},
        progress=False,
    )
    failed = [t for t in result.study.trials if t.state == TrialState.FAIL]
    assert failed and len(result.trials) == 10
    for t in failed:
        assert t.params["x0"] < 0.3
        assert t.user_attrs["error"].startswith("RuntimeError: toy failure")
    assert all(r.config["x"][0] >= 0.3 for r in result.trials)
    assert "toy failure" in caplog.text


def test_an_always_failing_evaluator_stops_after_consecutive_failures():
    runner = Search(SPACE, EVALUATOR, objectives="score:max", evaluator_options={"fail_below": 2.0})
    with pytest.raises(TorchSlimError, match="3 trials in a row failed.*toy failure"):
        runner.run(10, progress=False, max_consecutive_failures=3)
    assert _states(runner.study)[TrialState.FAIL] == 3


def test_a_config_error_in_the_evaluator_aborts_the_search():
    runner = Search(
        SPACE, EVALUATOR, objectives="score:max", evaluator_options={"config_error": True}
    )
    with pytest.raises(ConfigError, match="misconfigured"):
        runner.run(5, progress=False)
    assert _states(runner.study)[TrialState.FAIL] == 1


def test_a_missing_metric_is_an_error_naming_it():
    runner = Search(
        SPACE, EVALUATOR, objectives=["score:max", "cost:min"], evaluator_options={"drop": "cost"}
    )
    with pytest.raises(ConfigError, match="no metric 'cost'.*returned: score"):
        runner.run(5, progress=False)


def test_objectives_must_be_metrics_of_the_evaluator():
    with pytest.raises(ConfigError, match="'accuracy' is not a metric.*score, cost"):
        Search(SPACE, EVALUATOR, objectives="accuracy:max")
    with pytest.raises(ConfigError, match="'latency' is not a metric"):
        Search(SPACE, EVALUATOR, objectives="score:max", constraints={"latency": 1.0})


def test_ask_and_tell():
    runner = Search(SPACE, objectives=["score:max", "cost:min"], constraints={"cost": 3.0})
    trial, config = runner.ask()
    assert config == {"x": [trial.params[f"x{i}"] for i in range(4)]}
    record = runner.tell(trial, {"score": -1.0, "cost": 2.0, "extra": 7})
    assert record.metrics == {"score": -1.0, "cost": 2.0, "extra": 7.0} and record.feasible
    trial, _ = runner.ask()
    with pytest.raises(ConfigError, match="no metric 'cost'"):
        runner.tell(trial, {"score": 1.0})
    trial, _ = runner.ask()
    assert runner.tell(trial, {"score": float("nan"), "cost": 1.0}) is None
    states = [t.state for t in runner.study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    assert runner.result().trials == [record] == runner.pareto()


def test_resume_continues_to_the_budget_and_keeps_earlier_trials(tmp_path):
    kwargs = dict(objectives="score:max", sampler="random", run_dir=tmp_path, progress=False)
    first = ts.search(SPACE, EVALUATOR, budget=5, seed=0, **kwargs)
    assert (tmp_path / "study.db").is_file() and (tmp_path / "pareto.json").is_file()
    before = [(r.number, r.params) for r in first.trials]
    second = ts.search(SPACE, EVALUATOR, budget=9, seed=1, **kwargs)
    assert len(second.trials) == 9
    assert [(r.number, r.params) for r in second.trials[:5]] == before
    third = ts.search(SPACE, EVALUATOR, budget=9, seed=2, **kwargs)  # already there: no trial
    assert len(third.study.trials) == 9


def test_another_search_under_an_existing_study_name_is_a_config_error(tmp_path):
    ts.search(SPACE, EVALUATOR, objectives="score:max", budget=2, run_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="belongs to another search.*objectives"):
        Search(SPACE, EVALUATOR, objectives="cost:min", run_dir=tmp_path)
    with pytest.raises(ConfigError, match="space_options"):
        Search(SPACE, EVALUATOR, objectives="score:max", run_dir=tmp_path, space_options={"n": 3})
    Search(SPACE, EVALUATOR, objectives="cost:min", run_dir=tmp_path, study_name="other")


def test_workers_need_a_shared_storage():
    with pytest.raises(ConfigError, match="workers=2 need a storage"):
        ts.search(SPACE, EVALUATOR, objectives="score:max", budget=4, workers=2, progress=False)
    with pytest.raises(ConfigError, match="workers=3 need a storage"):
        storage = optuna.storages.InMemoryStorage()
        Search(SPACE, EVALUATOR, objectives="score:max", storage=storage).run(4, workers=3)


def test_two_local_workers_share_one_study(tmp_path):
    log = tmp_path / "evals.log"
    result = ts.search(
        SPACE,
        EVALUATOR,
        objectives="score:max",
        budget=10,
        workers=2,
        sampler="random",
        seed=0,
        run_dir=tmp_path,
        evaluator_options={"sleep": 0.2, "log": str(log)},
        progress=False,
    )
    assert _states(result.study)[TrialState.COMPLETE] == 10 == len(result.study.trials)
    workers = {t.user_attrs["worker"] for t in result.study.trials}
    assert len(workers) == 2  # both processes evaluated trials
    assert len({tuple(sorted(r.params.items())) for r in result.trials}) == 10  # seeds differ
    assert len({pid for _, pid, _, _ in read_log(log)}) == 2


def test_sqlite_two_workers_kill_and_resume(tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    result = run_kill_resume(storage, tmp_path, budget=16)
    check_kill_resume(result, budget=16)


_POP = """
import sys, warnings
warnings.simplefilter("ignore")
import optuna
from torchslim.search._storage import resolve_storage
study = optuna.load_study(study_name="pop", storage=resolve_storage(sys.argv[1], None))
numbers = []
for _ in range(10):
    trial = study.ask()  # pops a WAITING trial
    numbers.append(trial.number)
    study.tell(trial, 0.0)  # raises if another process finished this trial already
print(" ".join(map(str, numbers)))
"""


def test_sqlite_never_hands_one_waiting_trial_to_two_workers(tmp_path):
    # Plain SQLite transactions let two processes both pop one enqueued trial (with 4
    # processes and 60 trials, 8 to 18 were claimed twice); BEGIN IMMEDIATE serialises them.
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'pop.db'}"
    study = optuna.create_study(study_name="pop", storage=url)
    for i in range(30):
        study.enqueue_trial({"x": float(i)})
    procs = [
        subprocess.Popen([sys.executable, "-c", _POP, url], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    numbers = sorted(int(n) for out in outs for n in out.split())
    assert numbers == list(range(30))


def test_results_are_written_as_json_csv_and_png(tmp_path):
    result = ts.search(
        SPACE,
        EVALUATOR,
        objectives=["score:max", "cost:min"],
        constraints={"cost": 2.5},
        budget=12,
        seed=0,
        progress=False,
    )
    paths = result.write(tmp_path)
    pareto = json.loads(paths["pareto.json"].read_text())
    assert [p["number"] for p in pareto["pareto"]] == [r.number for r in result.pareto]
    assert pareto["objectives"] == ["score:maximize", "cost:minimize"]
    trials = json.loads(paths["trials.json"].read_text())["trials"]
    assert [t["metrics"] for t in trials] == [r.metrics for r in result.trials]
    rows = paths["trials.csv"].read_text().splitlines()
    assert rows[0].startswith("number,feasible,pareto,score,cost,config.x")
    assert len(rows) == 13
    assert len(paths["pareto.csv"].read_text().splitlines()) == len(result.pareto) + 1
    png = paths["pareto.png"].read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert "trial" in result.table() and str(result.pareto[0].number) in result.table()


def test_prescreen_queues_the_best_candidates_by_the_proxy():
    from torchslim.search import prescreen

    expected = prescreen(ToySpace(), "synflow", n=12, keep=3, seed=5)
    result = ts.search(
        ToySpace(),
        ToyEvaluator(),
        objectives="score:max",
        budget=5,
        seed=5,
        prescreen={"proxy": "synflow", "n": 12, "keep": 3},
        progress=False,
    )
    first = result.study.trials[:3]
    assert [t.params for t in first] == [c["params"] for c in expected]
    assert [t.user_attrs["prescreen"]["score"] for t in first] == [c["score"] for c in expected]
    assert all(t.state == TrialState.COMPLETE for t in result.study.trials)


def test_storage_urls_and_paths(tmp_path):
    from torchslim.search._storage import resolve_storage

    assert resolve_storage(None, None) is None
    storage = resolve_storage(None, tmp_path)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert storage.url == f"sqlite:///{(tmp_path / 'study.db').resolve()}"
    assert storage.get_heartbeat_interval() == 10 and storage.grace_period == 30
    assert resolve_storage(tmp_path / "x.db", None).url.endswith("x.db")
    with pytest.raises(ConfigError, match="storage URL"):
        resolve_storage("runs/somewhere", None)
    with pytest.raises(ConfigError, match=r"cannot open the storage postgresql\S*://u:\*\*\*@"):
        resolve_storage("postgres://u:secret@127.0.0.1:1/db", None)


def test_importing_the_search_package_does_not_import_optuna():
    import subprocess
    import sys

    code = "import sys, torchslim.search; print('optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_missing_optuna_names_the_extra(monkeypatch):
    import sys

    from torchslim.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` fail
    with pytest.raises(MissingExtraError, match=r"pip install 'torchslim\[search\]'"):
        Search(SPACE, objectives="score:max")


def test_a_seeded_worker_joining_running_workers_is_warned(tmp_path, caplog):
    first = Search(SPACE, EVALUATOR, objectives="score:max", run_dir=tmp_path, seed=1)
    trial, _ = first.ask()  # another worker is evaluating this one
    second = Search(SPACE, EVALUATOR, objectives="score:max", run_dir=tmp_path, seed=1)
    second._warn_shared_seed()
    assert "same seed (1)" in caplog.text and "--seed" in caplog.text
    first.tell(trial, {"score": 0.0, "cost": 0.0})
