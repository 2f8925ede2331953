"""One budget of trials shared by every worker of a study: a trial is asked for only while the
study's finished plus running trials fall short of the target.

Counting and asking happen under one lock the database (or, for a SQLite file, the file system
of its one machine) arbitrates, so two workers never take the last slot both: a command's
`--trials N` ends with exactly N finished trials, and so do independent commands with one
target. A lock holder that is stopped (SIGSTOP, a stalled machine) is waited for up to
LOCK_WAIT seconds; after that a worker asks without the lock, and the study may overshoot by
at most the number of workers minus one. A killed holder's lock goes with its connection (or
its file descriptor). No torch here.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

LOCK_WAIT = 30.0  # seconds a worker waits for another's ask before asking anyway
_LOCK_CLASS = 0x6870  # "hp": the first key of PostgreSQL's two-key advisory locks
_local_lock = threading.Lock()  # in-memory stores live in one process
_COUNTED = ("COMPLETE", "PRUNED", "RUNNING")


def ask_within(study: optuna.Study, target: int) -> optuna.Trial | None:
    """A new trial of `study`, or None when finished + running trials already reach `target`."""
    storage = study._storage  # Optuna offers no public handle on a study's storage
    storage = getattr(storage, "_backend", storage)  # under Optuna's cache, the RDB storage itself
    engine: sqlalchemy.Engine | None = getattr(storage, "engine", None)
    if engine is None:
        with _local_lock:
            return _ask_if_short(study, target, lambda: _count_in_memory(study))
    study_id = study._study_id
    count = _counter(storage, engine, study_id)
    with _locked(storage, engine, study_id):
        return _ask_if_short(study, target, count)


def _ask_if_short(study: optuna.Study, target: int, count: Callable[[], int]) -> optuna.Trial | None:
    if count() >= target:
        return None
    return study.ask()


def _count_in_memory(study: optuna.Study) -> int:
    states = tuple(TrialState[name] for name in _COUNTED)
    return len(study.get_trials(deepcopy=False, states=states))


def _counter(storage: Any, engine: sqlalchemy.Engine, study_id: int) -> Callable[[], int]:
    query = sqlalchemy.text(
        "SELECT count(*) FROM trials WHERE study_id = :study AND state IN ('COMPLETE', 'PRUNED', 'RUNNING')"
    )

    def count() -> int:
        def read() -> int:
            with engine.connect() as conn:
                return int(conn.execute(query, {"study": study_id}).scalar_one())

        return storage.retrying(read) if hasattr(storage, "retrying") else read()

    return count


@contextmanager
def _locked(storage: Any, engine: sqlalchemy.Engine, study_id: int) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with _advisory_lock(storage, engine, study_id):
            yield
    elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with _file_lock(Path(f"{engine.url.database}-ask.lock")):
            yield
    else:
        with _local_lock:
            yield


@contextmanager
def _advisory_lock(storage: Any, engine: sqlalchemy.Engine, study_id: int) -> Iterator[None]:
    """PostgreSQL's session advisory lock on a connection of its own, released when it closes."""
    lock_engine = sqlalchemy.create_engine(engine.url, poolclass=sqlalchemy.NullPool)
    key = {"a": _LOCK_CLASS, "b": study_id}

    def take() -> sqlalchemy.Connection | None:
        conn = lock_engine.connect()
        deadline = time.monotonic() + LOCK_WAIT
        try:
            while time.monotonic() < deadline:
                if conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:a, :b)"), key).scalar_one():
                    return conn
                time.sleep(0.05)
        except BaseException:
            conn.close()
            raise
        conn.close()
        return None  # a stopped holder: ask without the lock

    retrying = getattr(storage, "retrying", lambda run: run())
    conn = retrying(take)
    try:
        yield
    finally:
        if conn is not None:
            # A session lock ends with its session; a server that went away took the lock with it.
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                conn.close()
        lock_engine.dispose()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on a file beside the SQLite database (one machine shares a SQLite file)."""
    with open(path, "a") as handle:
        deadline = time.monotonic() + LOCK_WAIT
        locked = False
        while not locked and time.monotonic() < deadline:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                time.sleep(0.02)
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle, fcntl.LOCK_UN)
