"""Final test evaluation: R rounds of train-on-N / test-on-N, as the published tables report it.

A round is fresh training pairs (MNIST train split), fresh test pairs (test split) and a fresh
initialisation, all derived from one seed; each round is standardised with its own training
statistics. All rounds train as members of one batched computation (hpo.training.batched.train_members),
so the time per training is the total divided by R: an amortised figure, not a solo run's.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hpo.kernels.dispatch import Kernels
from hpo.rng import derive_seed, generator
from hpo.spec.registry import TrainConfig, TwinConfig
from hpo.training.batched import EpochHook, TrainResult, train_members
from hpo.training.data import Pairs, load_mnist, make_pairs, standardise


@dataclass(frozen=True)
class Evaluation:
    """Per-round test results of one configuration."""

    rounds: int
    seed: int
    pairs: int
    epochs: int
    accuracies: list[float]
    digit_accuracies: list[float]
    n_params: int
    seconds: float
    trial: int | None = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    @property
    def digit_mean(self) -> float:
        return statistics.fmean(self.digit_accuracies)

    @property
    def seconds_per_training(self) -> float:
        return self.seconds / self.rounds

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (`--json` and the study's `evaluation` attribute)."""
        return {
            **asdict(self),
            "mean": self.mean,
            "std": self.std,
            "digit_accuracy": self.digit_mean,
            "seconds_per_training": self.seconds_per_training,
        }


@dataclass(frozen=True)
class RoundPairs:
    """All rounds' pairs in two pools; row r of each index holds round r's pairs."""

    train: Pairs
    train_index: torch.Tensor
    test: Pairs
    test_index: torch.Tensor


def round_pairs(data_dir: str | Path, rounds: int, n: int, seed: int) -> RoundPairs:
    """Each round's own train and test draws, standardised with that round's training pairs."""
    train_digits = load_mnist(data_dir, train=True)
    test_digits = load_mnist(data_dir, train=False)
    trains, tests = [], []
    for r in range(rounds):
        train = make_pairs(train_digits, n, generator(seed, "evaluate", r, "train"))
        test = make_pairs(test_digits, n, generator(seed, "evaluate", r, "test"))
        train, test = standardise(train, test)
        trains.append(train)
        tests.append(test)
    index = torch.arange(rounds * n).view(rounds, n)
    return RoundPairs(_concat(trains), index, _concat(tests), index)


def _concat(parts: list[Pairs]) -> Pairs:
    return Pairs(
        torch.cat([p.inputs for p in parts]),
        torch.cat([p.targets for p in parts]),
        torch.cat([p.classes for p in parts]),
    )


def train_rounds(
    model_cfg: TwinConfig,
    train_cfg: TrainConfig,
    data: RoundPairs,
    seeds: list[int],
    device: torch.device | str,
    precision: str,
    kernels: Kernels | None,
    on_trained: Callable[[int], None] | None = None,
) -> TrainResult:
    """One member per round, trained on the round's training pairs and scored once on its test pairs."""
    return train_members(
        model_cfg,
        train_cfg,
        data.train,
        data.train_index,
        data.test,
        data.test_index,
        seeds,
        device,
        precision=precision,
        validate_every_epoch=False,
        kernels=kernels,
        on_trained=on_trained,
    )


def train_and_test(
    model_cfg: TwinConfig,
    train_cfg: TrainConfig,
    data: RoundPairs,
    seed: int,
    device: torch.device | str = "cpu",
    on_epoch: EpochHook | None = None,
    trial: int | None = None,
    precision: str = "float32",
    kernels: Kernels | None = None,
) -> Evaluation:
    """Train every round's member on its training pairs and score it on its test pairs.

    The test pairs are scored once, after the last epoch: `on_epoch(epoch, [])` follows each
    epoch's training only to report progress (no accuracies), as scoring every epoch would
    cost time for nothing.

    `kernels`: a trial's recorded choice, so its test trains the computation it was chosen by
    (default: the dispatch's for this device, precision and thread count).
    """
    rounds, n = data.train_index.shape
    seeds = [derive_seed(seed, "evaluate", r, "init") for r in range(rounds)]
    hook = None if on_epoch is None else lambda epoch: on_epoch(epoch, [])
    result = train_rounds(model_cfg, train_cfg, data, seeds, device, precision, kernels, hook)
    return Evaluation(
        rounds=rounds,
        seed=seed,
        pairs=n,
        epochs=train_cfg.epochs,
        accuracies=result.accuracies,
        digit_accuracies=result.digit_accuracies,
        n_params=result.n_params,
        seconds=result.seconds,
        trial=trial,
    )
