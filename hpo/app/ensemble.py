"""`hpo evaluate --ensemble K`: greedy ensemble selection over a study's trials, tested on evaluation rounds.

Selection reads the trials' stored out-of-fold predictions (hpo.readers.ensemble); each chosen
configuration then trains on every round's pairs and the members' probabilities are averaged
(hpo.training.ensemble). Selection picks with replacement, and the mode says what a trial picked
twice becomes: one network counted twice (weighted), or two networks from different seeds
(retrain); `seeds` skips selection and trains the recommended trial K times.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.errors import HpoError
from hpo.readers.ensemble import ENSEMBLE_KEY, pick_counts, select_for
from hpo.readers.results import is_multi_objective, load_existing_study, pick_trial, recipe

if TYPE_CHECKING:
    import optuna

    from hpo.app.evaluating import EpochEvents, EvaluateOptions, EvaluateResult
    from hpo.training.ensemble import Member

ENSEMBLE_MODES = ("weighted", "retrain", "seeds")


def picks_for(study: optuna.Study, k: int, mode: str, rule: str) -> tuple[list[int], dict[str, Any]]:
    """The K trials an ensemble trains (with repeats), and what selection scored out of fold."""
    if k < 1:
        raise HpoError(f"--ensemble must be at least 1; got {k}")
    if mode == "seeds":
        return [pick_trial(study, None, rule).number] * k, {}
    selection = select_for(study, k)
    return selection.picks, {"oof_accuracy": selection.accuracy, "oof_log_loss": selection.log_loss}


def members_for(study: optuna.Study, picks: list[int], mode: str, epochs: int | None) -> list[Member]:
    """The networks to train: a trial picked w times once with weight w (weighted), else w times."""
    from hpo.app.evaluating import recorded_kernels
    from hpo.training.ensemble import Member

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    members = []
    for number, weight in pick_counts(picks).items():
        how = recipe(trials[number])
        shared = (number, how.params, epochs or how.settings.test_epochs, how.settings.batch_size)
        kernels = recorded_kernels(how.kernels)
        if mode == "weighted":
            members.append(Member(*shared, weight, kernels))
        else:
            members += [Member(*shared, 1, kernels, copy=c) for c in range(weight)]
    return members


def evaluate_ensemble(o: EvaluateOptions, events: EpochEvents | None = None) -> EvaluateResult:
    """Select o.ensemble members of o.study, train them on o.rounds rounds, test their averaged probabilities."""
    import torch

    from hpo.app.evaluating import EvaluateResult
    from hpo.training.data import resolve_data_dir
    from hpo.training.ensemble import train_and_test_ensemble
    from hpo.training.precision import resolve_device, resolve_precision
    from hpo.training.rounds import round_pairs

    if o.study is None:
        raise HpoError("--ensemble needs --study: it picks its members among a study's trials")
    if o.trial is not None:
        raise HpoError("--ensemble picks its own members; leave out --trial")
    study = load_existing_study(o.storage, o.study)
    if is_multi_objective(study):
        raise HpoError(f"study '{o.study}' has several objectives; --ensemble needs one")
    picks, scored = picks_for(study, o.ensemble, o.ensemble_mode, o.pick)
    members = members_for(study, picks, o.ensemble_mode, o.epochs)
    if o.threads:
        torch.set_num_threads(o.threads)
    device = resolve_device(o.device)
    data = round_pairs(resolve_data_dir(o.data_dir), o.rounds, o.pairs, o.seed)
    if events is not None:
        events.started(
            f"ensemble of {o.ensemble} picks, {o.rounds} rounds", len(members), unit="configurations trained"
        )
    try:
        hook = events.epoch if events is not None else None
        result, alone = train_and_test_ensemble(members, data, o.seed, device, resolve_precision(o.precision), hook)
    finally:
        if events is not None:
            events.stopped()
    record: dict[str, Any] = {
        "study": o.study,
        **result.to_dict(),
        "ensemble": o.ensemble,
        "mode": o.ensemble_mode,
        "picks": picks,
        **scored,
        "members": [
            {"trial": m.trial, "copy": m.copy, "weight": m.weight, "mean": e.mean, "std": e.std, "n_params": e.n_params}
            for m, e in zip(members, alone, strict=True)
        ],
    }
    study.set_user_attr(ENSEMBLE_KEY, record)
    params = {f"#{number}": count for number, count in pick_counts(picks).items()}
    chosen = ", ".join(f"{name} x{count}" for name, count in params.items())
    label = f"ensemble of {o.ensemble} ({o.ensemble_mode}: trials {chosen}) of study '{o.study}'"
    return EvaluateResult(label, params, result, record, list(zip(members, alone, strict=True)))
