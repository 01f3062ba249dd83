"""Where a study lives: storage URLs resolved to Optuna storages, and trial heartbeats.

``resolve_storage(None, None)`` keeps the study in memory; with a run directory it is the
SQLite file ``run_dir/study.db``; any Optuna RDB URL (``sqlite:///``, ``postgresql://``) works.
Every RDB storage gets Optuna's heartbeat (``heartbeat_interval``, ``grace_period``) and
:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`, so the trial of a worker that died
becomes FAILED and its parameters are queued again. Why SQLite and not a JournalStorage file,
and why ``BEGIN IMMEDIATE``: see :mod:`torchslim.search._engine`.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from torchslim._extras import require
from torchslim.errors import ConfigError, TorchSlimError

__all__ = ["resolve_storage", "heartbeat_enabled", "Heartbeat", "safe_url"]

_logger = logging.getLogger(__name__)


def heartbeat_enabled(storage: Any) -> bool:
    """The storage records heartbeats (an RDB storage with ``heartbeat_interval``)."""
    return (
        storage is not None
        and hasattr(storage, "record_heartbeat")
        and storage.get_heartbeat_interval() is not None
    )


class Heartbeat:
    """Records a trial's heartbeat now and every ``interval`` seconds until stopped."""

    def __init__(self, storage: Any, trial_id: int, interval: int) -> None:
        self._storage, self._trial_id, self._interval = storage, trial_id, interval
        self._stop = threading.Event()
        storage.record_heartbeat(trial_id)
        self._thread = threading.Thread(
            target=self._beat, name=f"torchslim-heartbeat-{trial_id}", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as exc:  # the next beat may get through
                _logger.debug("heartbeat of trial id %d failed: %s", self._trial_id, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# --- storage -------------------------------------------------------------------------------------


def resolve_storage(
    storage: Any,
    run_dir: str | Path | None,
    *,
    heartbeat_interval: int = 10,
    grace_period: int | None = None,
) -> Any:
    """``None`` (in memory), ``run_dir/study.db``, a URL or ``.db`` path, or a storage object.

    URLs become an ``optuna.storages.RDBStorage`` with heartbeats and retries of trials whose
    worker died (see the module docstring).
    """
    if storage is None:
        if run_dir is None:
            return None
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        storage = Path(run_dir) / "study.db"
    if isinstance(storage, os.PathLike) or (isinstance(storage, str) and "://" not in storage):
        path = Path(storage)
        if path.suffix not in (".db", ".sqlite", ".sqlite3"):
            raise ConfigError(
                f"bad storage {str(storage)!r}: give an Optuna storage URL "
                "(sqlite:///path/study.db, postgresql://user@host/db) or a .db file path"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{path.resolve()}"
    if isinstance(storage, str):
        storage = _postgres_driver(storage)
        return _rdb_storage(storage, heartbeat_interval, grace_period or 3 * heartbeat_interval)
    import optuna

    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    raise ConfigError(
        f"bad storage {storage!r}: give None, an Optuna storage URL or an optuna storage object"
    )


def _postgres_driver(url: str) -> str:
    """``postgres://`` and ``postgresql://`` with the driver that is installed.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3; the ``search`` extra installs
    psycopg2, so without psycopg 3 the URL names ``postgresql+psycopg2`` explicitly.
    """
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgres", "postgresql"):
        return url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return f"postgresql+psycopg2://{rest}"
    return f"postgresql://{rest}"


def _rdb_storage(url: str, heartbeat_interval: int, grace_period: int) -> Any:
    optuna = require("optuna", "ts.search storages")
    sqlite = url.startswith("sqlite")
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    )
    try:
        storage = _create_rdb(optuna, url, engine_kwargs, heartbeat_interval, grace_period)
    except ImportError as exc:
        raise ConfigError(
            f"storage {safe_url(url)} needs a database driver that is not installed ({exc}); "
            "for PostgreSQL: pip install 'torchslim[search]' (psycopg2-binary)"
        ) from exc
    except Exception as exc:
        if isinstance(exc, TorchSlimError):
            raise
        raise ConfigError(f"cannot open the storage {safe_url(url)}: {exc}") from exc
    if sqlite:
        _serialize_sqlite(storage.engine)
    return storage


def _create_rdb(
    optuna: Any, url: str, engine_kwargs: dict, heartbeat_interval: int, grace_period: int
) -> Any:
    """An RDBStorage; retried when workers starting together race to create its tables."""
    from sqlalchemy import exc as sql_errors

    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=(
                        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
                    ),
                )
        except (sql_errors.IntegrityError, sql_errors.ProgrammingError) as exc:
            error: Exception = exc  # a row or table another process created meanwhile
        except sql_errors.OperationalError as exc:
            if "already exists" not in str(exc) and "locked" not in str(exc):
                raise
            error = exc
        _logger.debug("creating the storage's tables raced with another process: %s", error)
        time.sleep(0.1 * (attempt + 1) + random.random() * 0.2)
    raise error


def _serialize_sqlite(engine: Any) -> None:
    """Every transaction takes SQLite's write lock at BEGIN (SQLAlchemy's documented recipe).

    Also write-ahead logging with ``synchronous=NORMAL``: a commit no longer waits for the disk
    (a search commits a dozen times per trial), and a committed trial still survives any crash
    of the process, SIGKILL included; only a power cut may lose the last commits. WAL needs a
    local file system: for studies shared over a network, use PostgreSQL.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners existed


def safe_url(storage: Any) -> str:
    url = getattr(storage, "url", storage)
    if storage is None:
        return "memory"
    text = str(url)
    head, sep, tail = text.partition("://")
    if sep and "@" in tail:
        creds, _, host = tail.rpartition("@")
        text = f"{head}://{creds.split(':')[0]}:***@{host}" if ":" in creds else text
    return text
