"""Compile hpo's numba kernels into their cache ahead of the first trial: `python -m hpo.training.warm_up`.

Numba compiles a kernel on its first call, for the argument types of that call, and caches it
on disk (hpo.kernels.compile.cache_folder). A container image runs this at build time, so its
workers start warm; it trains two members for one epoch on a few random pairs, with and
without batch norm, through every kernel choice the dispatch makes on the CPU, in training and
in evaluation, in float32 (the trials' type).
"""

from __future__ import annotations

import sys
import time

import torch

from hpo.kernels.compile import cache_folder
from hpo.kernels.dispatch import STEM, Kernels
from hpo.rng import generator
from hpo.spec.registry import TrainConfig, TwinConfig
from hpo.training.batched import train_members
from hpo.training.data import Pairs

# Every CPU choice of hpo.kernels.dispatch.choose, and the pooled pass on its own.
CHOICES = (STEM, Kernels("fused", "winograd"), Kernels("fused", "winograd_pool"), Kernels(first="fused"))


def random_pairs(n: int, seed: int = 0) -> Pairs:
    gen = generator(seed, "warm-up")
    return Pairs(
        torch.randn(n, 2, 14, 14, generator=gen),
        torch.randint(0, 2, (n,), generator=gen),
        torch.randint(0, 10, (n, 2), generator=gen),
    )


def warm_up(choices: tuple[Kernels, ...] = CHOICES) -> float:
    """Run each kernel choice once on a tiny problem; returns the seconds it took."""
    start = time.perf_counter()
    pairs = random_pairs(8)
    index = torch.arange(8).view(2, 4)
    for batch_norm in (False, True):
        cfg = TwinConfig(conv1_channels=4, conv2_channels=8, hidden=8, batch_norm=batch_norm)
        for kernels in choices:
            if kernels.fits(batch_norm):
                train_members(
                    cfg,
                    TrainConfig(epochs=1, batch_size=2, shift=1),
                    pairs,
                    index,
                    pairs,
                    index,
                    [0, 1],
                    kernels=kernels,
                )
    return time.perf_counter() - start


def main() -> None:
    # --first-layer-only: the fused first layer alone (a quick check of where the cache goes).
    seconds = warm_up((Kernels(first="fused"),) if "--first-layer-only" in sys.argv[1:] else CHOICES)
    print(f"hpo kernels compiled and cached in {cache_folder()} ({seconds:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
