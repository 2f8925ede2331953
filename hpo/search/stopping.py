"""Stopping a study once more trials stop paying: `hpo optimize --patience N`.

In this project's studies the best CV score goes on rising long after its rises fall below the
folds' own noise: one draw of 1,000 pairs cannot rank the leaders, and the held-out tests of
studies replayed as if stopped at half their budget tied the full budget's picks
(docs/results.md). The rule: stop once the best CV score has not risen by more than its own
standard error over the last N finished trials. Every worker applies it to the shared study
before it asks for a trial, so the workers of one study stop together. No torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.readers.results import standard_error
from hpo.search.loop import FINISHED


@dataclass(frozen=True)
class Plateau:
    """Why a study stopped: its best score, how far it rose over the last `patience` trials, the noise."""

    finished: int
    patience: int
    best: float
    rise: float
    noise: float

    def line(self) -> str:
        return (
            f"stopped after {self.finished} finished trials: the best CV score ({self.best:.4f}) rose "
            f"{self.rise:.4f} over the last {self.patience}, within its folds' standard error ({self.noise:.4f})"
        )


def plateau(trials: Sequence[FrozenTrial], patience: int, maximize: bool = True) -> Plateau | None:
    """The plateau `trials` (a study's, any order) have reached, or None while trials still pay.

    Trials count in the order they finished, as a study stopped at that moment would hold them.
    Nothing stops a study before `patience` trials follow its first complete one.
    """
    if patience < 1:
        return None
    done = sorted((t for t in trials if t.state in FINISHED), key=lambda t: t.datetime_complete)
    earlier = [t for t in done[:-patience] if t.state == TrialState.COMPLETE]
    if not earlier:
        return None
    sign = 1 if maximize else -1
    best = max((t for t in done if t.state == TrialState.COMPLETE), key=lambda t: (sign * t.value, -t.number))
    before = max(sign * t.value for t in earlier)
    rise, noise = sign * best.value - before, standard_error(best)
    if rise > noise:
        return None
    return Plateau(len(done), patience, best.value, rise, noise)


def study_plateau(study: optuna.Study, patience: int) -> Plateau | None:
    """plateau() of a single-objective study's trials."""
    if patience < 1:
        return None
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return plateau(study.get_trials(deepcopy=False, states=FINISHED), patience, maximize)
