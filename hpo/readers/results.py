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
from hpo.spec.study_spec import TrainSettings
from hpo.store.connect import open_existing_storage, shown_url


def load_existing_study(url: str, name: str) -> optuna.Study:
    storage = open_existing_storage(url)
    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise HpoError(f"no study '{name}' in '{shown_url(url)}' (studies there: {known})")
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
    kernels: str | None = None  # the kernel choice it trained with (hpo.kernels.dispatch); None: not recorded


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
        kernels=trial.user_attrs.get("kernels"),
    )


def full_params(trial: FrozenTrial) -> dict[str, Any]:
    """Sampled values over the spec's fixed ones (stored by the objective as `fixed_params`)."""
    return {**trial.user_attrs.get("fixed_params", {}), **trial.params}


# How the recommended trial is chosen (`hpo evaluate --pick`); docs/results.md compares them.
#   best:      the best CV score
#   one-se:    the fewest parameters among trials within one standard error of the best CV
#              score (the folds' std / sqrt(folds)): the leaders' order is noise, the smaller
#              network has less to overfit (Breiman's one-standard-error rule)
#   lcb:       the best CV score less its own standard error: a high score from scattered folds
#              is more likely luck than one from folds that agree
#   logloss:   the lowest out-of-fold log loss among the 50 leaders by CV (the ensemble's first
#              pick, hpo.readers.ensemble): on 1,000 pairs accuracy moves in steps of 0.1 point
#              and a leader is a dozen errors from the next, while every pair's probability
#              counts in the log loss (a study that stored no predictions: the best CV score)
# (Re-scoring the leaders on a second draw of pairs was the default once; over ten studies it moved
# the pick's test by +0.02 points and cost half a minute, so it went: docs/results.md.)
RULE_NAMES = {  # rule -> how the console names it
    "best": "best CV",
    "one-se": "fewest parameters within one standard error of the best CV",
    "lcb": "best CV less its standard error",
    "logloss": "lowest out-of-fold log loss",
}
RULES = tuple(RULE_NAMES)
DEFAULT_RULE = "logloss"  # nineteen paired studies: its picks 98.47 % on average, best CV's 98.43


def standard_error(trial: FrozenTrial) -> float:
    """The standard error of a trial's CV mean from its folds' spread (0 when unknown)."""
    folds = trial.user_attrs.get("fold_accuracies") or []
    return statistics.stdev(folds) / len(folds) ** 0.5 if len(folds) > 1 else 0.0


@dataclass(frozen=True)
class Recommendation:
    trial: FrozenTrial
    rule: str  # the rule applied: logloss falls back to best in a study that stored no predictions


def recommend(study: optuna.Study, complete: list[FrozenTrial], rule: str) -> Recommendation:
    """The recommended trial of a single-objective study by `rule` (see RULES)."""
    if rule not in RULES:
        raise HpoError(f"--pick must be one of {', '.join(RULES)}; got '{rule}'")
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    best = max(complete, key=lambda t: (sign * t.value, -t.number))
    if rule == "one-se":
        floor = sign * best.value - standard_error(best)
        near = [t for t in complete if sign * t.value >= floor]
        chosen = min(near, key=lambda t: (t.user_attrs.get("n_params", float("inf")), -sign * t.value, t.number))
        return Recommendation(chosen, rule)
    if rule == "lcb":
        return Recommendation(max(complete, key=lambda t: (sign * t.value - standard_error(t), -t.number)), rule)
    if rule == "logloss":
        from hpo.readers.ensemble import select_for

        try:
            number = select_for(study, 1, complete).picks[0]
        except HpoError:  # no stored predictions (fresh pairs per trial, or an older release's trials)
            return Recommendation(best, "best")
        return Recommendation(next(t for t in complete if t.number == number), rule)
    return Recommendation(best, "best")


def recommendation(study: optuna.Study, rule: str = DEFAULT_RULE) -> Recommendation | None:
    """What `rule` recommends in a single-objective study; None before any trial completes."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return recommend(study, complete, rule) if complete else None


def pick_trial(study: optuna.Study, number: int | None, rule: str = DEFAULT_RULE) -> FrozenTrial:
    """Trial `number`, or the one `rule` recommends (see RULES); only complete trials can be evaluated."""
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
        return recommend(study, complete, rule).trial
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise HpoError(f"study '{study.study_name}' has no trial #{number} (trials are #0..#{len(trials) - 1})")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise HpoError(
            f"trial #{number} of study '{study.study_name}' is {trial.state.name}; only complete trials can be "
            "evaluated"
        )
    return trial


def save_evaluation(study: optuna.Study, evaluation: dict[str, Any]) -> None:
    """Kept as the study user attribute `evaluation`, which optuna-dashboard shows."""
    study.set_user_attr("evaluation", evaluation)
