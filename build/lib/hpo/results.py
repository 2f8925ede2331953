"""Reading finished work back from the study store: studies, trials, their recipes, the recommendation.

Read-only commands (studies, evaluate, report, export, dashboard) open the store through here,
so a mistyped SQLite path fails plainly instead of creating an empty database. No torch here:
report and export import this module.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, fields, replace
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HpoError
from hpo.spec import TrainSettings
from hpo.storage import open_existing_storage

# Confirmation scores: one study user attribute per leader, KEY + trial number ->
# {"accuracy": its CV accuracy on a second draw} (or {"failed": why}); see hpo.confirm.
CONFIRMED_KEY = "confirmed:"
LEGACY_CONFIRMED = "confirmed"  # an older release kept every score in one dict under this key


def load_existing_study(url: str, name: str) -> optuna.Study:
    storage = open_existing_storage(url)
    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise HpoError(f"no study '{name}' in '{url}' (studies there: {known})")
    return optuna.load_study(study_name=name, storage=storage)


def is_multi_objective(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def fmt(value: Any) -> Any:
    """A parameter value as tables show it: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else value


@dataclass(frozen=True)
class Recipe:
    """Everything a finished trial needs to be trained again: its full parameters and settings."""

    params: dict[str, Any]  # sampled values over the spec's fixed ones
    settings: TrainSettings  # folds, epochs, batch size, training pairs
    seed: int  # the study's seed (pairs, folds)
    seed_trial: int  # the trial number its initialisation seeds derive from


def recipe(trial: FrozenTrial, fallback: TrainSettings | None = None) -> Recipe:
    """What `trial` ran with, from what the objective stored (older trials: `fallback`'s settings)."""
    stored = trial.user_attrs.get("train", {})
    names = {f.name for f in fields(TrainSettings)}
    settings = replace(fallback or TrainSettings(), **{k: v for k, v in stored.items() if k in names})
    return Recipe(
        params=full_params(trial),
        settings=settings,
        seed=int(trial.user_attrs.get("seed", 0)),
        seed_trial=int(trial.user_attrs.get("seed_trial", trial.number)),
    )


def full_params(trial: FrozenTrial) -> dict[str, Any]:
    """Sampled values over the spec's fixed ones (stored by the objective as `fixed_params`)."""
    return {**trial.user_attrs.get("fixed_params", {}), **trial.params}


def confirmation_entries(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """Each confirmed leader's entry by trial number: {"accuracy": x} or {"failed": why}."""
    attrs = study.user_attrs
    found = {int(k): {"accuracy": v} for k, v in attrs.get(LEGACY_CONFIRMED, {}).items()}
    found.update({int(k.removeprefix(CONFIRMED_KEY)): v for k, v in attrs.items() if k.startswith(CONFIRMED_KEY)})
    return {n: e for n, e in found.items() if "accuracy" in e or "failed" in e}


def scores(study: optuna.Study) -> dict[int, float]:
    """Second-draw CV accuracy by trial number (leaders that failed their second draw are left out)."""
    return {n: e["accuracy"] for n, e in confirmation_entries(study).items() if "accuracy" in e}


def confirmed_best(study: optuna.Study) -> FrozenTrial | None:
    """The scored trial with the best mean of its two CV accuracies, if any trial was scored."""
    second = scores(study)
    if not second:
        return None
    trials = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    scored = [trials[n] for n in second if n in trials]
    # Ties go to the higher first score, then to the earlier trial.
    return max(scored, key=lambda t: (statistics.fmean([t.value, second[t.number]]), t.value, -t.number), default=None)


def pick_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """Trial `number`, or the recommended one; only complete trials can be evaluated.

    Recommended: the best mean of two CV scores where `hpo optimize` confirmed its leaders on
    a second draw of pairs (hpo.confirm), else the best CV score.
    """
    if number is None:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            raise HpoError(f"study '{study.study_name}' has no complete trial to evaluate yet")
        if is_multi_objective(study):
            front = ", ".join(str(t.number) for t in study.best_trials)
            raise HpoError(
                f"study '{study.study_name}' has several objectives, so no single best trial; "
                f"pick one with --trial N (Pareto-optimal trials: {front})"
            )
        failed = {n for n, e in confirmation_entries(study).items() if "failed" in e}
        usable = [t for t in complete if t.number not in failed] or complete
        best = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        return confirmed_best(study) or best(usable, key=lambda t: t.value)
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise HpoError(f"study '{study.study_name}' has no trial #{number} (trials are #0..#{len(trials) - 1})")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise HpoError(f"trial #{number} of study '{study.study_name}' is {trial.state.name}; only complete trials can be evaluated")
    return trial


def save_evaluation(study: optuna.Study, evaluation: dict[str, Any]) -> None:
    """Kept as the study user attribute `evaluation`, which optuna-dashboard shows."""
    study.set_user_attr("evaluation", evaluation)
