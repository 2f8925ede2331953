"""Re-score a study's leading trials on a second draw of training pairs before naming the best.

The highest of many CV scores measured on one draw of 1,000 pairs is biased upward: trials
whose folds happened to suit them rise to the top (in a 200-trial study here the best CV
score, 98.4, tested at 97.3). A second CV score on fresh pairs and folds, with fresh seeds,
is free of that selection; the trial recommended for the final test is the one with the
best mean of the two. The second draw comes from MNIST's training split, never the test.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from hpo.data import Pairs, cv_pairs
from hpo.objective import cross_validate, study_folds, trial_seeds
from hpo.results import CONFIRMED_KEY, Recipe, recipe, scores
from hpo.rng import derive_seed
from hpo.spec import StudySpec

POLL_SECONDS = 1.0


def confirm_seed(spec: StudySpec | Recipe) -> int:
    return derive_seed(spec.seed, "confirm")


def claim(study: optuna.Study, number: int, at: float) -> None:
    study.set_user_attr(f"{CONFIRMED_KEY}{number}", {"claimed_at": at})


def record(study: optuna.Study, number: int, value: float) -> None:
    study.set_user_attr(f"{CONFIRMED_KEY}{number}", {"accuracy": value})


def _claimed_elsewhere(entry: dict[str, float], trial: FrozenTrial) -> bool:
    """`trial`'s entry says another worker began scoring it and may still be at it.

    A claim lapses after three times the trial's own training time plus a minute (the second
    score trains the same network again), so a worker that died does not block it for good.
    """
    since = entry.get("claimed_at")
    if since is None:
        return False
    took = trial.duration.total_seconds() if trial.duration is not None else 0.0
    return time.time() - since < 3 * took + 60


def leaders(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """The `top` complete trials with the highest CV accuracy, best first."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(complete, key=lambda t: t.value, reverse=True)[:top]


class SecondDraw:
    """Scores a leader by CV on a second draw of pairs, with the settings it ran with."""

    def __init__(self, spec: StudySpec, data_dir: str | Path, device: torch.device) -> None:
        self.spec, self.data_dir, self.device = spec, data_dir, device
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
        result = cross_validate(how.params, how.settings, pairs, folds, seeds, self.device)
        return sum(result.accuracies) / len(result.accuracies)


def confirm_leaders(
    study: optuna.Study,
    spec: StudySpec,
    data_dir: str | Path,
    top: int,
    device: torch.device,
    on_confirmed: Callable[[FrozenTrial, float], None] | None = None,
    start_at: int | None = None,
) -> dict[int, float]:
    """Score each of the `top` leading trials once on the second draw; returns every score.

    Scores are kept in the study, so re-runs skip trials already scored. Workers that finish
    together share the work: each claims a leader before scoring it and leaves leaders that
    another has claimed, then waits for their scores (or takes over a claim that lapsed), so
    every worker ends with all `top` scores. `start_at` is the leader to begin with (default:
    one picked by process id, so that workers rarely reach for the same leader at once).
    """
    done = scores(study)
    todo = [t for t in leaders(study, top) if t.number not in done]
    if not todo:
        return done
    score = SecondDraw(spec, data_dir, device)
    start = start_at if start_at is not None else os.getpid() % len(todo)
    todo = todo[start:] + todo[:start]
    while todo:
        waiting = []
        for trial in todo:
            entry = study.user_attrs.get(f"{CONFIRMED_KEY}{trial.number}", {})
            if "accuracy" in entry:
                continue  # another worker scored it meanwhile
            if _claimed_elsewhere(entry, trial):
                waiting.append(trial)
                continue
            claim(study, trial.number, time.time())
            value = score(trial)
            record(study, trial.number, value)
            if on_confirmed is not None:
                on_confirmed(trial, value)
        done = scores(study)
        todo = [t for t in waiting if t.number not in done]
        if todo:
            time.sleep(POLL_SECONDS)
    return done
