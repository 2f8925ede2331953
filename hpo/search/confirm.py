"""Re-score a study's leading trials on a second draw of training pairs before naming the best.

The highest of many CV scores measured on one draw of 1,000 pairs is biased upward: trials
whose folds happened to suit them rise to the top (in a 200-trial study here the best CV
score, 98.4, tested at 97.3). A second CV score on fresh pairs and folds, with fresh seeds,
is free of that selection; the trial recommended for the final test is the one with the
best mean of the two. The second draw comes from MNIST's training split, never the test.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HpoError, first_line
from hpo.kernels.dispatch import Kernels
from hpo.readers.results import (
    CONFIRMED_KEY,
    Recipe,
    confirmation_entries,
    recipe,
    scores,
)
from hpo.rng import derive_seed
from hpo.search.loop import WORKER
from hpo.spec.study_spec import StudySpec
from hpo.store.claims import Claims, claims_for
from hpo.store.experimental_api import experimental
from hpo.training.cv import cross_validate, study_folds, trial_seeds
from hpo.training.data import Pairs, cv_pairs

POLL_SECONDS = 1.0


def confirm_seed(spec: StudySpec | Recipe) -> int:
    return derive_seed(spec.seed, "confirm")


def leaders(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """The `top` complete trials with the highest CV accuracy, best first."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(complete, key=lambda t: t.value, reverse=True)[:top]


def lapse_seconds(trial: FrozenTrial) -> float:
    """How long a claim holds: three times the trial's own training time plus a minute.

    The second score trains the same network again, so a worker that died does not block it
    for good and a slow one is not overtaken.
    """
    took = trial.duration.total_seconds() if trial.duration is not None else 0.0
    return 3 * took + 60


class SecondDraw:
    """Scores a leader by CV on a second draw of pairs, with the settings it ran with."""

    def __init__(self, spec: StudySpec, data_dir: str | Path, device: torch.device, precision: str = "float32") -> None:
        self.spec, self.data_dir, self.device, self.precision = spec, data_dir, device, precision
        self._pairs: dict[tuple[int, int], Pairs] = {}

    def __call__(self, trial: FrozenTrial) -> float:
        how = recipe(trial, fallback=self.spec.train)
        seed = confirm_seed(how)
        key = (seed, how.settings.train_pairs)
        if key not in self._pairs:
            self._pairs[key] = cv_pairs(self.data_dir, how.settings.train_pairs, seed)
        pairs = self._pairs[key]
        folds = study_folds(pairs, how.settings.folds, seed)
        seeds = trial_seeds(seed, trial.number, folds.k)
        kernels = Kernels.named(how.kernels) if how.kernels else None  # the trial's own; older trials: the dispatch's
        result = cross_validate(
            how.params, how.settings, pairs, folds, seeds, self.device, None, self.precision, False, kernels=kernels
        )
        return statistics.fmean(result.accuracies)


class ConfirmEvents(Protocol):
    def confirmed(self, trial: FrozenTrial, value: float) -> None: ...
    def confirm_failed(self, trial: FrozenTrial, reason: str) -> None: ...


def confirm_leaders(
    study: optuna.Study,
    spec: StudySpec,
    data_dir: str | Path,
    top: int,
    device: torch.device,
    events: ConfirmEvents | None = None,
    start_at: int | None = None,
    storage: Any = None,
    score: Callable[[FrozenTrial], float] | None = None,
    precision: str = "float32",
) -> dict[int, float]:
    """Score each of the `top` leading trials exactly once on the second draw; returns every score.

    Scores are kept in the study (user attributes `confirmed:N`), so re-runs skip leaders
    already scored. Workers that reach the target together share the work: each claims a
    leader in `storage`'s database before scoring it (hpo.store.claims: one claim wins), leaves the
    leaders others claimed and waits for their scores, so every worker ends with the same
    scores. A leader that diverges or fails on the second draw is recorded as failed and is
    not recommended. `start_at` is the leader to begin with (default: one picked by process id).
    """
    _settle(study)
    todo = [t for t in leaders(study, top) if t.number not in confirmation_entries(study)]
    if not todo:
        return scores(study)
    claims = claims_for(storage, study.study_name)
    score = score or SecondDraw(spec, data_dir, device, precision)
    start = start_at if start_at is not None else os.getpid() % len(todo)
    todo = todo[start:] + todo[:start]
    while todo:
        waiting = []
        for trial in todo:
            if not claims.claim(trial.number, WORKER, lapse_seconds(trial)):
                waiting.append(trial)
                continue
            try:
                value = score(trial)
            except HpoError:
                raise  # the store or the data went away: not the leader's fault
            except Exception as exc:
                _record(study, claims, trial.number, failed=first_line(exc))
                if events is not None:
                    events.confirm_failed(trial, first_line(exc))
                continue
            _record(study, claims, trial.number, accuracy=value)
            if events is not None:
                events.confirmed(trial, value)
        entries = claims.entries()
        todo = [t for t in waiting if not {"accuracy", "failed"} & set(entries.get(t.number, {}))]
        if todo:
            time.sleep(POLL_SECONDS)
    for number, entry in claims.entries().items():  # others' results, for readers of the study
        if {"accuracy", "failed"} & set(entry) and f"{CONFIRMED_KEY}{number}" not in study.user_attrs:
            study.set_user_attr(f"{CONFIRMED_KEY}{number}", {k: entry[k] for k in ("accuracy", "failed") if k in entry})
    return scores(study)


def _settle(study: optuna.Study) -> None:
    """Wait while other workers finish the trials they hold, so that all pick the same leaders.

    Workers reach the target together but finish their last trials apart; one of those may
    lead. No trial running must hold at two polls a second apart: a worker that counted the
    trials just before this one reached the target creates its last trial within that second.
    The wait is bounded like a claim (a dead worker's trial is failed as stale meanwhile).
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    longest = max((t.duration.total_seconds() for t in complete if t.duration is not None), default=0.0)
    deadline = time.monotonic() + 3 * longest + 60
    quiet = 0
    while time.monotonic() < deadline and quiet < 2:
        quiet = 0 if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) else quiet + 1
        if quiet < 2:
            with experimental():
                optuna.storages.fail_stale_trials(study)
            time.sleep(POLL_SECONDS)


def _record(
    study: optuna.Study, claims: Claims, number: int, accuracy: float | None = None, failed: str | None = None
) -> None:
    claims.record(number, accuracy=accuracy, failed=failed)
    study.set_user_attr(f"{CONFIRMED_KEY}{number}", {"accuracy": accuracy} if failed is None else {"failed": failed})
