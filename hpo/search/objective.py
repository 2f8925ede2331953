"""One Optuna trial: sampled parameters -> TwinConfig + TrainConfig -> fold-parallel CV -> value."""

from __future__ import annotations

import statistics
from dataclasses import asdict

import optuna
import torch

from hpo.kernels.dispatch import Kernels, choose
from hpo.readers.ensemble import OOF_KEY, encode_probabilities
from hpo.rng import derive_seed, generator
from hpo.spec.registry import configs
from hpo.spec.study_spec import StudySpec
from hpo.training.batched import Diverged
from hpo.training.cv import cross_validate, study_folds, trial_seeds
from hpo.training.data import Digits, Folds, Pairs, make_pairs, standardise
from hpo.training.ensemble import out_of_fold
from hpo.training.model import TwinNet
from hpo.training.precision import resolve_precision


def seed_trial_number(trial: optuna.Trial) -> int:
    """The trial number seeds derive from: a retry's is its first run's, so it trains the same.

    Optuna queues a retry with the failed trial's user attributes, which carry this number.
    """
    number = trial.user_attrs.get("seed_trial", trial.number)
    trial.set_user_attr("seed_trial", number)
    return number


def wilcoxon_epoch(epochs: int) -> int:
    """The epoch whose per-fold accuracies the Wilcoxon pruner compares: a third of the way in."""
    return max(1, -(-epochs // 3))


class Objective:
    """Mean CV accuracy over the spec's folds, reported each epoch so pruners can act.

    A multi-objective spec returns its objectives in order (accuracy, params, seconds) and
    reports nothing, since Optuna's pruners need one value.
    """

    def __init__(
        self,
        spec: StudySpec,
        pairs: Pairs,
        device: torch.device,
        precision: str = "float32",
        kernels: Kernels | None = None,
        digits: Digits | None = None,
    ) -> None:
        self.spec, self.pairs, self.device = spec, pairs, device
        self.kernels = kernels  # every trial's kernels (benchmarks compare them); None: the dispatch's, per trial
        self.precision = resolve_precision(precision)  # 'auto' resolved once, and recorded per trial
        self.folds: Folds = study_folds(pairs, spec.train.folds, spec.seed)
        self.digits = digits  # MNIST's training split, for resample = "fresh"
        if spec.resample == "fresh" and digits is None:
            raise ValueError("resample = 'fresh' needs the training digits to draw each trial's pairs from")

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        params = self.spec.suggest(trial)
        model_cfg, _ = configs(params, self.spec.train.epochs, self.spec.train.batch_size)
        number = seed_trial_number(trial)
        seeds = trial_seeds(self.spec.seed, number, self.folds.k)
        pairs, folds = self._draw(number)
        trial.set_user_attr("resample", self.spec.resample)
        trial.set_user_attr("seed", self.spec.seed)
        # trial.params holds only sampled values; these let `hpo evaluate` rebuild the full config.
        trial.set_user_attr("fixed_params", self.spec.fixed_params())
        trial.set_user_attr("train", asdict(self.spec.train))
        trial.set_user_attr("precision", self.precision)
        # Chosen once and recorded: `hpo evaluate` rebuilds with it, at any thread count.
        kernels = self.kernels or choose(model_cfg.batch_norm, self.device, self.precision)
        trial.set_user_attr("kernels", kernels.name)
        n_params = TwinNet(model_cfg).parameters_per_member()
        trial.set_user_attr("n_params", n_params)
        self._check_budget(trial, n_params)

        checkpoint = wilcoxon_epoch(self.spec.train.epochs) if self.spec.pruner == "wilcoxon" else None

        def report(epoch: int, accuracies: list[float]) -> None:
            if self.spec.multi_objective or (checkpoint is not None and epoch != checkpoint):
                return
            if checkpoint is None:
                trial.report(statistics.fmean(accuracies), epoch)
            else:  # fold f's accuracy as step f, paired with the best trial's fold f
                for fold, accuracy in enumerate(accuracies):
                    trial.report(accuracy, fold)
            if trial.should_prune():
                trial.set_user_attr("fold_accuracies", accuracies)
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        try:
            pruned = not self.spec.multi_objective and self.spec.pruner != "none"
            result = cross_validate(
                params,
                self.spec.train,
                pairs,
                folds,
                seeds,
                self.device,
                report,
                self.precision,
                pruned,
                kernels=kernels,
            )
        except Diverged as exc:
            trial.set_user_attr("pruned_reason", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        trial.set_user_attr("fold_accuracies", result.accuracies)
        trial.set_user_attr("train_seconds", round(result.seconds, 3))
        if not self.spec.multi_objective and self.spec.resample != "fresh":
            trial.set_user_attr(OOF_KEY, encode_probabilities(out_of_fold(result.model, pairs, folds).tolist()))
        metrics = {
            "accuracy": statistics.fmean(result.accuracies),
            "params": float(n_params),
            "seconds": result.seconds,
        }
        values = tuple(metrics[name] for name in self.spec.objectives)
        return values if self.spec.multi_objective else values[0]

    def _draw(self, number: int) -> tuple[Pairs, Folds]:
        """The pairs and folds trial `number` is scored on (the spec's resample setting)."""
        if self.spec.resample == "fixed":
            return self.pairs, self.folds
        if self.spec.resample == "reshuffle":
            return self.pairs, study_folds(self.pairs, self.spec.train.folds, derive_seed(self.spec.seed, number))
        assert self.digits is not None
        gen = generator(self.spec.seed, "pairs", "trial", number)
        (pairs,) = standardise(make_pairs(self.digits, self.spec.train.train_pairs, gen))
        return pairs, study_folds(pairs, self.spec.train.folds, derive_seed(self.spec.seed, number))

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
