"""Greedy ensemble selection over trials' out-of-fold predictions (Caruana et al., ICML 2004).

Each complete trial stores its out-of-fold probabilities for the study's training pairs as the
user attribute OOF_KEY: one byte per pair (probability x 254, rounded; 255 for a pair no fold
held out), base64, about 1.3 kB for 1,000 pairs. Selection adds, with replacement, the trial
whose probabilities most lower the ensemble's log loss, as auto-sklearn builds its final model;
log loss rather than accuracy because 1,000 pairs move accuracy in steps of 0.1 point and most
additions would tie. No torch here: `hpo studies` and the report read it.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HpoError

OOF_KEY = "oof"  # a trial's out-of-fold probabilities, encoded by encode_probabilities
TARGETS_KEY = "oof_targets"  # a study attribute: the training pairs' targets, as a string of 0s and 1s
ENSEMBLE_KEY = "ensemble"  # a study attribute: the last `hpo evaluate --ensemble` result
LIBRARY = 50  # selection reads the leaders by CV only: the rest add noise, not diversity worth having
MISSING = 255
EPS = 1e-3  # quantised probabilities of 0 or 1 would make the log loss infinite


def encode_probabilities(probs: Sequence[float]) -> str:
    """One byte per probability; NaN (a pair no fold held out) becomes MISSING."""
    p = np.asarray(probs, dtype=np.float64)
    q = np.where(np.isnan(p), MISSING, np.rint(np.clip(np.nan_to_num(p), 0, 1) * 254)).astype(np.uint8)
    return base64.b64encode(q.tobytes()).decode("ascii")


def decode_probabilities(text: str) -> np.ndarray:
    q = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    return np.where(q == MISSING, np.nan, q / 254.0)


def encode_targets(targets: Sequence[int]) -> str:
    return "".join("1" if int(t) else "0" for t in targets)


@dataclass(frozen=True)
class Selection:
    """Trials chosen (with replacement) in the order chosen, and what the ensemble scores out of fold."""

    picks: list[int]
    accuracy: float  # out-of-fold accuracy of the weighted ensemble
    log_loss: float

    @property
    def weights(self) -> dict[int, int]:
        return pick_counts(self.picks)


def pick_counts(picks: Sequence[int]) -> dict[int, int]:
    """Trial number -> how many times it was chosen, most chosen first."""
    return dict(Counter(picks).most_common())


def select(predictions: dict[int, np.ndarray], targets: np.ndarray, k: int) -> Selection:
    """K greedy additions with replacement; ties go to the trial listed first (the better by CV)."""
    if not predictions:
        raise HpoError("no trial stored out-of-fold predictions to build an ensemble from")
    numbers = list(predictions)
    stack = np.stack([predictions[n] for n in numbers])  # trials x pairs
    known = ~np.isnan(stack).any(0)
    stack, y = np.clip(stack[:, known], EPS, 1 - EPS), targets[known].astype(np.float64)
    total, picks = np.zeros(stack.shape[1]), []
    for size in range(1, k + 1):
        candidates = (total + stack) / size
        losses = -(y * np.log(candidates) + (1 - y) * np.log(1 - candidates)).mean(1)
        best = int(np.argmin(losses))
        picks.append(numbers[best])
        total += stack[best]
    mean = total / k
    loss = float(-(y * np.log(mean) + (1 - y) * np.log(1 - mean)).mean())
    return Selection(picks, float(((mean >= 0.5) == (y == 1)).mean()), loss)


def study_predictions(
    study: optuna.Study, library: int = LIBRARY, complete: list[FrozenTrial] | None = None
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """The leaders' stored predictions, best CV first, and the targets they predict.

    `complete`: the study's complete trials when the caller has read them already.
    """
    targets = study.user_attrs.get(TARGETS_KEY)
    if targets is None:
        raise HpoError(
            f"study '{study.study_name}' holds no out-of-fold predictions (its trials ran before this release, "
            "or with resample = 'fresh', where trials see different pairs); --ensemble needs them"
        )
    if complete is None:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    stored = [t for t in complete if OOF_KEY in t.user_attrs and t.user_attrs[OOF_KEY]]
    leaders: list[FrozenTrial] = sorted(stored, key=lambda t: (-t.value, t.number))[:library]
    y = np.array([int(c) for c in targets])
    predictions = {t.number: decode_probabilities(t.user_attrs[OOF_KEY]) for t in leaders}
    return {n: p for n, p in predictions.items() if p.shape == y.shape}, y


def select_for(study: optuna.Study, k: int, complete: list[FrozenTrial] | None = None) -> Selection:
    """Greedy ensemble selection of k members among the study's leaders (k >= 1: hpo.app.ensemble checks)."""
    predictions, targets = study_predictions(study, complete=complete)
    return select(predictions, targets, k)
