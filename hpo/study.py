"""Storage, sampler and pruner; run a study until it holds the target number of finished trials.

Any number of worker processes may share one study: opening the store waits for its server
and survives simultaneous schema creation, running trials send heartbeats, a dead or stopped
worker's trial is failed and retried with the same parameters, and SIGTERM/SIGINT stop cleanly.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import socket
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from types import FrameType
from typing import TypeVar

import optuna
import sqlalchemy
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HpoError, first_line
from hpo.spec import StudySpec

DEFAULT_STORAGE = "sqlite:///storage/hpo.db"
STORAGE_ENV = "HPO_STORAGE"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

TrialCallback = Callable[[optuna.Study, FrozenTrial], None]
T = TypeVar("T")
_log = logging.getLogger(__name__)
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # stored with each trial: which worker ran it

DEFAULT_RETRIES = 2
TPE_STARTUP_TRIALS = 20
SQLITE_BUSY_TIMEOUT = 60.0
# Refusals that waiting will not mend. libpq reports connection-time errors as text only
# (psycopg gives no SQLSTATE for them), so they are recognised by the server's message.
_AUTH_FAILED = re.compile(r"authentication failed|role \".*\" does not exist|no password supplied|no pg_hba\.conf entry")
_UNKNOWN_DATABASE = re.compile(r"database \".*\" does not exist")


def check_storage_url(url: str) -> sqlalchemy.URL:
    """Parse a SQLAlchemy URL without connecting, so bad URLs fail before anything is written."""
    try:
        parsed = sqlalchemy.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise HpoError(
            f"cannot parse storage URL '{url}'; use a SQLAlchemy URL such as "
            f"{DEFAULT_STORAGE} or postgresql+psycopg://user:pass@host/db"
        ) from None
    try:
        parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise HpoError(f"unknown database driver '{parsed.drivername}' in storage URL '{url}'") from None
    return parsed


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    retries: int = DEFAULT_RETRIES,
    connect_timeout: float = 0.0,
) -> optuna.storages.RDBStorage:
    """An RDB storage for `url`; a SQLite file's folder is created when missing.

    With `heartbeat_interval`, running trials send heartbeats; a trial silent for three
    intervals (its worker died) is failed by the next worker that starts a trial, and re-queued
    with the same parameters up to `retries` times. A server that is not up yet is retried for
    `connect_timeout` seconds (containers start in any order); refused credentials and unknown
    databases fail at once.
    """
    parsed = check_storage_url(url)
    shown = parsed.render_as_string(hide_password=True)
    engine_kwargs: dict = {}
    try:
        if parsed.get_backend_name() == "sqlite":
            engine_kwargs = _prepare_sqlite(parsed)
        else:
            _wait_for_server(parsed, connect_timeout)
            engine_kwargs = {"pool_pre_ping": True}  # survive a database restart between trials
        with warnings.catch_warnings():  # heartbeats and their retry callback are "experimental" since 2.8
            warnings.simplefilter("ignore", ExperimentalWarning)
            heartbeat: dict = {}
            if heartbeat_interval is not None:
                heartbeat = {
                    "heartbeat_interval": heartbeat_interval,
                    "grace_period": 3 * heartbeat_interval,
                    "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=retries),
                }
            return _retry_init_race(lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat))
    except OSError as exc:
        raise HpoError(f"cannot open storage '{shown}': {exc.strerror or exc}") from None
    except sqlalchemy.exc.OperationalError as exc:
        raise HpoError(f"cannot open storage '{shown}': {first_line(exc.orig)}") from None
    except sqlite3.Error as exc:
        raise HpoError(f"cannot open storage '{shown}': {first_line(exc)}") from None


def _prepare_sqlite(parsed: sqlalchemy.URL) -> dict:
    """Let several local processes share one SQLite file.

    The file is switched to WAL mode (a property of the file, kept from then on), so readers
    such as the dashboard or a report never block the workers' writes or their heartbeats; a
    writer behind another process's write waits up to a minute instead of sqlite3's 5 s before
    "database is locked". SQLite folds the side file back into the .db when the last process
    closes it. (SQLite on a network file system remains unsafe; use PostgreSQL for several
    machines.)
    """
    if parsed.database in (None, "", ":memory:"):
        return {}
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(parsed.database, timeout=SQLITE_BUSY_TIMEOUT)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
    return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}


def _wait_for_server(parsed: sqlalchemy.URL, timeout: float) -> None:
    """Connect once, retrying with backoff while the server is unreachable or starting up."""
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    connect_args = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args = {"connect_timeout": 10}
    engine = sqlalchemy.create_engine(parsed, connect_args=connect_args, poolclass=sqlalchemy.NullPool)
    deadline = time.monotonic() + timeout
    delay = 0.25
    try:
        while True:
            try:
                with engine.connect():
                    return
            except sqlalchemy.exc.OperationalError as exc:
                reason = first_line(exc.orig).split("FATAL:")[-1].strip()
                if _AUTH_FAILED.search(reason):
                    raise HpoError(f"database server {where} refused user '{parsed.username}': {reason}; check the user and password in the storage URL") from None
                if _UNKNOWN_DATABASE.search(reason):
                    raise HpoError(f"database '{parsed.database}' does not exist on {where}; create it (createdb {parsed.database}) or fix the storage URL") from None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HpoError(f"cannot reach database server {where} (gave up after {timeout:g} s, see --connect-timeout): {reason}") from None
                time.sleep(min(delay, left))
                delay = min(delay * 2, 5.0)
    finally:
        engine.dispose()


def _retry_init_race(create: Callable[[], T], attempts: int = 8) -> T:
    """Run `create` again when another worker created the same tables or study at the same instant.

    Optuna creates its schema with CREATE TABLE after a check, so two processes starting
    together on an empty database collide (duplicate type/table/key); the loser finds the
    winner's schema on the next attempt.
    """
    for attempt in range(attempts):
        try:
            return create()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as exc:
            collided = isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in str(exc.orig)
            if not collided or attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))
    raise AssertionError("unreachable")


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    if spec.sampler == "tpe":
        # Optuna's 10 random start-up trials are few for a dozen parameters, several of them
        # choices: in a 125-trial default study here TPE sampled batch norm in 5 trials and
        # the cosine schedule (then searched) in 5, and exploited one corner from trial 20 on.
        return optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=TPE_STARTUP_TRIALS)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    return optuna.samplers.GridSampler(spec.grid(), seed=spec.seed)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """Pruners read the mean CV accuracy reported after each epoch (steps 1..epochs)."""
    epochs = spec.train.epochs
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=min(3, epochs - 1))
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if spec.pruner == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def load_or_create(spec: StudySpec, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """The named study, created on first use; later workers load the same one.

    Study names are unique in the store, so of several workers starting at the same instant
    exactly one creates the study, and only that one queues the published configurations.
    """

    def create() -> tuple[optuna.Study, bool]:
        sampler, pruner = make_sampler(spec), make_pruner(spec)
        try:
            study = optuna.create_study(
                storage=storage, study_name=spec.name, directions=list(spec.directions), sampler=sampler, pruner=pruner
            )
            return study, True
        except optuna.exceptions.DuplicatedStudyError:
            return optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner), False

    study, created = _retry_init_race(create)
    if study.metric_names != list(spec.objectives):
        with warnings.catch_warnings():  # experimental since Optuna 3.2, still the way to name values
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            _retry_init_race(lambda: study.set_metric_names(list(spec.objectives)))
    if created and spec.enqueue_published:
        enqueue_published(study, spec)
    return study


def enqueue_published(study: optuna.Study, spec: StudySpec) -> int:
    """Queue the published configurations as the first trials of a new study; returns how many."""
    from hpo.published import published_trials

    if study.get_trials(deepcopy=False):
        return 0
    queued = published_trials(spec)
    for published, params in queued:
        study.enqueue_trial(params, user_attrs={"published": published.source}, skip_if_exists=True)
    return len(queued)


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_until(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    target: int,
    callbacks: list[TrialCallback] | None = None,
    retries: int = DEFAULT_RETRIES,
) -> None:
    """Run trials until the study holds `target` finished (complete + pruned) trials.

    The count is the study's, not this process's: re-running continues a study, and
    workers sharing it stop together (each may finish the one trial it has in hand).
    SIGTERM or SIGINT fails the trial in hand, queues its retry and raises Interrupted.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a later worker cleans up after a dead one
    if finished_trials(study) >= target:
        return
    stop = optuna.study.MaxTrialsCallback(target, states=FINISHED)
    guard = _SignalGuard(study)
    with guard.installed():
        while finished_trials(study) < target:
            try:
                study.optimize(guard.wrap(objective), callbacks=[*(callbacks or []), stop], gc_after_trial=False)
                break
            except Interrupted as exc:
                if guard.trial_number is not None:
                    exc.retry = queue_retry(study, guard.trial_number, retries)
                    exc.trial_number = guard.trial_number
                raise
            except (AssertionError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
                if not guard.lost_trial():
                    raise
                _log.warning(
                    "trial %d was failed by another worker that found its heartbeat late; "
                    "its result is dropped and its queued retry runs instead",
                    guard.trial_number,
                )
    if guard.signum is not None:
        raise Interrupted(guard.signum)


class Interrupted(KeyboardInterrupt):
    """A worker was told to stop (SIGTERM from `docker compose stop`, or Ctrl-C).

    A KeyboardInterrupt, so Optuna marks the trial in hand FAIL the way it does for Ctrl-C.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.trial_number: int | None = None
        self.retry: int | None = None


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """SIGTERM, like SIGINT, raises Interrupted (for work before any trial is in flight)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    with _handling_stop_signals(handler):
        yield


@contextmanager
def _handling_stop_signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only delivered to the main thread
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


class _SignalGuard:
    """Stop promptly without corrupting the study.

    Inside the objective a signal raises at once (Optuna then marks the trial FAIL). Elsewhere
    (Optuna asking for or telling a trial, or running callbacks) raising could leave a trial
    RUNNING with no heartbeat, so the stop waits: the loop ends after the current step, and a
    trial that was just asked for fails before it trains.
    """

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.signum: int | None = None
        self.trial_number: int | None = None
        self.in_objective = False
        self.objective_ended_normally = False

    def wrap(self, objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
        def guarded(trial: optuna.Trial) -> float:
            self.trial_number = trial.number
            if self.signum is not None:
                raise Interrupted(self.signum)
            self.objective_ended_normally = False
            trial.set_user_attr("worker", WORKER)
            self.in_objective = True
            try:
                value = objective(trial)
            except (optuna.TrialPruned, optuna.exceptions.UpdateFinishedTrialError):
                self.objective_ended_normally = True
                raise
            finally:
                self.in_objective = False
            self.objective_ended_normally = True
            return value

        return guarded

    def lost_trial(self) -> bool:
        """Whether the trial in hand ended normally here but another worker had already failed it.

        A heartbeat can arrive late (a reader held the SQLite lock, the machine stalled) and a
        second worker then fails the trial as stale and queues its retry. Optuna cannot tell a
        FAIL trial and raises; this worker should drop its result and go on, not crash.
        """
        if self.trial_number is None or not self.objective_ended_normally or self.signum is not None:
            return False
        trials = self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        return any(t.number == self.trial_number for t in trials)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.in_objective:
            raise Interrupted(signum)
        self.signum = signum
        try:
            self.study.stop()
        except RuntimeError:  # not inside study.optimize: nothing is in flight
            raise Interrupted(signum) from None

    def installed(self):  # type: ignore[no-untyped-def]
        return _handling_stop_signals(self._handle)


def queue_retry(study: optuna.Study, number: int, retries: int) -> int | None:
    """Re-queue failed trial `number` with its parameters, as Optuna does for stale trials.

    Returns the retry's trial number, or None when the trial did not fail or has used up its
    `retries`.
    """
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    if trial.state != TrialState.FAIL:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=retries)(study, trial)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    queued = [t.number for t in waiting if t.system_attrs.get("retry_history", [])[-1:] == [number]]
    return queued[-1] if queued else None
