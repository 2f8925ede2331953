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
from hpo.training.batched import EVAL_CHUNK, train_members
from hpo.training.data import Folds, Pairs
from hpo.training.model import TwinNet
from hpo.training.rounds import Evaluation, RoundPairs


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
    """One configuration of the ensemble and its weight (how often greedy selection chose it)."""

    trial: int
    params: dict[str, Any]
    epochs: int
    batch_size: int
    weight: int
    kernels: Any = None  # the trial's recorded Kernels (hpo.kernels.dispatch); None: the dispatch's


def train_and_test_ensemble(
    members: Sequence[Member],
    data: RoundPairs,
    seed: int,
    device: torch.device | str = "cpu",
    precision: str = "float32",
    on_member: Callable[[int], None] | None = None,
) -> tuple[Evaluation, list[Evaluation]]:
    """The weighted mean of the members' test probabilities, round by round; and each member alone.

    Member i's round r starts from its own seed, so two members of one configuration would differ.
    """
    rounds, n = data.train_index.shape
    start = time.perf_counter()
    total = torch.zeros(rounds, n)
    alone = []
    for i, member in enumerate(members):
        model_cfg, train_cfg = configs(member.params, member.epochs, member.batch_size)
        seeds = [derive_seed(seed, "evaluate", r, "init", "member", i) for r in range(rounds)]
        result = train_members(
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
            kernels=member.kernels,
        )
        total += member.weight * member_probabilities(result.model, data.test.to(device), data.test_index)
        solo = _evaluation(result.accuracies, result.digit_accuracies, result.n_params, result.seconds, seed, n)
        alone.append(replace(solo, epochs=member.epochs, trial=member.trial))
        if on_member is not None:
            on_member(i + 1)
    targets = data.test.targets[data.test_index]
    accuracies = ((total / sum(m.weight for m in members) >= 0.5).long() == targets).float().mean(1).tolist()
    n_params = sum(e.n_params for e in alone)
    digit = [statistics.fmean(d) for d in zip(*(e.digit_accuracies for e in alone), strict=True)]
    ensemble = _evaluation(accuracies, digit, n_params, time.perf_counter() - start, seed, n)
    return replace(ensemble, epochs=max(m.epochs for m in members)), alone


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
