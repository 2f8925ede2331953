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
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import FrameType

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from hpo.experimental import experimental
from hpo.storage import DEFAULT_RETRIES

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TrialCallback = Callable[[optuna.Study, FrozenTrial], None]
_log = logging.getLogger(__name__)
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # stored with each trial: which worker ran it


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
    with experimental():
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

    def installed(self) -> AbstractContextManager[None]:
        return _handling_stop_signals(self._handle)


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
