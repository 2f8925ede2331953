"""The worker loop: run trials until the study holds the target number of finished trials.

Any number of worker processes may share one study: running trials send heartbeats, a dead or
stopped worker's trial is failed and retried with the same parameters, a trial another worker
failed as stale is dropped here, and SIGTERM/SIGINT stop cleanly. No torch here: the scale-out
benchmark runs dozens of light simulated workers through this loop.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.search.heartbeat import heartbeat
from hpo.search.retries import fail_stale_trials, queue_retry, retry_of
from hpo.search.signals import Interrupted, SignalGuard, interrupted_in
from hpo.store.budget import ask_within
from hpo.store.clock import apply_test_skew
from hpo.store.connect import DEFAULT_RETRIES

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TrialCallback = Callable[[optuna.Study, FrozenTrial], None]
_log = logging.getLogger(__name__)
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # stored with each trial: which worker ran it
PAUSE_ENV = "HPO_PAUSE_BEFORE_TELL"
WAIT_SECONDS = 1.0  # between looks at a study whose remaining trials all run elsewhere


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_until(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    target: int,
    callbacks: list[TrialCallback] | None = None,
    retries: int = DEFAULT_RETRIES,
    until: Callable[[optuna.Study], bool] | None = None,
) -> None:
    """Run trials until the study holds `target` finished (complete + pruned) trials, or `until` says stop.

    The count is the study's, not this process's: re-running continues a study, and
    workers sharing it share one budget (hpo.store.budget): a trial is asked for only while
    finished plus running trials fall short of the target, and a worker whose every remaining
    slot is in other workers' hands waits for them to finish (or to fail, and be retried).
    SIGTERM or SIGINT fails the trial in hand, queues its retry and raises Interrupted.
    Ask and tell rather than study.optimize: each trial's result is told exactly once, also
    when the store went away meanwhile (hpo.store.outages waits for it), and a loop of our own
    knows which trial is in hand at every step.
    """
    apply_test_skew()
    guard = SignalGuard()
    with guard.installed(), _optimize_loop(study):
        while not guard.stopping and not study._stop_flag:
            fail_stale_trials(study)
            if finished_trials(study) >= target or (until is not None and until(study)):
                break
            trial = ask_within(study, target)
            if trial is None:
                _wait(guard)
                continue
            frozen = _run_trial(study, trial, objective, guard, retries)
            for callback in callbacks or []:
                callback(study, frozen)
    if guard.signum is not None:
        raise Interrupted(guard.signum)


def _wait(guard: SignalGuard) -> None:
    """Wait a moment for the trials in other workers' hands; a stop signal ends the wait."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not guard.stopping and time.monotonic() < deadline:
        time.sleep(0.1)


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
    study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], Any], guard: SignalGuard, retries: int
) -> FrozenTrial:
    """Train one trial and tell its result once; a signal fails it and queues its retry."""
    values: Any = None
    try:
        with heartbeat(study, trial):
            if guard.signum is not None:
                raise Interrupted(guard.signum)  # stopped between asking and training
            trial.set_user_attr("worker", WORKER)
            with guard.objective_running():
                try:
                    values, state = objective(trial), TrialState.COMPLETE
                except optuna.TrialPruned:
                    state = TrialState.PRUNED
    except Interrupted as exc:
        _fail_for_retry(study, trial, retries, exc)
        raise
    except optuna.exceptions.UpdateFinishedTrialError:
        state = TrialState.FAIL  # it reported after another worker had failed it: lost, see _tell
    except Exception as exc:
        stop = interrupted_in(exc)
        if stop is None:
            _fail(study, trial)
            raise
        # A stop that a library's error wrapped: still a stop, so the trial gets its retry.
        fresh = Interrupted(stop.signum)
        _fail_for_retry(study, trial, retries, fresh)
        raise fresh from exc
    _pause_before_tell(trial)
    return _tell(study, trial, values, state)


def _fail_for_retry(study: optuna.Study, trial: optuna.Trial, retries: int, stop: Interrupted) -> None:
    """Fail the trial a stop cut short and queue its retry, noting both on `stop`.

    Only the worker whose write failed the trial queues its retry: another worker that failed
    it as stale first has queued one already.
    """
    retry = queue_retry(study, trial.number, retries) if _fail(study, trial) else retry_of(study, trial.number)
    stop.trial_number, stop.retry = trial.number, retry


def _fail(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Fail `trial`; False when it was finished already (another worker failed it as stale)."""
    try:
        return study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def _tell(study: optuna.Study, trial: optuna.Trial, values: Any, state: TrialState) -> FrozenTrial:
    """Tell `trial`'s result; a trial another worker already failed as stale is left as it is.

    A heartbeat can arrive late (a reader held the SQLite lock, the machine stalled) and a
    second worker then fails the trial as stale and queues its retry: this worker drops its
    result and goes on, and the retry runs instead. `skip_if_finished` covers a trial failed
    before `tell` reads it; the error covers one failed between that read and the write (seen
    under chaos.py: a worker resumed from SIGSTOP while another failed its trial).
    """
    try:
        frozen = study.tell(trial, None if state != TrialState.COMPLETE else values, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        frozen = study._storage.get_trial(trial._trial_id)
    if frozen.state != state and frozen.state == TrialState.FAIL:
        _log.warning(
            "trial %d was failed by another worker that found its heartbeat late; "
            "its result is dropped and its queued retry runs instead",
            trial.number,
        )
    return frozen


def _pause_before_tell(trial: optuna.Trial) -> None:
    """Fault injection for the outage tests: HPO_PAUSE_BEFORE_TELL=S waits S seconds before telling."""
    seconds = float(os.environ.get(PAUSE_ENV, "0") or 0)
    if seconds > 0:
        print(f"pausing {seconds:g} s before telling trial #{trial.number}", file=sys.stderr, flush=True)
        time.sleep(seconds)
