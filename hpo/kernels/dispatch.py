"""Which kernel runs for each of the network's first two layers: chosen once, named, reused.

Each kernel module says only what inputs it takes (`takes`: device, dtype, shapes, autocast);
where a kernel pays is policy, and it lives here alone. A trial resolves its choice once
(`choose`), records its `name`, and `hpo evaluate` (its rounds and an ensemble's members)
rebuilds the network with that choice (`Kernels.named`), so a trial's test trains the same
computation as the trial did, at any thread count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch

First = Literal["fused", "torch"]
Second = Literal["winograd", "winograd_pool", "torch"]

# The most torch threads Winograd (and so the stem) was measured to pay at: its transforms run
# on one thread while oneDNN's convolution spreads over all of them (docs/performance.md).
WINOGRAD_MAX_THREADS = 2

_FIRST: tuple[str, ...] = ("fused", "torch")
_SECOND: tuple[str, ...] = ("winograd", "winograd_pool", "torch")
_STEM = "stem"


@dataclass(frozen=True)
class Kernels:
    """The kernels of the first layer (conv, [batch norm,] pool, ReLU) and the second convolution.

    first: "fused" (hpo.kernels.first_layer) or "torch". second: "winograd" (hpo.kernels.winograd,
    then PyTorch's batch norm, pooling and ReLU), "winograd_pool" (hpo.kernels.winograd_pool:
    convolution, pooling and ReLU in one pass; no batch norm) or "torch". stem: both layers in one
    pass (hpo.kernels.stem), which is the fused first layer followed by the pooled Winograd pass.
    """

    first: First = "torch"
    second: Second = "torch"
    stem: bool = False

    def __post_init__(self) -> None:
        if self.first not in _FIRST or self.second not in _SECOND:
            raise ValueError(f"unknown kernels: first={self.first!r}, second={self.second!r}")
        if self.stem and (self.first, self.second) != ("fused", "winograd_pool"):
            raise ValueError("the stem is the fused first layer and the pooled Winograd pass in one")

    @property
    def name(self) -> str:
        """A stable name, as trials record it: 'stem', or 'FIRST+SECOND' (e.g. 'fused+winograd')."""
        return _STEM if self.stem else f"{self.first}+{self.second}"

    @classmethod
    def named(cls, name: str) -> Kernels:
        """The choice a `name` stands for (the inverse of `name`)."""
        if name == _STEM:
            return STEM
        first, _, second = name.partition("+")
        if first not in _FIRST or second not in _SECOND:
            raise ValueError(f"unknown kernel choice '{name}' (e.g. 'stem', 'fused+winograd', 'torch+torch')")
        return cls(cast(First, first), cast(Second, second))

    def fits(self, batch_norm: bool) -> bool:
        """Whether a network with or without batch norm can run these kernels: with it, batch
        norm sits between the second convolution and its pooling, so neither the pooled pass
        nor the stem applies."""
        return not (batch_norm and self.second == "winograd_pool")


TORCH = Kernels()
STEM = Kernels("fused", "winograd_pool", stem=True)


def choose(
    batch_norm: bool,
    device: torch.device | str = "cpu",
    precision: str = "float32",
    threads: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Kernels:
    """The kernels that pay for this network on this device, precision and thread count.

    PyTorch's own operators everywhere off the CPU, under bfloat16 autocast (the precision asked
    for convolutions in bfloat16; hpo's kernels are float32 and float64) or for another dtype.
    On the CPU the fused first layer at any thread count; Winograd for the second convolution
    on at most WINOGRAD_MAX_THREADS threads (default: torch's current count); and without batch
    norm, the pooled Winograd pass, with the first layer as one pass: the stem.
    """
    if torch.device(device).type != "cpu" or precision != "float32" or dtype not in (torch.float32, torch.float64):
        return TORCH
    if torch.is_autocast_enabled("cpu"):
        return TORCH
    threads = torch.get_num_threads() if threads is None else threads
    if threads > WINOGRAD_MAX_THREADS:
        return Kernels(first="fused")
    return Kernels("fused", "winograd") if batch_norm else STEM
