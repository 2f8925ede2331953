"""Train K member networks (CV folds or evaluation rounds) as one batched computation.

Each member has its own training and evaluation rows, its own initialisation and its own
shuffling, augmentation and dropout streams, so member m trains exactly as it would alone. The
loss is the sum of the members' mean losses, and Adam is element-wise, so one optimiser over
the grouped parameters is K independent optimisers.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from hpo.kernels.dispatch import Kernels, choose
from hpo.rng import generator
from hpo.spec.registry import TrainConfig
from hpo.training.adam import make_adam
from hpo.training.augment import random_rotate_scale, random_shift, repair
from hpo.training.data import Pairs, pair_targets
from hpo.training.groups import Lockstep, member_groups, merged, one_torch_thread
from hpo.training.model import TwinConfig, TwinNet
from hpo.training.precision import Precision, autocast, resolve_precision

__all__ = [
    "Diverged",
    "TrainConfig",
    "TrainResult",
    "evaluate_members",
    "learning_rate",
    "train_members",
]

EVAL_CHUNK = 50  # pairs per member per forward pass: small enough to stay in cache


def learning_rate(cfg: TrainConfig, step: int, steps: int) -> float:
    """The rate for optimiser step `step` of `steps` (0-based).

    Cosine decay to zero over the run: at a fixed 25 epochs the last epochs then refine rather
    than jitter, which in side-by-side 10-round tests added about half a point of test accuracy.
    """
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
    return cfg.lr


class Diverged(Exception):
    """The training loss stopped being finite."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"loss became NaN or infinite in epoch {epoch}")
        self.epoch = epoch


@dataclass(frozen=True)
class TrainResult:
    """Per-member accuracies on their evaluation rows after the last epoch run."""

    accuracies: list[float]
    digit_accuracies: list[float]
    history: list[list[float]] = field(repr=False)  # epoch x member
    seconds: float
    n_params: int
    model: TwinNet = field(repr=False, compare=False)


EpochHook = Callable[[int, list[float]], None]


