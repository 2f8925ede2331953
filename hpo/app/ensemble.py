"""`hpo evaluate --ensemble K`: greedy ensemble selection over a study's trials, tested on evaluation rounds.

Selection reads the trials' stored out-of-fold predictions (hpo.readers.ensemble); each chosen
configuration then trains on every round's pairs and the members' probabilities are averaged,
weighted by how often selection chose them (hpo.training.ensemble).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.errors import HpoError
from hpo.readers.ensemble import ENSEMBLE_KEY, select_for
from hpo.readers.results import is_multi_objective, load_existing_study, recipe

if TYPE_CHECKING:
    from hpo.app.evaluating import EpochEvents, EvaluateOptions, EvaluateResult


def evaluate_ensemble(o: EvaluateOptions, events: EpochEvents | None = None) -> EvaluateResult:
    """Select o.ensemble members of o.study, train them on o.rounds rounds, test their averaged probabilities."""
    import torch

    from hpo.app.evaluating import EvaluateResult, recorded_kernels
    from hpo.training.batched import resolve_device, resolve_precision
    from hpo.training.data import resolve_data_dir
    from hpo.training.ensemble import Member, train_and_test_ensemble
    from hpo.training.rounds import round_pairs

    if o.study is None:
        raise HpoError("--ensemble needs --study: it picks its members among a study's trials")
    if o.trial is not None:
        raise HpoError("--ensemble picks its own members; leave out --trial")
    study = load_existing_study(o.storage, o.study)
    if is_multi_objective(study):
        raise HpoError(f"study '{o.study}' has several objectives; --ensemble needs one")
    selection = select_for(study, o.ensemble)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    members = []
    for number, weight in selection.weights.items():
        how = recipe(trials[number])
        epochs = o.epochs or how.settings.test_epochs
        members.append(
            Member(number, how.params, epochs, how.settings.batch_size, weight, recorded_kernels(how.kernels))
        )
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
        "picks": selection.picks,
        "oof_accuracy": selection.accuracy,
        "oof_log_loss": selection.log_loss,
        "members": [
            {"trial": m.trial, "weight": m.weight, "mean": e.mean, "std": e.std, "n_params": e.n_params}
            for m, e in zip(members, alone, strict=True)
        ],
    }
    study.set_user_attr(ENSEMBLE_KEY, record)
    chosen = ", ".join(f"#{m.trial} x{m.weight}" for m in members)
    label = f"ensemble of {o.ensemble} (trials {chosen}) of study '{o.study}'"
    params = {f"#{m.trial}": m.weight for m in members}
    return EvaluateResult(label, params, result, record, list(zip(members, alone, strict=True)))
