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
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from hpo.data import cv_pairs
from hpo.objective import Objective
from hpo.rng import derive_seed
from hpo.spec import StudySpec

ATTR = "confirmed"  # study user attribute: {trial number: CV accuracy on the second draw}


def confirm_seed(spec: StudySpec) -> int:
    return derive_seed(spec.seed, "confirm")


def scores(study: optuna.Study) -> dict[int, float]:
    """Second-draw CV accuracy by trial number (JSON keeps the stored keys as strings)."""
    return {int(k): v for k, v in study.user_attrs.get(ATTR, {}).items()}


def leaders(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """The `top` complete trials with the highest CV accuracy, best first."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(complete, key=lambda t: t.value, reverse=True)[:top]


def confirm_leaders(
    study: optuna.Study,
    spec: StudySpec,
    data_dir: str | Path,
    top: int,
    device: torch.device,
    on_confirmed: Callable[[FrozenTrial, float], None] | None = None,
    start_at: int | None = None,
) -> dict[int, float]:
    """Score each of the `top` leading trials once on the second draw; returns every score so far.

    Scores are kept in the study, so re-runs and other workers skip trials already scored
    (two workers may still score one trial twice, to the same value). `start_at` is the
    leader to begin with (default: one picked by process id).
    """
    todo = [t for t in leaders(study, top) if t.number not in scores(study)]
    if todo:
        second = replace(spec, seed=confirm_seed(spec))
        objective = Objective(second, cv_pairs(data_dir, spec.train.train_pairs, second.seed), device)
        # Workers that finish together start at different leaders, so they rarely repeat work.
        start = start_at if start_at is not None else os.getpid() % len(todo)
        for trial in todo[start:] + todo[:start]:
            if trial.number in scores(study):
                continue  # another worker scored it meanwhile
            value = float(objective(optuna.trial.FixedTrial(trial.params, number=trial.number)))
            study.set_user_attr(ATTR, {**study.user_attrs.get(ATTR, {}), str(trial.number): value})
            if on_confirmed is not None:
                on_confirmed(trial, value)
    return scores(study)


def confirmed_best(study: optuna.Study) -> FrozenTrial | None:
    """The scored trial with the best mean of its two CV accuracies, if any trial was scored."""
    second = scores(study)
    if not second:
        return None
    trials = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    scored = [trials[n] for n in second if n in trials]
    # Ties go to the higher first score, then to the earlier trial.
    return max(scored, key=lambda t: (statistics.fmean([t.value, second[t.number]]), t.value, -t.number), default=None)
