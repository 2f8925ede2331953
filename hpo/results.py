"""Reading finished work back from the study store: studies, trials and their full configs.

Read-only commands (evaluate, report, export, dashboard) open the store through here, so a
mistyped SQLite path fails plainly instead of creating an empty database.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HpoError
from hpo.spec import TrainSettings
from hpo.study import check_storage_url, open_storage


def open_existing_storage(url: str) -> optuna.storages.RDBStorage:
    """The store at `url`; a SQLite file that does not exist is an error, not a new database."""
    parsed = check_storage_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            raise HpoError(f"no study store at '{url}' (file not found); pass --storage with the URL `hpo optimize` used")
    return open_storage(url)


def load_existing_study(url: str, name: str) -> optuna.Study:
    storage = open_existing_storage(url)
    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise HpoError(f"no study '{name}' in '{url}' (studies there: {known})")
    return optuna.load_study(study_name=name, storage=storage)


def is_multi_objective(study: optuna.Study) -> bool:
    return len(study.directions) > 1


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
        from hpo.confirm import confirmed_best

        return confirmed_best(study) or study.best_trial
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise HpoError(f"study '{study.study_name}' has no trial #{number} (trials are #0..#{len(trials) - 1})")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise HpoError(f"trial #{number} of study '{study.study_name}' is {trial.state.name}; only complete trials can be evaluated")
    return trial


def full_params(trial: FrozenTrial) -> dict[str, Any]:
    """Sampled values over the spec's fixed ones (stored by the objective as `fixed_params`)."""
    return {**trial.user_attrs.get("fixed_params", {}), **trial.params}


def trial_training(trial: FrozenTrial) -> TrainSettings:
    """The training settings a trial ran with (older trials without them get the defaults)."""
    stored = trial.user_attrs.get("train", {})
    return replace(TrainSettings(), **{k: v for k, v in stored.items() if k in ("epochs", "batch_size")})


def save_evaluation(study: optuna.Study, evaluation: dict[str, Any]) -> None:
    """Kept as the study user attribute `evaluation`, which optuna-dashboard shows."""
    study.set_user_attr("evaluation", evaluation)
