"""The worker loop: run trials until the study holds the target number of finished trials.

Any number of worker processes may share one study: running trials send heartbeats, a dead or
stopped worker's trial is failed and retried with the same parameters, a trial another worker
failed as stale is dropped here, and SIGTERM/SIGINT stop cleanly. No torch here: the scale-out
benchmark runs dozens of light simulated workers through this loop.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from hpo.experimental import experimental
from hpo.resilient import MAX_BACKOFF, recovered_within
from hpo.storage import DEFAULT_RETRIES, GRACE_INTERVALS

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TrialCallback = Callable[[optuna.Study, FrozenTrial], None]
_log = logging.getLogger(__name__)
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # stored with each trial: which worker ran it
PAUSE_ENV = "HPO_PAUSE_BEFORE_TELL"


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_until(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    target: int,
    callbacks: list[TrialCallback] | None = None,
    retries: int = DEFAULT_RETRIES,
) -> None:
    """Run trials until the study holds `target` finished (complete + pruned) trials.

    The count is the study's, not this process's: re-running continues a study, and
    workers sharing it stop together (each may finish the one trial it has in hand).
    SIGTERM or SIGINT fails the trial in hand, queues its retry and raises Interrupted.
    Ask and tell rather than study.optimize: each trial's result is told exactly once, also
    when the store went away meanwhile (hpo.resilient waits for it), and a loop of our own
    knows which trial is in hand at every step.
    """
    guard = _SignalGuard()
    with guard.installed(), _optimize_loop(study):
        while not guard.stopping and not study._stop_flag and finished_trials(study) < target:
            _fail_stale_trials(study)
            trial = study.ask()
            frozen = _run_trial(study, trial, objective, guard, retries)
            for callback in callbacks or []:
                callback(study, frozen)
    if guard.signum is not None:
        raise Interrupted(guard.signum)


def _fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and queue the retries of) trials whose worker died, as study.optimize does.

    Not right after this worker saw the store come back: every heartbeat is late then, and
    the other workers' heartbeat threads need up to one interval plus a back-off to catch up.
    """
    interval = getattr(study._storage, "get_heartbeat_interval", lambda: None)()
    if interval is None or recovered_within(GRACE_INTERVALS * interval + MAX_BACKOFF):
        return
    with experimental():
        optuna.storages.fail_stale_trials(study)  # a later worker cleans up after a dead one
    _fail_unclaimed_trials(study, GRACE_INTERVALS * interval)


def _fail_unclaimed_trials(study: optuna.Study, grace: float) -> None:
    """Fail RUNNING trials that no worker claimed within `grace` seconds of asking for them.

    A worker that died or lost the store between asking for a trial and its first heartbeat
    leaves a trial with neither heartbeat nor "worker" attribute, which Optuna's stale check
    skips for ever. Nothing was sampled or trained yet, so there is nothing to retry.
    """
    cutoff = datetime.now() - timedelta(seconds=grace)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "worker" not in trial.user_attrs and trial.datetime_start is not None and trial.datetime_start < cutoff:
            try:
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # claimed or failed meanwhile


@contextmanager
def _optimize_loop(study: optuna.Study) -> Iterator[None]:
    """Tell Optuna that this is an optimisation loop, as study.optimize does.

    Samplers that run out (the grid sampler) call study.stop(), which sets the stop flag only
    inside a loop, and asking with heartbeats outside one warns. Optuna offers no public way.
    """
    study._stop_flag = False
    study._thread_local.in_optimize_loop = True
    try:
        yield
    finally:
        study._thread_local.in_optimize_loop = False


def _run_trial(
    study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], Any], guard: _SignalGuard, retries: int
) -> FrozenTrial:
    """Train one trial and tell its result once; a signal fails it and queues its retry."""
    values: Any = None
    try:
        with _heartbeat(study, trial):
            if guard.signum is not None:
                raise Interrupted(guard.signum)  # stopped between asking and training
            trial.set_user_attr("worker", WORKER)
            with guard.objective_running():
                try:
                    values, state = objective(trial), TrialState.COMPLETE
                except optuna.TrialPruned:
                    state = TrialState.PRUNED
    except Interrupted as exc:
        _tell(study, trial, None, TrialState.FAIL)
        exc.trial_number, exc.retry = trial.number, queue_retry(study, trial.number, retries)
        raise
    except optuna.exceptions.UpdateFinishedTrialError:
        state = TrialState.FAIL  # it reported after another worker had failed it: lost, see _tell
    except Exception:
        _tell(study, trial, None, TrialState.FAIL)
        raise
    _pause_before_tell(trial)
    return _tell(study, trial, values, state)


