"""Cross-validation: every fold of one configuration trained as one batched computation."""

from __future__ import annotations

from typing import Any

import torch

from hpo.kernels.dispatch import Kernels
from hpo.rng import derive_seed, generator
from hpo.spec.registry import configs
from hpo.spec.study_spec import TrainSettings
from hpo.training.batched import EpochHook, TrainResult, train_members
from hpo.training.data import Folds, Pairs, stratified_folds


def trial_seeds(seed: int, trial_number: int, folds: int) -> list[int]:
    """One seed per fold member, so any trial can be re-run exactly."""
    return [derive_seed(seed, "trial", trial_number, fold) for fold in range(folds)]


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
    kernels: Kernels | None = None,
) -> TrainResult:
    """All folds of one configuration trained as one batched computation.

    Validation after every epoch is only worth its time (about 8 % of a trial's work) where
    a pruner reads it; otherwise the folds are scored once, after the last epoch. `kernels`:
    the trial's recorded choice, to train as it did (default: the dispatch's, here and now).
    """
    model_cfg, train_cfg = configs(params, settings.epochs, settings.batch_size)
    return train_members(
        model_cfg,
        train_cfg,
        pairs,
        folds.train_index,
        pairs,
        folds.val_index,
        seeds,
        device,
        on_epoch=on_epoch,
        precision=precision,
        validate_every_epoch=validate_every_epoch,
        kernels=kernels,
    )
