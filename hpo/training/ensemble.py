"""Predicted probabilities of trained members, and an ensemble of configurations tested on evaluation rounds.

A trial's out-of-fold probabilities (each pair predicted by the fold member that did not train on
it) are what greedy ensemble selection reads (hpo.readers.ensemble); the ensemble's test trains
each chosen configuration on every round's pairs, as `hpo evaluate` does for one, and averages the
members' probabilities round by round.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from hpo.rng import derive_seed
from hpo.spec.registry import configs
from hpo.training.batched import EVAL_CHUNK
from hpo.training.data import Folds, Pairs
from hpo.training.model import TwinNet
from hpo.training.rounds import Evaluation, RoundPairs, train_rounds


@torch.inference_mode()
def member_probabilities(model: TwinNet, pairs: Pairs, index: torch.Tensor) -> torch.Tensor:
    """P(digit 1 <= digit 2) of member m for the rows index[m], in eval mode: members x rows."""
    model.eval()
    out = []
    index = index.to(pairs.inputs.device)
    for lo in range(0, index.shape[1], EVAL_CHUNK):
        answer, _ = model(pairs.inputs[index[:, lo : lo + EVAL_CHUNK]])
        out.append(torch.softmax(answer.float(), dim=-1)[..., 1])  # logits (mlp) or log-probabilities (compare)
    return torch.cat(out, dim=1).cpu()


def out_of_fold(model: TwinNet, pairs: Pairs, folds: Folds) -> torch.Tensor:
    """Each pair's probability from the fold member that held it out; NaN for pairs no fold held out."""
    probs = torch.full((len(pairs),), float("nan"))
    probs[folds.val_index.reshape(-1)] = member_probabilities(model, pairs, folds.val_index).reshape(-1)
    return probs


@dataclass(frozen=True)
class Member:
    """One configuration of the ensemble, which copy of it this is, and its weight.

    Copy c of trial t starts every round from seeds of its own (t, c), so a configuration trained
    twice gives two different networks, and a copy trains the same in any ensemble it is part of.
    """

    trial: int
    params: dict[str, Any]
    epochs: int
    batch_size: int
    weight: int
    kernels: Any = None  # the trial's recorded Kernels (hpo.kernels.dispatch); None: the dispatch's
    copy: int = 0


@dataclass(frozen=True)
class Trained:
    """A member's test probabilities (rounds x test pairs) and its evaluation alone."""

    member: Member
    probabilities: torch.Tensor
    alone: Evaluation


def train_member(
    member: Member, data: RoundPairs, seed: int, device: torch.device | str = "cpu", precision: str = "float32"
) -> Trained:
    """Train one member on every round's pairs and predict that round's test pairs."""
    rounds, n = data.train_index.shape
    model_cfg, train_cfg = configs(member.params, member.epochs, member.batch_size)
    copy = ("trial", member.trial, "copy", member.copy)
    seeds = [derive_seed(seed, "evaluate", r, "init", *copy) for r in range(rounds)]
    result = train_rounds(model_cfg, train_cfg, data, seeds, device, precision, member.kernels)
    probabilities = member_probabilities(result.model, data.test.to(device), data.test_index)
    solo = _evaluation(result.accuracies, result.digit_accuracies, result.n_params, result.seconds, seed, n)
    return Trained(member, probabilities, replace(solo, epochs=member.epochs, trial=member.trial))


def combine(trained: Sequence[Trained], data: RoundPairs, seed: int, seconds: float) -> Evaluation:
    """The members' probabilities averaged by weight, round by round, and tested."""
    total = sum(t.member.weight * t.probabilities for t in trained)
    weights = sum(t.member.weight for t in trained)
    targets = data.test.targets[data.test_index]
    accuracies = ((total / weights >= 0.5).long() == targets).float().mean(1).tolist()
    n_params = sum(t.alone.n_params for t in trained)
    digit = [statistics.fmean(d) for d in zip(*(t.alone.digit_accuracies for t in trained), strict=True)]
    ensemble = _evaluation(accuracies, digit, n_params, seconds, seed, data.test_index.shape[1])
    return replace(ensemble, epochs=max(t.member.epochs for t in trained))


def train_and_test_ensemble(
    members: Sequence[Member],
    data: RoundPairs,
    seed: int,
    device: torch.device | str = "cpu",
    precision: str = "float32",
    on_member: Callable[[int], None] | None = None,
) -> tuple[Evaluation, list[Evaluation]]:
    """The weighted mean of the members' test probabilities, round by round; and each member alone."""
    start = time.perf_counter()
    trained = []
    for i, member in enumerate(members):
        trained.append(train_member(member, data, seed, device, precision))
        if on_member is not None:
            on_member(i + 1)
    return combine(trained, data, seed, time.perf_counter() - start), [t.alone for t in trained]


def _evaluation(
    accuracies: list[float], digits: list[float], n_params: int, seconds: float, seed: int, n: int
) -> Evaluation:
    return Evaluation(
        rounds=len(accuracies),
        seed=seed,
        pairs=n,
        epochs=0,
        accuracies=accuracies,
        digit_accuracies=digits,
        n_params=n_params,
        seconds=seconds,
    )
