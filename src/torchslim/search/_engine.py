"""The search engine: ``ts.search``, the ask/tell :class:`Search`, and its results.

Everything a study needs comes from Optuna: the study and its trials, samplers, storages,
heartbeats and retries. This module adds what a model search needs on top:

* **Objectives and constraints by metric name.** An evaluator returns ``{metric: value}``;
  ``objectives=["val_accuracy:max", "latency_ms:min"]`` sets the study's directions and
  ``constraints={"latency_ms": 2.0}`` stores ``latency_ms - 2.0`` with ``trial.set_constraint``
  (feasible when <= 0), which NSGA-II, TPE and regularised evolution read. Each trial keeps its
  candidate's ``config`` and all ``metrics`` as user attributes, so results are data.
* **A budget of completed trials for the whole study**, shared by any number of workers: a
  worker asks for a new trial only while ``complete + running < budget`` and gives a trial back
  when more than ``budget`` trials started before it, so a study ends at exactly ``budget``
  completed trials; a rerun resumes to the budget.
* **Storage**: ``storage=None`` keeps the study in memory, or, with ``run_dir``, in the SQLite
  file ``run_dir/study.db``; a ``postgresql://`` URL lets workers on many machines share one
  study. SQLite rather than Optuna's JournalStorage file, because only RDB storages have
  Optuna's heartbeat: a trial whose worker died (even by SIGKILL) stops beating, is marked
  FAILED after ``grace_period`` seconds by the next worker that asks, and
  :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` queues the same parameters again.
  Optuna's FAQ warns that SQLite's locking is weak under parallel writers (a waiting trial can
  be popped twice); every SQLite transaction here therefore starts with ``BEGIN IMMEDIATE``
  (one writer at a time, a 60 s lock timeout), which makes those read-then-write steps atomic.
  For many machines use PostgreSQL.
* **Failures**: an exception in the evaluator marks the trial FAILED with the error stored and
  logged, and the search goes on; a :class:`~torchslim.errors.ConfigError` (a bad option, an
  objective the evaluator does not return) aborts it.

Limitation (Optuna's too): a worker killed inside ``study.ask``, before its first heartbeat,
leaves a RUNNING trial without a heartbeat that Optuna never marks stale; workers then wait for
it. Mark it failed with ``study.tell(number, state=TrialState.FAIL)``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchslim._extras import require
from torchslim.errors import ConfigError, TorchSlimError
from torchslim.search._config import SearchConfig, parse_constraints, parse_objectives
from torchslim.search._resolve import describe, resolve_evaluator, resolve_space
from torchslim.search._result import SearchResult, TrialRecord
from torchslim.search._space import Evaluator, SearchSpace
from torchslim.search._storage import Heartbeat, heartbeat_enabled, resolve_storage, safe_url

__all__ = ["search", "Search", "SearchResult", "TrialRecord", "run_config", "resolve_storage"]

_logger = logging.getLogger(__name__)

DEFAULT_STUDY_NAME = "search"
_IDENTITY_ATTR = "torchslim.search"


class Search:
    """A search you can drive yourself (ask/tell) or run to a budget.

    ::

        s = ts.search.Search("nas201", objectives=["val_accuracy:max"])
        trial, config = s.ask()
        s.tell(trial, {"val_accuracy": my_eval(config)})
        print(s.result().pareto)

    Args:
        space: A registered space name, an import path ``"module:Class"``, or an instance.
        evaluator: Likewise; ``None`` when you compute the metrics yourself (ask/tell).
        objectives: ``"metric:max"`` / ``"metric:min"`` strings (or pairs).
        constraints: ``{metric: upper bound}`` or ``{metric: {"min": b, "max": b}}``.
        storage: ``None``, an Optuna storage URL, a ``.db`` path, or an Optuna storage.
        study_name: The study's name in its storage (default ``"search"``). The same name,
            storage and space/objectives resume the study; another space or other objectives
            under an existing name are a ConfigError.
        sampler: A :func:`list_samplers` name or an ``optuna.samplers.BaseSampler``.
        sampler_options: Keyword options of a named sampler.
        seed: Seeds the sampler.
        run_dir: Where ``storage=None`` puts ``study.db``.
        space_options / evaluator_options: Options for named spaces and evaluators.
        budget: The intended budget (sizes the default samplers; :meth:`run` takes its own).
        heartbeat_interval / grace_period: Seconds between heartbeats of a running trial, and
            the silence after which another worker fails and retries it (default 3 beats).
    """

    def __init__(
        self,
        space: str | SearchSpace,
        evaluator: str | Evaluator | None = None,
        *,
        objectives: str | Sequence[Any],
        constraints: Mapping[str, Any] | None = None,
        storage: Any = None,
        study_name: str | None = None,
        sampler: Any = "auto",
        sampler_options: Mapping[str, Any] | None = None,
        seed: int | None = None,
        run_dir: str | Path | None = None,
        space_options: Mapping[str, Any] | None = None,
        evaluator_options: Mapping[str, Any] | None = None,
        budget: int | None = None,
        heartbeat_interval: int = 10,
        grace_period: int | None = None,
        worker_rank: int = 0,
    ) -> None:
        optuna = require("optuna", "ts.search")
        from torchslim.search._samplers import get_sampler

        self.objectives = parse_objectives(objectives)
        self.constraints = parse_constraints(constraints)
        self.space = resolve_space(space, dict(space_options or {}))
        self.space_name = space if isinstance(space, str) else describe(self.space)
        self.evaluator = (
            None
            if evaluator is None
            else resolve_evaluator(evaluator, dict(evaluator_options or {}))
        )
        self.evaluator_name = (
            evaluator if isinstance(evaluator, str) or evaluator is None else describe(evaluator)
        )
        self._check_metrics()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.study_name = study_name or DEFAULT_STUDY_NAME
        self.seed = seed
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period or 3 * heartbeat_interval
        self._storage_arg = storage
        self.storage = resolve_storage(
            storage, self.run_dir, heartbeat_interval=heartbeat_interval, grace_period=grace_period
        )
        self._sampler_arg = (sampler, dict(sampler_options or {}))
        self.sampler = get_sampler(
            sampler,
            n_objectives=len(self.objectives),
            seed=None if seed is None else seed + worker_rank,
            budget=budget,
            options=dict(sampler_options or {}),
        )
        if worker_rank and not isinstance(sampler, str):
            self.sampler.reseed_rng()  # a copied instance would repeat worker 0's draws
        self.study = self._open_study(optuna)
        self._heartbeats: dict[int, Heartbeat] = {}
        self._last_error = ""
        self._spawned = False  # True in the processes of run(workers=N), seeded seed + rank

    # --- set-up ------------------------------------------------------------------------------

    def _check_metrics(self) -> None:
        if self.evaluator is None or not self.evaluator.metrics:
            return
        known = set(self.evaluator.metrics)
        for metric, use in [(m, "objective") for m, _ in self.objectives] + [
            (m, "constraint") for m, _, _ in self.constraints
        ]:
            if metric not in known:
                raise ConfigError(
                    f"{use} metric {metric!r} is not a metric of evaluator "
                    f"{self.evaluator_name!r} (its metrics: {', '.join(self.evaluator.metrics)})"
                )

    def identity(self) -> dict[str, Any]:
        """What makes a study this search's: space, evaluator, objectives, constraints."""
        return _jsonable(
            {
                "space": self.space_name,
                "space_options": self.space.options(),
                "evaluator": self.evaluator_name,
                "evaluator_options": None if self.evaluator is None else self.evaluator.options(),
                "objectives": [f"{m}:{d}" for m, d in self.objectives],
                "constraints": [list(c) for c in self.constraints],
            }
        )

    def _open_study(self, optuna: Any) -> Any:
        directions = [d for _, d in self.objectives]
        study = optuna.create_study(
            storage=self.storage,
            sampler=self.sampler,
            study_name=self.study_name,
            directions=directions,
            load_if_exists=True,
        )
        mine = self.identity()
        theirs = study.user_attrs.get(_IDENTITY_ATTR)
        if theirs is None:
            stored = [d.name.lower() for d in study.directions]
            if stored != directions:
                raise ConfigError(
                    f"study {self.study_name!r} exists with directions {stored}, not "
                    f"{directions}; choose another study name or run directory"
                )
            study.set_user_attr(_IDENTITY_ATTR, mine)
            return study
        differ = [
            key
            for key in mine
            if mine[key] != theirs.get(key)
            and not (
                key.startswith("evaluator") and None in (mine["evaluator"], theirs.get("evaluator"))
            )
        ]
        if differ:
            detail = "; ".join(f"{k}: {theirs.get(k)!r} there, {mine[k]!r} here" for k in differ)
            raise ConfigError(
                f"study {self.study_name!r} in {safe_url(self.storage)} belongs to another "
                f"search ({detail}); choose another study name (--study-name) or run "
                "directory, or delete the study to start over"
            )
        return study

    # --- ask / tell ----------------------------------------------------------------------------

    def ask(self) -> tuple[Any, dict[str, Any]]:
        """A new trial and its candidate's config (the trial is RUNNING until :meth:`tell`)."""
        with warnings.catch_warnings():  # Optuna warns that heartbeats are for optimize();
            warnings.filterwarnings("ignore", "Heartbeat of storage")  # this class beats itself
            trial = self.study.ask()
        self._start_heartbeat(trial)
        try:
            config = self.space.suggest(trial)
            json.dumps(config)
            trial.set_user_attr("config", config)
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        except BaseException as exc:
            self.fail(trial, exc)
            if isinstance(exc, TypeError):
                raise ConfigError(
                    f"search space {self.space_name!r} returned a config that is not "
                    f"JSON-serialisable: {exc}"
                ) from exc
            raise
        return trial, config

    def tell(self, trial: Any, metrics: Mapping[str, Any]) -> TrialRecord | None:
        """Record ``metrics`` for ``trial``; returns its record, or ``None`` when the trial
        failed (a non-finite value) or was already finished by another worker.

        Raises:
            ConfigError: a metric named by an objective or constraint is missing (the trial
                is marked FAILED first).
        """
        import optuna

        try:
            values, violations, clean = self._values(metrics)
        except ConfigError as exc:
            self.fail(trial, exc)
            raise
        except ValueError as exc:  # a non-finite value: this candidate failed
            self.fail(trial, exc)
            return None
        try:
            trial.set_user_attr("metrics", clean)
            for key, value in violations.items():
                trial.set_constraint(key, value)
            frozen = self.study.tell(trial, values)
        except optuna.exceptions.UpdateFinishedTrialError:
            _logger.warning(
                "trial %d was already finished (failed as stale by another worker?); its "
                "result is dropped",
                trial.number,
            )
            return None
        finally:
            self._stop_heartbeat(trial)
        return self._record(frozen)

    def fail(self, trial: Any, error: BaseException | str) -> None:
        """Mark ``trial`` FAILED, keeping the error in its user attributes."""
        import optuna

        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self._last_error = text
        try:
            trial.set_user_attr("error", text[:2000])
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
        finally:
            self._stop_heartbeat(trial)

    def _values(
        self, metrics: Mapping[str, Any]
    ) -> tuple[list[float], dict[str, float], dict[str, float]]:
        if not isinstance(metrics, Mapping):
            raise ConfigError(
                f"evaluator {self.evaluator_name!r} returned {type(metrics).__name__}, not a "
                "mapping {metric: value}"
            )
        clean: dict[str, float] = {}
        for key, value in metrics.items():
            try:
                clean[str(key)] = float(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"metric {key!r} = {value!r} from evaluator {self.evaluator_name!r} is "
                    "not a number"
                ) from exc
        needed = [(m, "objective") for m, _ in self.objectives] + [
            (m, "constraint") for m, _, _ in self.constraints
        ]
        for metric, use in needed:
            if metric not in clean:
                raise ConfigError(
                    f"evaluator {self.evaluator_name!r} returned no metric {metric!r} (an "
                    f"{use}); it returned: {', '.join(clean) or 'nothing'}"
                )
            if not math.isfinite(clean[metric]):
                raise ValueError(f"metric {metric!r} is {clean[metric]}")
        values = [clean[m] for m, _ in self.objectives]
        violations = {
            f"{m}:{kind}": (clean[m] - b if kind == "max" else b - clean[m])
            for m, kind, b in self.constraints
        }
        return values, violations, clean

    # --- running to a budget ------------------------------------------------------------------

    def run(
        self,
        budget: int,
        *,
        workers: int = 1,
        progress: bool = True,
        prescreen: Any = None,
        max_consecutive_failures: int = 10,
    ) -> SearchResult:
        """Evaluate trials until the study holds ``budget`` completed ones.

        Args:
            budget: Completed trials of the whole study (other workers' count too).
            workers: Processes on this machine (needs a persistent storage); each uses
                ``cores // workers`` torch threads.
            progress: Show a progress bar.
            prescreen: A proxy name or ``{"proxy", "n", "keep"}``: on a new study, score
                ``n`` random candidates with a zero-cost proxy and run the best ``keep``
                first (see :func:`torchslim.search.prescreen`).
            max_consecutive_failures: Stop (TorchSlimError) after this many failed trials
                in a row in one worker, which means the evaluator is broken.
        """
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ConfigError(f"bad budget {budget!r}: give an integer >= 1, e.g. budget=100")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"bad workers {workers!r}: give an integer >= 1")
        if self.evaluator is None:
            raise ConfigError(
                "run() needs an evaluator; pass one to Search(...), or own the loop with "
                "ask() and tell()"
            )
        if prescreen is not None:
            self._prescreen(prescreen)
        if workers > 1:
            from torchslim.search._workers import run_workers

            run_workers(self, budget, workers, progress=progress)
        else:
            self._loop(budget, progress=progress, max_failures=max_consecutive_failures)
        return self.result(budget)

    def _loop(self, budget: int, *, progress: bool, max_failures: int = 10) -> None:
        from torchslim.search._workers import progress_bar

        self._warn_shared_seed()
        bar = progress_bar(progress, budget)
        failures, waiting_since = 0, None
        try:
            while True:
                self._fail_stale()
                complete, running = self._counts()
                bar.show(complete)
                if complete >= budget:
                    break
                if complete + running >= budget:  # the rest is in flight on other workers
                    waiting_since = self._wait(waiting_since, running)
                    continue
                waiting_since = None
                trial, config = self.ask()
                if self._surplus(trial, budget):
                    self.fail(trial, "not run: the budget was reached by other workers")
                    continue
                ok = self._evaluate(trial, config)
                failures = 0 if ok else failures + 1
                if failures >= max_failures:
                    raise TorchSlimError(
                        f"{failures} trials in a row failed; the last error: "
                        f"{self._last_error} (see the log); fix the evaluator or space and "
                        "rerun to resume"
                    )
        finally:
            bar.close()

    def _wait(self, since: float | None, running: int) -> float:
        """Sleep while other workers finish the budget; say so, and say when it takes long."""
        now = time.monotonic()
        if since is None:
            _logger.info("waiting for %d trial(s) of other workers", running)
            since = now
        limit = max(60.0, 4.0 * self.grace_period)
        if now - since > limit and not getattr(self, "_warned_wait", False):
            self._warned_wait = True
            import optuna

            numbers = [
                t.number
                for t in self.study.get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
                )
            ]
            _logger.warning(
                "still waiting after %.0f s for trial(s) %s of other workers; a worker killed "
                "before its first heartbeat leaves a trial Optuna never fails: if those workers "
                "are gone, fail it with optuna.load_study(...).tell(NUMBER, state="
                "TrialState.FAIL)",
                now - since,
                numbers,
            )
        time.sleep(min(1.0, self.heartbeat_interval / 2))
        return since

    def _warn_shared_seed(self) -> None:
        """Workers started separately with one seed would draw the same candidates."""
        if self.seed is None or self.storage is None or self._spawned:
            return
        import optuna

        if self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            _logger.warning(
                "other workers are running trials of study %r; if they use the same seed "
                "(%d), they sample the same candidates: give each worker its own --seed, or "
                "none",
                self.study_name,
                self.seed,
            )

    def _evaluate(self, trial: Any, config: dict[str, Any]) -> bool:
        try:
            metrics = self.evaluator(self.space, config, trial)
        except ConfigError as exc:
            self.fail(trial, exc)
            raise
        except KeyboardInterrupt:
            self.fail(trial, "interrupted")
            raise
        except Exception as exc:
            self.fail(trial, exc)
            _logger.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
            _logger.debug("trial %d config: %s", trial.number, config, exc_info=True)
            return False
        record = self.tell(trial, metrics)
        if record is not None:
            shown = " ".join(f"{k}={v:.4g}" for k, v in record.metrics.items())
            _logger.info("trial %d: %s", trial.number, shown)
        return record is not None

    def _counts(self) -> tuple[int, int]:
        import optuna

        state = optuna.trial.TrialState
        trials = self.study.get_trials(deepcopy=False, states=(state.COMPLETE, state.RUNNING))
        complete = sum(t.state == state.COMPLETE for t in trials)
        # without heartbeats a dead worker's RUNNING trial would never end: do not wait for it
        running = len(trials) - complete if self._heartbeat_enabled() else 0
        return complete, running

    def _surplus(self, trial: Any, budget: int) -> bool:
        """More than ``budget`` trials started before this one (a race between workers)."""
        import optuna

        if self.storage is None:
            return False
        state = optuna.trial.TrialState
        trials = self.study.get_trials(deepcopy=False)
        mine = trials[trial.number]
        key = (mine.datetime_start, mine.number)
        ahead = sum(
            (t.datetime_start, t.number) < key
            for t in trials
            if t.state in (state.COMPLETE, state.RUNNING)
            and t.datetime_start is not None
            and t.number != mine.number
        )
        return ahead >= budget

    # --- heartbeats -----------------------------------------------------------------------------

    def _heartbeat_enabled(self) -> bool:
        return heartbeat_enabled(self.storage)

    def _fail_stale(self) -> None:
        if self._heartbeat_enabled():
            import optuna

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)

    def _start_heartbeat(self, trial: Any) -> None:
        if self._heartbeat_enabled():
            interval = self.storage.get_heartbeat_interval()
            self._heartbeats[trial._trial_id] = Heartbeat(self.storage, trial._trial_id, interval)

    def _stop_heartbeat(self, trial: Any) -> None:
        beat = self._heartbeats.pop(getattr(trial, "_trial_id", None), None)
        if beat is not None:
            beat.stop()

    # --- prescreen and results ------------------------------------------------------------------

    def _prescreen(self, spec: Any) -> None:
        from torchslim.search._proxies import prescreen

        if isinstance(spec, str):
            spec = {"proxy": spec}
        if not isinstance(spec, Mapping) or "proxy" not in spec:
            raise ConfigError(
                f"bad prescreen {spec!r}: give a proxy name or {{'proxy': NAME, 'n': N, 'keep': K}}"
            )
        if self.study.get_trials(deepcopy=False):
            _logger.info("the study already has trials: prescreening skipped")
            return
        spec = dict(spec)
        spec.setdefault("seed", self.seed)
        prescreen(self.space, study=self.study, **spec)

    def _record(self, frozen: Any) -> TrialRecord:
        config = frozen.user_attrs.get("config")
        if config is None:
            try:
                config = self.space.config_from_params(frozen.params)
            except Exception:  # a trial added by hand with other params
                config = dict(frozen.params)
        metrics = frozen.user_attrs.get("metrics") or {
            m: v for (m, _), v in zip(self.objectives, frozen.values or (), strict=False)
        }
        return TrialRecord(
            number=frozen.number,
            config=config,
            metrics=dict(metrics),
            params=dict(frozen.params),
            feasible=all(c <= 0.0 for c in frozen.constraints.values()),
        )

    def pareto(self) -> list[TrialRecord]:
        """The feasible non-dominated completed trials so far (one objective: the best)."""
        return self.result().pareto

    def result(self, budget: int | None = None) -> SearchResult:
        """The completed trials and the feasible Pareto front, as records."""
        import optuna

        state = optuna.trial.TrialState
        done = self.study.get_trials(deepcopy=False, states=(state.COMPLETE,))
        records = [self._record(t) for t in done]
        if len(self.objectives) > 1:
            best = self.study.best_trials
        else:
            try:
                best = [self.study.best_trial]
            except ValueError:  # nothing completed, or nothing feasible
                best = []
        numbers = {t.number for t in best}
        metric, direction = self.objectives[0]
        pareto = sorted(
            (r for r in records if r.number in numbers and r.feasible),
            key=lambda r: (r.metrics[metric] * (-1 if direction == "maximize" else 1), r.number),
        )
        return SearchResult(
            study=self.study,
            objectives=self.objectives,
            constraints=self.constraints,
            trials=records,
            pareto=pareto,
            budget=budget,
        )


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON data; objects JSON cannot hold become ``"<TypeName>"``."""
    return json.loads(json.dumps(value, default=lambda o: f"<{type(o).__qualname__}>"))


# --- the one-call API and configs ----------------------------------------------------------------


def search(
    space: str | SearchSpace,
    evaluator: str | Evaluator,
    *,
    objectives: str | Sequence[Any],
    budget: int,
    storage: Any = None,
    study_name: str | None = None,
    sampler: Any = "auto",
    sampler_options: Mapping[str, Any] | None = None,
    constraints: Mapping[str, Any] | None = None,
    workers: int = 1,
    seed: int | None = None,
    run_dir: str | Path | None = None,
    prescreen: Any = None,
    progress: bool = True,
    space_options: Mapping[str, Any] | None = None,
    evaluator_options: Mapping[str, Any] | None = None,
    heartbeat_interval: int = 10,
    grace_period: int | None = None,
) -> SearchResult:
    """Search ``space`` with ``evaluator`` until the study holds ``budget`` completed trials.

    ``ts.search(...)`` is this function. With ``run_dir`` the study lives in
    ``run_dir/study.db`` (unless ``storage`` says otherwise), rerunning resumes it, and the
    Pareto front and all trials are written there (JSON, CSV, PNG). See :class:`Search` for
    the arguments; ``workers=N`` runs N processes on this machine.

    Returns:
        A :class:`SearchResult`: ``.study``, ``.pareto``, ``.trials``, ``.best(metric)``.
    """
    runner = Search(
        space,
        evaluator,
        objectives=objectives,
        constraints=constraints,
        storage=storage,
        study_name=study_name,
        sampler=sampler,
        sampler_options=sampler_options,
        seed=seed,
        run_dir=run_dir,
        space_options=space_options,
        evaluator_options=evaluator_options,
        budget=budget,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
    )
    result = runner.run(budget, workers=workers, progress=progress, prescreen=prescreen)
    if run_dir is not None:
        result.write(run_dir)
    return result


def run_config(
    config: SearchConfig,
    *,
    run_dir: str | Path | None = None,
    progress: bool = True,
    quiet: bool = False,
) -> SearchResult:
    """Run a :class:`SearchConfig` (what ``torchslim search CONFIG.yaml`` does).

    With ``run_dir``, the effective config is written there as ``config.yaml`` next to the
    study and the results. ``quiet`` lowers Optuna's own logging to warnings.
    """
    if quiet:
        require("optuna", "ts.search").logging.set_verbosity(logging.WARNING)
    if run_dir is not None:
        from torchslim.search._report import atomic_write

        Path(run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(Path(run_dir) / "config.yaml", config.to_yaml())
    return search(
        config.space,
        config.evaluator,
        objectives=config.objectives,
        budget=config.budget,
        storage=config.storage,
        study_name=config.study_name,
        sampler=config.sampler,
        sampler_options=config.sampler_options,
        constraints=config.constraints,
        workers=config.workers,
        seed=config.seed,
        run_dir=run_dir,
        prescreen=config.prescreen,
        progress=progress,
        space_options=config.space_options,
        evaluator_options=config.evaluator_options,
        heartbeat_interval=config.heartbeat_interval,
        grace_period=config.grace_period,
    )
