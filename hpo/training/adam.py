"""Adam as one call of torch's fused kernel per step, its state kept in plain lists.

`torch.optim.Adam(fused=True)` runs the same kernel, `torch._fused_adam_`, but wraps every
step in bookkeeping (tensors grouped by device and dtype, state checks, profiler hooks): about
half a millisecond of Python per step, 4 % of the reference trial at 1 and at 2 threads
(`benchmarks/levers.py --parts trial`, docs/performance.md). The kernel is private to torch,
so where it is missing (a later torch may rename it) `make_adam` falls back to
`torch.optim.Adam(fused=True)`; tests/test_adam.py checks that both take the same steps.

The kernel runs each tensor's last n % 16 elements through a scalar loop that rounds
differently from its vector loop, so where a member's elements fall in a grouped parameter would
change its update in the last bits (and Adam magnifies such bits in a gradient that is nearly
zero, as a bias before batch norm has). A parameter whose per-member size is not a multiple of
16 is therefore stepped member by member: a member then trains the same beside any others.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

VECTOR = 16  # floats in the kernel's widest vector (AVX-512); a multiple of AVX2's 8


class FusedAdam:
    """Adam with L2 weight decay (torch.optim.Adam's), state created with the first step.

    Parameters without a gradient in a step are skipped, as torch.optim.Adam skips them.
    `members`: parameters hold that many members' values, member-major along the first dimension.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        betas: tuple[float, float],
        weight_decay: float,
        members: int = 1,
    ) -> None:
        self.params = list(params)
        self.members = members
        self.split = [
            members > 1 and p.shape[0] % members == 0 and (p.numel() // members) % VECTOR != 0 for p in self.params
        ]
        self.param_groups = [{"lr": lr}]  # the one setting a schedule changes, as in torch.optim
        self.betas, self.weight_decay = betas, weight_decay
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = [
            [torch.zeros((), dtype=torch.float32, device=p.device) for _ in range(members if split else 1)]
            for p, split in zip(self.params, self.split)
        ]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        params, grads, exp_avg, exp_avg_sq = [], [], [], []
        for i in live:
            p = self.params[i]
            tensors = (p.data, p.grad, self.exp_avg[i], self.exp_avg_sq[i])
            for out, t in zip((params, grads, exp_avg, exp_avg_sq), tensors):
                out.extend(t.chunk(self.members) if self.split[i] else (t,))
        steps = [s for i in live for s in self.steps[i]]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            params,
            grads,
            exp_avg,
            exp_avg_sq,
            [],
            steps,
            lr=self.param_groups[0]["lr"],
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=self.weight_decay,
            eps=1e-8,
            amsgrad=False,
            maximize=False,
        )


def make_adam(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    device: torch.device,
    members: int = 1,
) -> FusedAdam | torch.optim.Adam:
    """The lean fused Adam on the CPU where torch has the kernel; torch.optim's fused Adam elsewhere."""
    if device.type == "cpu" and hasattr(torch, "_fused_adam_"):
        return FusedAdam(params, lr, betas, weight_decay, members)
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
