"""Adam as one call of torch's fused kernel per step, its state kept in plain lists.

`torch.optim.Adam(fused=True)` runs the same kernel, `torch._fused_adam_`, but wraps every
step in bookkeeping (tensors grouped by device and dtype, state checks, profiler hooks): about
half a millisecond of Python per step, 4 % of the reference trial at 1 and at 2 threads
(`benchmarks/levers.py --parts trial`, docs/performance.md). The kernel is private to torch,
so where it is missing (a later torch may rename it) `make_adam` falls back to
`torch.optim.Adam(fused=True)`; tests/test_adam.py checks that both take the same steps.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class FusedAdam:
    """Adam with L2 weight decay (torch.optim.Adam's), state created with the first step.

    Parameters without a gradient in a step are skipped, as torch.optim.Adam skips them.
    """

    def __init__(
        self, params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float], weight_decay: float
    ) -> None:
        self.params = list(params)
        self.param_groups = [{"lr": lr}]  # the one setting a schedule changes, as in torch.optim
        self.betas, self.weight_decay = betas, weight_decay
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        params, steps = [self.params[i] for i in live], [self.steps[i] for i in live]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            params,
            [p.grad for p in params],
            [self.exp_avg[i] for i in live],
            [self.exp_avg_sq[i] for i in live],
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
) -> FusedAdam | torch.optim.Adam:
    """The lean fused Adam on the CPU where torch has the kernel; torch.optim's fused Adam elsewhere."""
    if device.type == "cpu" and hasattr(torch, "_fused_adam_"):
        return FusedAdam(params, lr, betas, weight_decay)
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
