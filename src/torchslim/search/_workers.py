"""Worker processes on this machine sharing one study, and the search's progress bar.

``Search.run(budget, workers=N)`` starts N processes (``multiprocessing`` spawn, so nothing of
the parent's state, threads or CUDA context is forked). Each rebuilds the search from a
picklable spec, pins ``torch`` to ``cores // N`` threads and runs the same budgeted loop as a
single worker; the study in the shared storage is the only thing they share, so a worker that
crashes loses nothing the others did, and its own running trial is retried (see
:mod:`torchslim.search._storage`). The parent shows the progress of the whole study.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import time
from typing import Any

from torchslim.errors import ConfigError, TorchSlimError

__all__ = ["run_workers", "progress_bar"]

_logger = logging.getLogger(__name__)


class _Bar:
    """A tqdm bar of completed trials (or nothing when ``enabled`` is false)."""

    def __init__(self, enabled: bool, budget: int) -> None:
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=budget, desc="search", unit="trial", dynamic_ncols=True)

    def show(self, complete: int) -> None:
        if self._bar is not None and complete != self._bar.n:
            self._bar.n = min(complete, self._bar.total)
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def progress_bar(enabled: bool, budget: int) -> _Bar:
    return _Bar(enabled, budget)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _worker_main(spec: dict[str, Any], rank: int, threads: int, log_level: int) -> None:
    import torch

    from torchslim.search._engine import Search

    torch.set_num_threads(threads)
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
    )
    spec = dict(spec)
    budget = spec.pop("budget")
    runner = Search(**spec, worker_rank=rank)
    runner._spawned = True
    runner._loop(budget, progress=False)


def run_workers(search: Any, budget: int, workers: int, *, progress: bool = True) -> None:
    """Run ``workers`` processes on ``search``'s study until it holds ``budget`` trials."""
    import optuna

    if search.storage is None or isinstance(search.storage, optuna.storages.InMemoryStorage):
        raise ConfigError(
            f"workers={workers} need a storage the processes share: give run_dir=... (an "
            "SQLite file there) or storage='sqlite:///path/study.db' or 'postgresql://...'"
        )
    sampler, sampler_options = search._sampler_arg
    spec = {
        "space": search.space,
        "evaluator": search.evaluator,
        "objectives": [f"{m}:{d}" for m, d in search.objectives],
        "constraints": {m: {kind: b} for m, kind, b in search.constraints},
        "storage": getattr(search.storage, "url", search.storage),
        "study_name": search.study_name,
        "sampler": sampler,
        "sampler_options": sampler_options,
        "seed": search.seed,
        "budget": budget,
        "heartbeat_interval": search.heartbeat_interval,
        "grace_period": search.grace_period,
    }
    _merge_bounds(spec, search.constraints)
    try:
        pickle.dumps(spec)
    except Exception as exc:
        raise ConfigError(
            f"workers={workers} run in new processes, which need a picklable space, evaluator "
            f"and sampler ({type(exc).__name__}: {exc}); use module-level classes or registered "
            "names, or start `torchslim search CONFIG --storage URL` once per worker"
        ) from exc
    threads = max(1, _cores() // workers)
    level = logging.getLogger("torchslim").getEffectiveLevel()
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(
            target=_worker_main,
            args=(spec, rank, threads, level),
            name=f"torchslim-search-worker-{rank}",
        )
        for rank in range(workers)
    ]
    _logger.info("starting %d workers with %d torch thread(s) each", workers, threads)
    bar = progress_bar(progress, budget)
    try:
        for proc in procs:
            proc.start()
        while any(p.is_alive() for p in procs):
            bar.show(search._counts()[0])
            time.sleep(0.5)
        bar.show(search._counts()[0])
    except BaseException:
        _stop(procs)
        raise
    finally:
        bar.close()
    failed = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    complete = search._counts()[0]
    if failed and complete < budget:
        raise TorchSlimError(
            f"worker(s) {', '.join(f'{n} (exit code {c})' for n, c in failed)} stopped; "
            f"{complete} of {budget} trials are complete and kept in the study; rerun the "
            "same search to resume"
        )
    for name, code in failed:
        _logger.warning("%s exited with code %s; the others reached the budget", name, code)


def _merge_bounds(spec: dict[str, Any], constraints: Any) -> None:
    """``{"acc": {"min": 1}}`` and ``{"acc": {"max": 2}}`` become one entry with both bounds."""
    merged: dict[str, dict[str, float]] = {}
    for metric, kind, bound in constraints:
        merged.setdefault(metric, {})[kind] = bound
    spec["constraints"] = merged


def _stop(procs: list[Any]) -> None:
    """Interrupt the workers (each fails its running trial), then kill what is left."""
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 10
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
