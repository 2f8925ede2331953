"""MNIST -> digit pairs (the course's protocol) -> standardised tensors -> stratified folds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hpo.errors import HpoError, first_line
from hpo.rng import generator

DATA_DIR_ENV = "HPO_DATA_DIR"


def default_data_dir() -> Path:
    """The per-user cache MNIST is downloaded into once: $XDG_CACHE_HOME/hpo, else ~/.cache/hpo."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hpo"


def resolve_data_dir(flag: str | Path | None) -> Path:
    """--data-dir wins, then $HPO_DATA_DIR, then the per-user cache (so any folder shares one copy)."""
    return Path(flag or os.environ.get(DATA_DIR_ENV) or default_data_dir())


@dataclass(frozen=True)
class Digits:
    """One MNIST split: uint8 images (N x 28 x 28) and their labels (N)."""

    images: torch.Tensor
    labels: torch.Tensor


def load_mnist(data_dir: str | Path, train: bool, download: bool = True) -> Digits:
    """One split through torchvision, downloading it when absent and possible."""
    from torchvision.datasets import MNIST

    root = Path(data_dir)
    try:
        dataset = MNIST(str(root), train=train, download=False)
    except RuntimeError:
        if not download:
            raise HpoError(_missing(root)) from None
        try:
            dataset = MNIST(str(root), train=train, download=True)
        except Exception as exc:  # network errors come in many types
            raise HpoError(f"{_missing(root)} (download failed: {first_line(exc)})") from None
    return Digits(images=dataset.data, labels=dataset.targets)


def _missing(root: Path) -> str:
    return (
        f"MNIST not found under '{root}' (expected {root}/MNIST/raw/*-ubyte); "
        f"point --data-dir or ${DATA_DIR_ENV} at a folder that holds it"
    )


@dataclass(frozen=True)
class Pairs:
    """N pairs: inputs N x 2 x 14 x 14 (float), targets N (0/1), classes N x 2 (0-9)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    classes: torch.Tensor

    def __len__(self) -> int:
        return self.targets.shape[0]

    def to(self, device: str | torch.device) -> Pairs:
        return Pairs(self.inputs.to(device), self.targets.to(device), self.classes.to(device))


def pair_targets(classes: torch.Tensor) -> torch.Tensor:
    """The task's label of each pair (... x 2 classes): 1 when the first digit is <= the second."""
    return (classes[..., 0] <= classes[..., 1]).long()


def make_pairs(digits: Digits, n: int, gen: torch.Generator) -> Pairs:
    """The reference protocol: one permutation, its first 2n images viewed as n x 2."""
    if 2 * n > digits.labels.shape[0]:
        raise HpoError(f"{n} pairs need {2 * n} images; this split has {digits.labels.shape[0]}")
    index = torch.randperm(digits.labels.shape[0], generator=gen)[: 2 * n].view(n, 2)
    # Pooling only the chosen images gives the same result as pooling all first.
    images = digits.images[index.reshape(-1)].to(torch.float32).unsqueeze(1)
    pooled = F.avg_pool2d(images, kernel_size=2).view(n, 2, 14, 14)
    classes = digits.labels[index].long()
    return Pairs(inputs=pooled, targets=pair_targets(classes), classes=classes)


def standardise(train: Pairs, *others: Pairs) -> tuple[Pairs, ...]:
    """Scale every set with the training pairs' mean and std (no test statistics leak in).

    The statistics are summed in float64: a float32 sum's last bit depended on how many threads
    shared it, and with it every pair, so a round trained at one thread and at two differed.
    """
    pixels = train.inputs.double()
    mean, std = pixels.mean().to(train.inputs.dtype), pixels.std().to(train.inputs.dtype)
    return tuple(Pairs((p.inputs - mean) / std, p.targets, p.classes) for p in (train, *others))


@dataclass(frozen=True)
class Folds:
    """K equal folds: train_index K x M and val_index K x V, rows index into one Pairs."""

    train_index: torch.Tensor
    val_index: torch.Tensor

    @property
    def k(self) -> int:
        return self.train_index.shape[0]


def stratified_folds(targets: torch.Tensor, k: int, gen: torch.Generator) -> Folds:
    """Folds stratified by target, all of one size so they train as one batched computation.

    Pairs are shuffled within each class and dealt round-robin; when k does not divide
    the number of pairs, the n mod k pairs dealt last (fewer than k) are left out.
    """
    n = targets.shape[0]
    if k < 2 or k > n:
        raise HpoError(f"folds must be between 2 and the number of pairs ({n}); got {k}")
    by_class = [torch.nonzero(targets == c).view(-1) for c in torch.unique(targets).tolist()]
    order = torch.cat([idx[torch.randperm(idx.numel(), generator=gen)] for idx in by_class])
    order = order[: n - n % k]
    fold_of = torch.arange(order.numel()) % k
    val = torch.stack([order[fold_of == f] for f in range(k)])
    train = torch.stack([order[fold_of != f] for f in range(k)])
    return Folds(train_index=train, val_index=val)


def cv_pairs(data_dir: str | Path, n: int, seed: int, download: bool = True) -> Pairs:
    """The study's training pairs: drawn once from MNIST's train split and standardised."""
    digits = load_mnist(data_dir, train=True, download=download)
    (pairs,) = standardise(make_pairs(digits, n, generator(seed, "pairs", "train")))
    return pairs