def train_members(
    model_cfg: TwinConfig,
    train_cfg: TrainConfig,
    train: Pairs,
    train_index: torch.Tensor,
    held_out: Pairs,
    held_out_index: torch.Tensor,
    seeds: Sequence[int],
    device: torch.device | str = "cpu",
    on_epoch: EpochHook | None = None,
    *,
    precision: str = "float32",
    validate_every_epoch: bool = True,
    kernels: Kernels | None = None,
    on_trained: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train member m on train[train_index[m]], score it on held_out[held_out_index[m]].

    `on_epoch(epoch, accuracies)` runs after each scored epoch (1-based); it may raise to stop.
    `validate_every_epoch=False` scores only after the last epoch (the history then has one
    entry): for callers whose pruner reads nothing per epoch. `precision` is what
    `resolve_precision` accepts. `kernels`: the first two layers' kernels (hpo.kernels.dispatch),
    by default the dispatch's choice for this device, precision and torch's thread count.
    `on_trained(epoch)` runs after each epoch's training, scored or not (a progress bar's hook).
    On two CPU threads the members train in two groups side by side (hpo.training.groups);
    the hooks run on the caller's thread with every member's accuracies.
    """
    device = torch.device(device)
    mode = resolve_precision(precision)
    k = train_index.shape[0]
    if len(seeds) != k:
        raise ValueError(f"need one seed per member: {k} members, {len(seeds)} seeds")
    start = time.perf_counter()
    kernels = choose(model_cfg.batch_norm, device, mode) if kernels is None else kernels
    split = member_groups(k, device)
    lockstep = Lockstep(len(split))
    with one_torch_thread() if len(split) > 1 else contextlib.nullcontext():
        try:
            groups = [
                _Group(
                    model_cfg,
                    train_cfg,
                    train,
                    train_index[g],
                    held_out,
                    held_out_index[g],
                    [seeds[i] for i in g],
                    device,
                    mode,
                    kernels,
                )
                for g in split
            ]
            history: list[list[float]] = []
            digit_accuracies: list[float] = []
            for epoch in range(1, train_cfg.epochs + 1):
                score = validate_every_epoch or epoch == train_cfg.epochs
                scored = lockstep([functools.partial(group.epoch, epoch, score) for group in groups])
                if on_trained is not None:
                    on_trained(epoch)
                if not score:
                    continue
                history.append([a for accuracies, _ in scored for a in accuracies])
                digit_accuracies = [a for _, digits in scored for a in digits]
                if on_epoch is not None:
                    on_epoch(epoch, history[-1])
        finally:
            lockstep.close()
        model = merged([group.model for group in groups])
    return TrainResult(
        accuracies=history[-1] if history else [],
        digit_accuracies=digit_accuracies,
        history=history,
        seconds=time.perf_counter() - start,
        n_params=model.parameters_per_member(),
        model=model,
    )


class _Group:
    """Some members' network, optimiser and streams, trained an epoch at a time."""

    def __init__(
        self,
        model_cfg: TwinConfig,
        train_cfg: TrainConfig,
        train: Pairs,
        train_index: torch.Tensor,
        held_out: Pairs,
        held_out_index: torch.Tensor,
        seeds: Sequence[int],
        device: torch.device,
        precision: Precision,
        kernels: Kernels,
    ) -> None:
        k, m = train_index.shape
        self.cfg, self.train_index, self.device, self.precision = train_cfg, train_index, device, precision
        self.model = TwinNet(model_cfg, k, kernels).init_([generator(s, "init") for s in seeds]).to(device)
        # Fused: one kernel per parameter instead of ~10 element-wise passes.
        self.optimiser = make_adam(
            self.model.parameters(), train_cfg.lr, (train_cfg.beta1, 0.999), train_cfg.weight_decay, device, k
        )
        self.shufflers = [generator(s, "shuffle") for s in seeds]
        self.shifters = [generator(s, "shift") for s in seeds]
        self.warpers = [generator(s, "warp") for s in seeds]
        self.pairers = [generator(s, "repair") for s in seeds] if train_cfg.repair else None
        self.droppers = [generator(s, "dropout", device=device) for s in seeds]
        self.steps, self.step = train_cfg.epochs * -(-m // train_cfg.batch_size), 0
        self.train, self.held_out = train.to(device), held_out.to(device)
        self.held_out_index = held_out_index.to(device)

    def epoch(self, epoch: int, score: bool) -> tuple[list[float], list[float]]:
        """Train one epoch; if `score`, the members' answer and digit accuracies after it."""
        cfg, model, optimiser = self.cfg, self.model, self.optimiser
        model.train()
        m = self.train_index.shape[1]
        perms = torch.stack([torch.randperm(m, generator=g) for g in self.shufflers])
        rows = self.train_index.gather(1, perms)
        order = rows.to(self.device)
        digit_order = None if self.pairers is None else repair(rows, self.pairers).to(self.device)
        total = torch.zeros((), device=self.device)
        for lo in range(0, m, cfg.batch_size):
            batch = slice(lo, lo + cfg.batch_size)
            digits_in = None if digit_order is None else digit_order[:, batch]
            inputs, targets, classes = _batch(self.train, order[:, batch], digits_in)
            inputs = random_rotate_scale(inputs, cfg.rotate, cfg.scale, self.warpers)
            inputs = random_shift(inputs, cfg.shift, self.shifters)
            optimiser.param_groups[0]["lr"] = learning_rate(cfg, self.step, self.steps)
            self.step += 1
            with autocast(self.precision, self.device):
                answer, digits = model(inputs, self.droppers)
            loss = _loss(answer.float(), digits.float(), targets, classes, cfg.aux_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.detach()
        if not torch.isfinite(total):
            raise Diverged(epoch)
        if not score:
            return [], []
        return evaluate_members(model, self.held_out, self.held_out_index, precision=self.precision)


def _batch(
    train: Pairs, idx: torch.Tensor, digits: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch's inputs, targets and classes: the rows `idx`, or with re-pairing the digits
    `digits` (K x B x 2 indices into the 2N digits), labelled from their classes."""
    if digits is None:
        return train.inputs[idx], train.targets[idx], train.classes[idx]
    classes = train.classes.reshape(-1)[digits]
    inputs = train.inputs.reshape(-1, *train.inputs.shape[2:])[digits]
    return inputs, pair_targets(classes), classes


def _loss(
    answer: torch.Tensor,
    digits: torch.Tensor,
    targets: torch.Tensor,
    classes: torch.Tensor,
    aux_weight: float,
) -> torch.Tensor:
    """Sum over members of CE(answer) + aux_weight * (CE(digit 1) + CE(digit 2)), each a batch mean."""
    k, b = targets.shape
    main = F.cross_entropy(answer.reshape(k * b, 2), targets.reshape(-1), reduction="none")
    loss = main.view(k, b).mean(1)
    if aux_weight:
        aux = F.cross_entropy(digits.reshape(k * b * 2, 10), classes.reshape(-1), reduction="none")
        loss = loss + aux_weight * 2 * aux.view(k, 2 * b).mean(1)
    return loss.sum()


@torch.inference_mode()
def evaluate_members(
    model: TwinNet, pairs: Pairs, index: torch.Tensor, precision: str = "float32"
) -> tuple[list[float], list[float]]:
    """Each member's answer accuracy and digit accuracy on its own rows, in eval mode."""
    model.eval()
    mode = resolve_precision(precision)
    right = torch.zeros(index.shape[0], device=index.device)
    digits_right = torch.zeros_like(right)
    for lo in range(0, index.shape[1], EVAL_CHUNK):
        idx = index[:, lo : lo + EVAL_CHUNK]
        with autocast(mode, index.device):
            answer, digits = model(pairs.inputs[idx])
        right += (answer.argmax(-1) == pairs.targets[idx]).sum(1)
        digits_right += (digits.argmax(-1) == pairs.classes[idx]).sum((1, 2))
    n = index.shape[1]
    return (right / n).tolist(), (digits_right / (2 * n)).tolist()
