"""The kill-and-resume scenario, shared by the SQLite and PostgreSQL tests.

Two ``torchslim search CONFIG --storage URL`` workers share one study; worker A is killed with
SIGKILL while it evaluates a trial; the same command is started again (worker C); B and C
finish the budget. The caller asserts on what the storage holds afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _toy import read_log

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class KillResume:
    trials: list[Any]  # FrozenTrials of the study
    killed_number: int  # the trial worker A was evaluating when killed
    log: list[tuple[str, int, int, str]]  # the evaluator's start/done lines
    codes: dict[str, int]  # exit codes of workers B and C
    pids: dict[str, int]
    run_dirs: dict[str, Path]
    outputs: dict[str, str]


def _config(tmp: Path, budget: int, sleep: float, log: Path) -> Path:
    path = tmp / "search.yaml"
    path.write_text(
        "version: 1\n"
        "space: {name: 'tests.search._toy:ToySpace', options: {n: 6}}\n"
        f"evaluator: {{name: 'tests.search._toy:ToyEvaluator', options: "
        f"{{sleep: {sleep}, log: '{log}'}}}}\n"
        "objectives: [score:max]\n"
        f"budget: {budget}\n"
        "sampler: random\n"  # unseeded: every worker draws its own candidates
        "study_name: kill-resume\n"
        "heartbeat_interval: 1\n"
        "grace_period: 3\n"
    )
    return path


def run_kill_resume(
    storage: str, tmp: Path, *, budget: int = 16, sleep: float = 0.4, timeout: float = 90
) -> KillResume:
    import optuna

    from torchslim.search._storage import resolve_storage

    log = tmp / "evals.log"
    config = _config(tmp, budget, sleep, log)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    procs: dict[str, subprocess.Popen] = {}
    run_dirs = {name: tmp / f"run-{name}" for name in "ABC"}

    def start(name: str) -> None:
        cmd = [sys.executable, "-m", "torchslim.cli", "search", str(config)]
        cmd += ["--storage", storage, "--run-dir", str(run_dirs[name]), "--no-progress"]
        out = open(tmp / f"worker-{name}.out", "w")  # noqa: SIM115 (closed with the process)
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)

    start("A")
    start("B")
    deadline = time.monotonic() + timeout
    killed = None
    pid_a = procs["A"].pid
    while killed is None:
        if time.monotonic() > deadline or procs["A"].poll() is not None:
            for p in procs.values():
                p.kill()
            raise AssertionError(
                "worker A finished or timed out before it could be killed: "
                + (tmp / "worker-A.out").read_text()[-2000:]
            )
        mine = [e for e in read_log(log) if e[1] == pid_a]
        if sum(e[0] == "done" for e in mine) >= 2 and mine[-1][0] == "start":
            os.kill(pid_a, signal.SIGKILL)  # mid-evaluation: its trial stays RUNNING
            killed = mine[-1][2]
        time.sleep(0.02)
    procs["A"].wait()
    start("C")  # "rerun the same command"
    codes = {}
    for name in "BC":
        try:
            codes[name] = procs[name].wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            procs[name].kill()
            codes[name] = -9
    outputs = {n: (tmp / f"worker-{n}.out").read_text() for n in "ABC"}
    study = optuna.load_study(study_name="kill-resume", storage=resolve_storage(storage, None))
    return KillResume(
        trials=study.get_trials(deepcopy=False),
        killed_number=killed,
        log=read_log(log),
        codes=codes,
        pids={name: p.pid for name, p in procs.items()},
        run_dirs=run_dirs,
        outputs=outputs,
    )


def check_kill_resume(result: KillResume, budget: int) -> None:
    """Assertions common to every storage (see the module docstring)."""
    from optuna.trial import TrialState

    assert result.codes == {"B": 0, "C": 0}, result.outputs
    complete = [t for t in result.trials if t.state == TrialState.COMPLETE]
    # the budget is met exactly, and every trial number is recorded once
    assert len(complete) == budget, [(t.number, t.state) for t in result.trials]
    numbers = [t.number for t in result.trials]
    assert len(numbers) == len(set(numbers))
    # no candidate was completed twice (random floats: distinct unless a trial ran twice)
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == budget
    # the killed worker's trial became FAILED, and its parameters were retried and completed
    killed = result.trials[result.killed_number]
    assert killed.state == TrialState.FAIL
    retries = [t for t in complete if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    # every completed trial holds its config and metrics; each ran to the end exactly once
    for t in complete:
        assert set(t.user_attrs["metrics"]) == {"score", "cost"}
        assert t.user_attrs["metrics"]["score"] == t.value
        assert len(t.user_attrs["config"]["x"]) == 6
    done = [n for event, _, n, _ in result.log if event == "done"]
    assert sorted(done) == sorted(t.number for t in complete)
    # A and B shared the study from the start (A completed two trials before it was killed)
    by = {pid for event, pid, _, _ in result.log if event == "done"}
    assert {result.pids["A"], result.pids["B"]} <= by
    # nothing else is left running or waiting
    assert not [t for t in result.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for name in "BC":
        assert (result.run_dirs[name] / "pareto.json").is_file()
