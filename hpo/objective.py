"""One Optuna trial: sampled parameters -> TwinConfig + TrainConfig -> fold-parallel CV -> value."""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any

import optuna
import torch

from hpo.data import Folds, Pairs, stratified_folds
from hpo.model import TwinNet
from hpo.params import configs
from hpo.rng import derive_seed, generator
from hpo.spec import StudySpec, TrainSettings
from hpo.train import Diverged, EpochHook, TrainResult, resolve_precision, train_members


def trial_seeds(seed: int, trial_number: int, folds: int) -> list[int]:
    """One seed per fold member, so any trial can be re-run exactly."""
    return [derive_seed(seed, "trial", trial_number, fold) for fold in range(folds)]


def seed_trial_number(trial: optuna.Trial) -> int:
    """The trial number seeds derive from: a retry's is its first run's, so it trains the same.

    Optuna queues a retry with the failed trial's user attributes, which carry this number.
    """
    number = trial.user_attrs.get("seed_trial", trial.number)
    trial.set_user_attr("seed_trial", number)
    return number


def study_folds(pairs: Pairs, folds: int, seed: int) -> Folds:
    return stratified_folds(pairs.targets, folds, generator(seed, "folds"))


def cross_validate(
    params: dict[str, Any],
    settings: TrainSettings,
    pairs: Pairs,
    folds: Folds,
    seeds: list[int],
    device: torch.device,
    on_epoch: EpochHook | None = None,
    precision: str = "float32",
    validate_every_epoch: bool = True,
) -> TrainResult:
    """All folds of one configuration trained as one batched computation.

    Validation after every epoch is only worth its time (about 8 % of a trial's work) where
    a pruner reads it; otherwise the folds are scored once, after the last epoch.
    """
    model_cfg, train_cfg = configs(params, settings.epochs, settings.batch_size)
    return train_members(
        model_cfg, train_cfg, pairs, folds.train_index, pairs, folds.val_index, seeds, device, on_epoch=on_epoch,
        precision=precision, validate_every_epoch=validate_every_epoch,
    )


class Objective:
    """Mean CV accuracy over the spec's folds, reported each epoch so pruners can act.

    A multi-objective spec returns its objectives in order (accuracy, params, seconds) and
    reports nothing, since Optuna's pruners need one value.
    """

    def __init__(self, spec: StudySpec, pairs: Pairs, device: torch.device, precision: str = "float32") -> None:
        self.spec, self.pairs, self.device = spec, pairs, device
        self.precision = resolve_precision(precision)  # 'auto' resolved once, and recorded per trial
        self.folds: Folds = study_folds(pairs, spec.train.folds, spec.seed)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        params = self.spec.suggest(trial)
        model_cfg, _ = configs(params, self.spec.train.epochs, self.spec.train.batch_size)
        seeds = trial_seeds(self.spec.seed, seed_trial_number(trial), self.folds.k)
        trial.set_user_attr("seed", self.spec.seed)
        # trial.params holds only sampled values; these let `hpo evaluate` rebuild the full config.
        trial.set_user_attr("fixed_params", self.spec.fixed_params())
        trial.set_user_attr("train", asdict(self.spec.train))
        trial.set_user_attr("precision", self.precision)
        n_params = TwinNet(model_cfg).parameters_per_member()
        trial.set_user_attr("n_params", n_params)
        self._check_budget(trial, n_params)

        def report(epoch: int, accuracies: list[float]) -> None:
            if self.spec.multi_objective:
                return
            trial.report(statistics.fmean(accuracies), epoch)
            if trial.should_prune():
                trial.set_user_attr("fold_accuracies", accuracies)
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        try:
            pruned = not self.spec.multi_objective and self.spec.pruner != "none"
            result = cross_validate(params, self.spec.train, self.pairs, self.folds, seeds, self.device, report, self.precision, pruned)
        except Diverged as exc:
            trial.set_user_attr("pruned_reason", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        trial.set_user_attr("fold_accuracies", result.accuracies)
        trial.set_user_attr("train_seconds", round(result.seconds, 3))
        metrics = {"accuracy": statistics.fmean(result.accuracies), "params": float(n_params), "seconds": result.seconds}
        values = tuple(metrics[name] for name in self.spec.objectives)
        return values if self.spec.multi_objective else values[0]

    def _check_budget(self, trial: optuna.Trial, n_params: int) -> None:
        """The parameter budget as an Optuna constraint; a trial over it is pruned untrained."""
        budget = self.spec.max_params
        if budget is None:
            return
        trial.set_constraint("max_params", n_params - budget)
        if n_params > budget:
            reason = f"{n_params} parameters exceed the budget of {budget}"
            trial.set_user_attr("pruned_reason", reason)
            raise optuna.TrialPruned(reason)
