"""Train K member networks (CV folds or evaluation rounds) as one batched computation.

Each member has its own training and evaluation rows, its own initialisation and its own
shuffling stream, so member m trains exactly as it would alone (dropout masks aside: they
come from one shared stream). The loss is the sum of the members' mean losses, and Adam is
element-wise, so one optimiser over the grouped parameters is K independent optimisers.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from hpo.errors import HpoError
from hpo.kernels.dispatch import Kernels, choose
from hpo.rng import generator
from hpo.spec.registry import TrainConfig
from hpo.training.adam import make_adam
from hpo.training.augment import random_rotate_scale, random_shift, repair
from hpo.training.data import Pairs, pair_targets
from hpo.training.model import TwinConfig, TwinNet

__all__ = [
    "Diverged",
    "TrainConfig",
    "TrainResult",
    "evaluate_members",
    "learning_rate",
    "resolve_device",
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
Precision = Literal["float32", "bfloat16"]


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512_BF16 or AMX), as oneDNN sees it.

    Without it torch emulates bfloat16 through float32, slower than float32 itself.
    """
    backend = getattr(torch.backends, "mkldnn", None)
    return bool(backend is not None and backend.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(name: str) -> Precision:
    """--precision: 'float32' (the default), 'bfloat16', or 'auto' (the faster: float32).

    bfloat16 means the network's forward pass runs under autocast (convolutions and matrix
    products in bfloat16, accumulating in float32); the loss, the gradients' parameters and
    Adam stay float32. It is asked for explicitly, never by default. 'auto' picked it where the
    CPU has it natively until hpo's own float32 kernels (stem.py, winograd.py) made float32
    the faster: the reference trial now trains 1.2x to 1.3x slower in bfloat16 on such a CPU
    (docs/performance.md), so 'auto' means float32.
    """
    if name not in ("auto", "float32", "bfloat16"):
        raise HpoError(f"--precision must be auto, float32 or bfloat16; got '{name}'")
    if name == "auto":
        return "float32"
    if name == "bfloat16" and not native_bfloat16():
        raise HpoError(
            "--precision bfloat16 asked for, but this CPU has no native bfloat16 (AVX512_BF16 or AMX); use "
            "float32 or auto"
        )
    return name


def _autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Autocast for the forward pass in bfloat16, a no-op in float32."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def resolve_device(name: str) -> torch.device:
    """--device: 'auto' picks CUDA when present; asking for CUDA without it is a user error."""
    if name not in ("auto", "cpu", "cuda"):
        raise HpoError(f"--device must be auto, cpu or cuda; got '{name}'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise HpoError("--device cuda asked for, but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


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
    """
    device = torch.device(device)
    mode = resolve_precision(precision)
    k, m = train_index.shape
    if len(seeds) != k:
        raise ValueError(f"need one seed per member: {k} members, {len(seeds)} seeds")
    start = time.perf_counter()
    kernels = choose(model_cfg.batch_norm, device, mode) if kernels is None else kernels
    model = TwinNet(model_cfg, k, kernels).init_([generator(s, "init") for s in seeds]).to(device)
    # Fused: one kernel per parameter instead of ~10 element-wise passes.
    optimiser = make_adam(model.parameters(), train_cfg.lr, (train_cfg.beta1, 0.999), train_cfg.weight_decay, device)
    shufflers = [generator(s, "shuffle") for s in seeds]
    shifters = [generator(s, "shift") for s in seeds]
    warpers = [generator(s, "warp") for s in seeds]
    pairers = [generator(s, "repair") for s in seeds] if train_cfg.repair else None
    steps = train_cfg.epochs * -(-m // train_cfg.batch_size)
    step = 0
    drop_gen = generator(*seeds, "dropout", device=device)
    train, held_out = train.to(device), held_out.to(device)
    held_out_index = held_out_index.to(device)
    history: list[list[float]] = []
    for epoch in range(1, train_cfg.epochs + 1):
        model.train()
        perms = torch.stack([torch.randperm(m, generator=g) for g in shufflers])
        rows = train_index.gather(1, perms)
        order = rows.to(device)
        digit_order = None if pairers is None else repair(rows, pairers).to(device)
        total = torch.zeros((), device=device)
        for lo in range(0, m, train_cfg.batch_size):
            batch = slice(lo, lo + train_cfg.batch_size)
            digits_in = None if digit_order is None else digit_order[:, batch]
            inputs, targets, classes = _batch(train, order[:, batch], digits_in)
            inputs = random_rotate_scale(inputs, train_cfg.rotate, train_cfg.scale, warpers)
            inputs = random_shift(inputs, train_cfg.shift, shifters)
            optimiser.param_groups[0]["lr"] = learning_rate(train_cfg, step, steps)
            step += 1
            with _autocast(mode, device):
                answer, digits = model(inputs, drop_gen)
            loss = _loss(answer.float(), digits.float(), targets, classes, train_cfg.aux_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.detach()
        if not torch.isfinite(total):
            raise Diverged(epoch)
        if on_trained is not None:
            on_trained(epoch)
        if not validate_every_epoch and epoch < train_cfg.epochs:
            continue
        accuracies, digit_accuracies = evaluate_members(model, held_out, held_out_index, precision=mode)
        history.append(accuracies)
        if on_epoch is not None:
            on_epoch(epoch, accuracies)
    return TrainResult(
        accuracies=history[-1] if history else [],
        digit_accuracies=digit_accuracies if history else [],
        history=history,
        seconds=time.perf_counter() - start,
        n_params=model.parameters_per_member(),
        model=model,
    )


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
        with _autocast(mode, index.device):
            answer, digits = model(pairs.inputs[idx])
        right += (answer.argmax(-1) == pairs.targets[idx]).sum(1)
        digits_right += (digits.argmax(-1) == pairs.classes[idx]).sum((1, 2))
    n = index.shape[1]
    return (right / n).tolist(), (digits_right / (2 * n)).tolist()
