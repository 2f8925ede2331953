"""Trials of dead or stopped workers: failed, and retried with the same parameters."""

from __future__ import annotations

import time

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from hpo.store.connect import GRACE_INTERVALS
from hpo.store.experimental_api import experimental
from hpo.store.outages import MAX_BACKOFF, recovered_within


def fail_stale_trials(study: optuna.Study) -> None:
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
    skips for ever. Nothing was sampled or trained yet, so there is nothing to retry; the trial
    is marked "unclaimed". How long it has been unclaimed is measured by this host's monotonic
    clock from when this worker first saw it so, never by comparing this host's clock with the
    start time another host wrote: clocks of different machines disagree.
    """
    now = time.monotonic()
    unclaimed = {
        t._trial_id: t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if "worker" not in t.user_attrs
    }
    seen = _unclaimed_since.setdefault(study._study_id, {})
    for trial_id in list(seen):
        if trial_id not in unclaimed:
            del seen[trial_id]
    for trial_id in unclaimed:
        if now - seen.setdefault(trial_id, now) < grace:
            continue
        try:
            study._storage.set_trial_system_attr(trial_id, "unclaimed", True)
            study._storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # claimed or failed meanwhile


_unclaimed_since: dict[int, dict[int, float]] = {}  # study id -> trial id -> first seen unclaimed (monotonic)


def fail_trials_of(study: optuna.Study, worker: str, retries: int) -> list[int]:
    """Fail the RUNNING trials of a worker known to be dead and queue their retries."""
    held = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get("worker") == worker
    ]
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
    return retry_of(study, number)


def retry_of(study: optuna.Study, number: int) -> int | None:
    """The retry queued for trial `number` (by this worker or another), if any, in any state."""
    retries = [
        t.number for t in study.get_trials(deepcopy=False) if t.system_attrs.get("retry_history", [])[-1:] == [number]
    ]
    return retries[-1] if retries else None