def _tell(study: optuna.Study, trial: optuna.Trial, values: Any, state: TrialState) -> FrozenTrial:
    """Tell `trial`'s result; a trial another worker already failed as stale is left as it is.

    A heartbeat can arrive late (a reader held the SQLite lock, the machine stalled) and a
    second worker then fails the trial as stale and queues its retry: this worker drops its
    result and goes on, and the retry runs instead.
    """
    frozen = study.tell(trial, None if state != TrialState.COMPLETE else values, state=state, skip_if_finished=True)
    if frozen.state != state and frozen.state == TrialState.FAIL:
        _log.warning(
            "trial %d was failed by another worker that found its heartbeat late; "
            "its result is dropped and its queued retry runs instead", trial.number,
        )
    return frozen


@contextmanager
def _heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat now and every interval until it is told."""
    storage = study._storage  # Optuna offers no public handle on a study's storage
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial._trial_id)
            except Exception:  # noqa: BLE001 - the main thread meets the same store and reports it
                return

    storage.record_heartbeat(trial._trial_id)
    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _pause_before_tell(trial: optuna.Trial) -> None:
    """Fault injection for the outage tests: HPO_PAUSE_BEFORE_TELL=S waits S seconds before telling."""
    seconds = float(os.environ.get(PAUSE_ENV, "0") or 0)
    if seconds > 0:
        print(f"pausing {seconds:g} s before telling trial #{trial.number}", file=sys.stderr, flush=True)
        time.sleep(seconds)


class Interrupted(KeyboardInterrupt):
    """A worker was told to stop (SIGTERM from `docker compose stop`, or Ctrl-C).

    A KeyboardInterrupt, so Optuna marks the trial in hand FAIL the way it does for Ctrl-C.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.trial_number: int | None = None
        self.retry: int | None = None
        self.trials: list[tuple[int, int | None]] = []  # --jobs: each worker's (trial in hand, its retry)


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """SIGTERM, like SIGINT, raises Interrupted (for work before any trial is in flight)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    with _handling_stop_signals(handler):
        yield


@contextmanager
def _handling_stop_signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """`handler` for SIGINT and SIGTERM, and a stop it raises inside a finaliser sent again.

    Python prints and drops an exception raised in a weakref callback or __del__, and a signal
    lands in one now and then (numba's type caches run such callbacks on every call): the
    stop is then raised again wherever the main thread is 10 ms later, and nothing is printed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only delivered to the main thread
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    previous_hook = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, Interrupted):
            threading.Timer(0.01, os.kill, (os.getpid(), unraisable.exc_value.signum)).start()
        else:
            previous_hook(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for s, old in previous.items():
            signal.signal(s, old)


class _SignalGuard:
    """Stop promptly without corrupting the study.

    Inside the objective a signal raises at once (the loop then fails the trial and queues its
    retry). Elsewhere (asking for or telling a trial, running callbacks) raising could leave a
    trial RUNNING with no heartbeat, so the stop waits: the loop ends after the current step,
    and a trial that was just asked for fails before it trains.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.in_objective = False

    @property
    def stopping(self) -> bool:
        return self.signum is not None

    @contextmanager
    def objective_running(self) -> Iterator[None]:
        self.in_objective = True
        try:
            yield
        finally:
            self.in_objective = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if self.in_objective:
            raise Interrupted(signum)

    def installed(self) -> AbstractContextManager[None]:
        return _handling_stop_signals(self._handle)


def fail_trials_of(study: optuna.Study, worker: str, retries: int) -> list[int]:
    """Fail the RUNNING trials of a worker known to be dead and queue their retries."""
    held = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.user_attrs.get("worker") == worker]
    for trial in held:
        try:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it was told after all
        queue_retry(study, trial.number, retries)
    return [t.number for t in held]


def queue_retry(study: optuna.Study, number: int, retries: int) -> int | None:
    """Re-queue failed trial `number` with its parameters, as Optuna does for stale trials.

    Returns the retry's trial number, or None when the trial did not fail or has used up its
    `retries`.
    """
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    if trial.state != TrialState.FAIL:
        return None
    with experimental():
        RetryHeartbeatStaleTrialCallback(max_retry=retries)(study, trial)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    queued = [t.number for t in waiting if t.system_attrs.get("retry_history", [])[-1:] == [number]]
    return queued[-1] if queued else None
