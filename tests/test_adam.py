"""The lean fused Adam takes exactly the steps torch.optim.Adam(fused=True) takes."""

from __future__ import annotations

import torch

from hpo.rng import generator
from hpo.spec.registry import TwinConfig
from hpo.training.adam import FusedAdam, make_adam
from hpo.training.model import TwinNet


def train_steps(make, steps: int = 6) -> list[torch.Tensor]:
    net = TwinNet(TwinConfig(batch_norm=True, dropout=0.0), members=2).init_([generator(s, "init") for s in range(2)])
    optimiser = make(net.parameters())
    data = torch.Generator().manual_seed(3)
    for step in range(steps):
        optimiser.param_groups[0]["lr"] = 1e-2 / (step + 1)  # a schedule changes the rate each step
        answer, digits = net(torch.randn(2, 8, 2, 14, 14, generator=data))
        optimiser.zero_grad(set_to_none=True)
        (answer.square().mean() + digits.square().mean()).backward()
        if step == 2:
            net.encoder.fc2.bias.grad = None  # a parameter without a gradient this step is left alone
        optimiser.step()
    return [p.detach().clone() for p in net.parameters()]


def test_fused_adam_takes_the_same_steps_as_torch_adam_bit_for_bit() -> None:
    betas, decay = (0.85, 0.999), 1e-3
    ours = train_steps(lambda params: FusedAdam(params, 1e-2, betas, decay))
    theirs = train_steps(lambda params: torch.optim.Adam(params, lr=1e-2, betas=betas, weight_decay=decay, fused=True))
    assert len(ours) == len(theirs) > 10
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_make_adam_is_the_lean_one_on_the_cpu_and_torch_adam_elsewhere() -> None:
    param = [torch.nn.Parameter(torch.zeros(3))]
    assert isinstance(make_adam(param, 1e-3, (0.9, 0.999), 0.0, torch.device("cpu")), FusedAdam)
    assert isinstance(make_adam(param, 1e-3, (0.9, 0.999), 0.0, torch.device("meta")), torch.optim.Adam)
