"""A study store that waits out a database outage instead of failing the worker.

Managed PostgreSQL restarts for upgrades and fails over; a worker should say so once, wait
with backoff up to --connect-timeout, say when the store is back and carry on, with the trial
in hand recorded exactly once. Every storage call of a worker (asking, reporting, telling,
heartbeats, stale-trial checks) goes through `ResilientRDBStorage`, which retries a call whose
connection was lost. SQLite has no server to come back: a failed write there (a full disk)
ends the worker with one line instead.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HpoError, first_line

T = TypeVar("T")
Notify = Callable[[str], None]
# Failures that waiting cannot mend, even on a server that comes back.
_FATAL = re.compile(
    r"authentication failed|role \".*\" does not exist|database \".*\" does not exist|no pg_hba\.conf entry"
)
# Every storage call a worker makes.
WRAPPED = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "get_best_trial",
    "record_heartbeat",
    # the private ones Optuna's _CachedStorage calls on its backend directly
    "_get_stale_trial_ids",
    "_create_new_trial",
    "_get_best_trial_id",
    "_get_trials",
    "_set_trial_param",
)


_recovered_at: float | None = None  # when this process last saw a store come back (monotonic)
MAX_BACKOFF = 5.0


def recovered_within(seconds: float) -> bool:
    """Whether a store came back less than `seconds` ago in this process.

    Every heartbeat is late after an outage, through no fault of its worker: until the other
    workers' heartbeat threads have caught up, their trials must not be failed as stale.
    """
    return _recovered_at is not None and time.monotonic() - _recovered_at < seconds


class StoreUnavailable(HpoError):
    """The store stayed away past the timeout, or a SQLite write failed: the worker must stop."""


# SQLSTATEs of a connection that went away: class 08 (connection exception) and the server's
# shutdown, crash and start-up refusals. Not a deadlock (40P01), a statement timeout (57014) or
# a full disk (53100): waiting and repeating the write would not mend those, or not safely.
_LOST_STATES = ("57P01", "57P02", "57P03")


def lost_connection(exc: BaseException) -> BaseException | None:
    """The database error behind `exc` when it means "the connection or server went away".

    A SQLite error is returned too (the file failed a write): Outage ends the worker at once.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return seen
        if isinstance(seen, sqlalchemy.exc.InterfaceError):
            return seen
        if isinstance(seen, sqlalchemy.exc.OperationalError):
            state = getattr(seen.orig, "sqlstate", None)
            # libpq reports a refused or broken connection with no SQLSTATE at all
            if state is None or state.startswith("08") or state in _LOST_STATES:
                return seen
            return None
        seen = seen.__cause__ or seen.__context__
    return None


class Outage:
    """The waiting shared by every call of one store (main thread and heartbeat thread)."""

    def __init__(self, where: str, timeout: float, sqlite: bool, notify: Notify) -> None:
        self.where, self.timeout, self.sqlite, self.notify = where, timeout, sqlite, notify
        self.lock = threading.Lock()
        self.since: float | None = None  # when the current outage began
        self.gone: StoreUnavailable | None = None  # set once the timeout passed: fail fast after

    def call(self, run: Callable[[], T], on_retry: Callable[[BaseException], T | None] | None = None) -> T:
        """`run()`, retried with backoff while the connection is lost, up to the timeout."""
        delay, retried = 0.25, False
        while True:
            if self.gone is not None:
                raise self.gone
            try:
                result = run()
            except Exception as exc:
                cause = lost_connection(exc)
                if retried and on_retry is not None and cause is None:
                    settled = on_retry(exc)
                    if settled is not None:
                        self._back()
                        return settled
                if cause is None:
                    raise
                self._lost(cause)
                time.sleep(delay)
                delay, retried = min(delay * 2, MAX_BACKOFF), True
                continue
            if retried:
                self._back()
            return result

    def _lost(self, cause: BaseException) -> None:
        reason = first_line(getattr(cause, "orig", None) or cause).split("FATAL:")[-1].strip()
        with self.lock:
            if self.sqlite:
                self.gone = StoreUnavailable(
                    f"the SQLite study store {self.where} failed a write: {reason}; finished trials are kept"
                )
                raise self.gone
            if _FATAL.search(reason):
                self.gone = StoreUnavailable(f"the database server {self.where} refused us: {reason}")
                raise self.gone
            now = time.monotonic()
            if self.since is None and self.timeout > 0:
                self.since = now
                self.notify(
                    f"lost the study store {self.where} ({reason}); waiting up to {self.timeout:g} s for it "
                    "(--connect-timeout)"
                )
            elif now - (self.since or now) >= self.timeout:
                self.gone = StoreUnavailable(
                    f"the study store {self.where} did not come back within {self.timeout:g} s "
                    f"(--connect-timeout): {reason}"
                )
                raise self.gone

    def _back(self) -> None:
        global _recovered_at
        with self.lock:
            if self.since is not None:
                _recovered_at = time.monotonic()
                self.notify(
                    f"the study store {self.where} is back after {time.monotonic() - self.since:.1f} s; carrying on"
                )
                self.since = None


def stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class ResilientRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose calls wait out a lost database connection (see Outage)."""

    outage: Outage

    def watch(self, outage: Outage) -> ResilientRDBStorage:
        self.outage = outage
        return self

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        """Telling is the one write whose retry may find its first try committed: that counts as done."""
        parent = super().set_trial_state_values

        def settled(exc: BaseException) -> bool | None:
            if isinstance(exc, UpdateFinishedTrialError) and state.is_finished():
                stored = super(ResilientRDBStorage, self).get_trial(trial_id)
                if stored.state == state and (values is None or list(stored.values or []) == list(values)):
                    return True
            return None

        return self._call(lambda: parent(trial_id, state, values), settled)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._create_new_trial(study_id, template_trial)._trial_id

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """Queuing a retry is the one insert whose repeat would do harm: a second copy of the retry.

        When the connection drops after the insert committed but before its answer came back,
        the repeat finds the retry already queued and returns it instead of queuing another.
        """
        parent = super()._create_new_trial
        history = template_trial.system_attrs.get("retry_history") if template_trial else None
        tries = 0

        def run() -> FrozenTrial:
            nonlocal tries
            tries += 1
            if history and tries > 1:
                queued = self._retry_queued(study_id, history)
                if queued is not None:
                    return queued
            return parent(study_id, template_trial)

        return self._call(run)

    def _retry_queued(self, study_id: int, history: list[int]) -> FrozenTrial | None:
        trials = super().get_all_trials(study_id, deepcopy=False)
        return next((t for t in trials if t.system_attrs.get("retry_history") == history), None)

    def retrying(self, run: Callable[[], T]) -> T:
        """`run()` (our own queries on this store's engine), waiting out an outage like Optuna's calls."""
        return self._call(run)

    def _call(self, run: Callable[[], T], on_retry: Callable[[BaseException], T | None] | None = None) -> T:
        local = _depth
        if getattr(local, "n", 0) or not hasattr(self, "outage"):
            return run()  # a nested call: the outermost one retries
        local.n = 1
        try:
            return self.outage.call(run, on_retry)
        finally:
            local.n = 0


_depth = threading.local()


def _resilient(name: str) -> Callable[..., Any]:
    parent = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(parent)
    def call(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(lambda: parent(self, *args, **kwargs))

    return call


for _name in WRAPPED:
    if _name not in ("set_trial_state_values", "create_new_trial", "_create_new_trial"):
        setattr(ResilientRDBStorage, _name, _resilient(_name))
