"""A trial's members in groups, one group per thread, each group on one torch thread.

hpo's numba kernels (the fused first layer, Winograd's transforms) run on one thread, and the
rest of a step is small operators that two torch threads barely speed up: a 5-fold batch-norm
trial took about as long on two threads as on one. The members (folds, rounds) are independent
computations, so on two threads they train in two groups instead, each group's operators on
one torch thread and the groups side by side (the kernels and torch release the GIL).

Every member draws from its own streams (initialisation, shuffling, augmentation, dropout) and
its parameters, batch statistics and Adam state are its own, so member m trains the same in a
group as in one computation of all members: its accuracies are the one-thread run's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from hpo.training.model import TwinNet

# The one thread count the groups were measured to pay at (docs/performance.md): on two
# threads, two groups. Beyond two, torch's own threads and oneDNN's convolution (the dispatch's
# choice there) are left as they were: not measured.
GROUP_THREADS = 2

T = TypeVar("T")


def member_groups(members: int, device: torch.device | str = "cpu", threads: int | None = None) -> list[range]:
    """The members' groups: one group of all of them, or on the CPU at GROUP_THREADS torch
    threads (default: torch's current count), that many groups of consecutive members, the
    larger first."""
    threads = torch.get_num_threads() if threads is None else threads
    if torch.device(device).type != "cpu" or threads != GROUP_THREADS or members < 2:
        return [range(members)]
    cut = -(-members // 2)
    return [range(cut), range(cut, members)]


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch's operators on one thread while the groups run, its own count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Lockstep:
    """Runs one step of every group at once: the first on the caller's thread, the rest on a
    pool's, and returns when all are done (an error in any is raised after all have stopped)."""

    def __init__(self, groups: int) -> None:
        self.pool = ThreadPoolExecutor(max(1, groups - 1), thread_name_prefix="hpo-group") if groups > 1 else None

    def __call__(self, steps: Sequence[Callable[[], T]]) -> list[T]:
        if self.pool is None:
            return [step() for step in steps]
        futures = [self.pool.submit(step) for step in steps[1:]]
        try:
            first = steps[0]()
        finally:
            rest = [f.exception() for f in futures]  # waits for every group
        error = next((e for e in rest if e is not None), None)
        if error is not None:
            raise error
        return [first, *(f.result() for f in futures)]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def merged(models: Sequence[TwinNet]) -> TwinNet:
    """One net holding the groups' members in order, as one computation of them all would.

    Every member-indexed tensor (grouped convolutions, batch norm's channels, the member
    matrices) is member-major along its first dimension, so the groups' tensors concatenate.
    """
    if len(models) == 1:
        return models[0]
    first = models[0]
    net = TwinNet(first.cfg, sum(m.members for m in models), first.kernels)
    states = [m.state_dict() for m in models]
    net.load_state_dict(
        {key: torch.cat([s[key] for s in states]) if value.dim() else value for key, value in states[0].items()}
    )
    return net.train(first.training)
