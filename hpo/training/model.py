"""TwinNet: a twin CNN that reads two digits and says whether the first is <= the second.

One TwinNet holds K independent *members* (one per CV fold or evaluation round) in grouped
layers, so K models train as one batched computation. Member m of a K-member net computes
exactly what a 1-member net with member m's initialisation computes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hpo.kernels import first_layer as first_layer_kernel
from hpo.kernels import stem as stem_kernel
from hpo.kernels import winograd as winograd_kernel
from hpo.kernels.dispatch import Kernels, choose
from hpo.kernels.first_layer import first_layer
from hpo.kernels.stem import stem
from hpo.kernels.winograd import winograd_conv
from hpo.kernels.winograd_pool import winograd_conv_pool_relu
from hpo.spec.registry import TwinConfig

__all__ = ["Kernels", "TwinConfig", "TwinNet", "compare_digits"]


class MemberConv2d(nn.Module):
    """K independent convolutions as one grouped convolution on N x (K*C) x H x W."""

    def __init__(self, members: int, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.members, self.cout, self.fan_in = members, cout, cin * kernel * kernel
        self.conv = nn.Conv2d(members * cin, members * cout, kernel, groups=members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def init_(self, gens: Sequence[torch.Generator]) -> None:
        weight = torch.empty_like(self.conv.weight, memory_format=torch.contiguous_format)
        for m, gen in enumerate(gens):
            rows = slice(m * self.cout, (m + 1) * self.cout)
            _uniform_fan_in(weight[rows], self.fan_in, gen)
            _uniform_fan_in(self.conv.bias[rows], self.fan_in, gen)
        # Stored channels-last like the activations: oneDNN otherwise reorders the weight
        # in every forward and backward pass (2 % of a step).
        self.conv.weight.data = weight.contiguous(memory_format=torch.channels_last)


class MemberLinear(nn.Module):
    """K independent linear layers as one batched matmul on K x N x F."""

    def __init__(self, members: int, fin: int, fout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, fin, fout))
        self.bias = nn.Parameter(torch.empty(members, 1, fout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    def init_(self, gens: Sequence[torch.Generator]) -> None:
        fan_in = self.weight.shape[1]
        for m, gen in enumerate(gens):
            _uniform_fan_in(self.weight[m], fan_in, gen)
            _uniform_fan_in(self.bias[m], fan_in, gen)


class MemberBatchNorm1d(nn.BatchNorm1d):
    """Batch norm over N for each member's features of a K x N x F tensor."""

    def __init__(self, members: int, features: int) -> None:
        super().__init__(members * features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, n, f = x.shape
        flat = x.transpose(0, 1).reshape(n, k * f)
        return super().forward(flat).view(n, k, f).transpose(0, 1)


def _uniform_fan_in(t: torch.Tensor, fan_in: int, gen: torch.Generator) -> None:
    """PyTorch's default Linear/Conv init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from `gen`."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        t.uniform_(-bound, bound, generator=gen)


def compare_digits(digits: torch.Tensor) -> torch.Tensor:
    """The parameter-free head: P(first <= second) = sum over j of p2(j) * P(first <= j).

    Given calibrated digit probabilities this is the Bayes answer, so the network only has to
    learn digits. Returned as two-class log-probabilities, so cross-entropy applies unchanged.
    Row by row (a cumulative sum, a product, a sum over the ten digits), so a member's answer
    and gradient do not depend on how many members share the call; an einsum's matrix
    products did, in their last bits.
    """
    p = digits.softmax(-1)
    prob = (p[:, :, 0].cumsum(-1) * p[:, :, 1]).sum(-1).clamp(1e-7, 1 - 1e-7)
    return torch.stack([torch.log1p(-prob), torch.log(prob)], dim=-1)


def dropout(x: torch.Tensor, p: float, training: bool, gens: Sequence[torch.Generator] | None) -> torch.Tensor:
    """Inverted dropout on M x ... members, member m's mask drawn from gens[m] alone.

    Each member's own stream makes a member's masks the same whether it trains alone, beside
    others, or in a group of its own on another thread (hpo.training.groups). The mask is a
    uniform draw compared with p: `bernoulli_` with a generator draws element by element and
    cost 2 % of a training step; `rand` is vectorised. No generators: torch's global stream.
    """
    if not training or p == 0.0:
        return x
    if gens is None:
        draw = torch.rand(x.shape, device=x.device)
    else:
        if len(gens) != x.shape[0]:
            raise ValueError(f"need one dropout generator per member: {x.shape[0]} members, {len(gens)} generators")
        draw = torch.stack([torch.rand(x.shape[1:], generator=g, device=x.device) for g in gens])
    return x * ((draw >= p).to(x.dtype) / (1.0 - p))


class Encoder(nn.Module):
    """M member encoders: M x N x 1 x 14 x 14 images -> M x N x 10 digit logits.

    `kernels` says which kernel runs each of the first two layers; a kernel whose inputs it does
    not take (say, images that need a gradient) gives way to PyTorch's operators.
    """

    def __init__(self, members: int, cfg: TwinConfig, kernels: Kernels) -> None:
        super().__init__()
        c1, c2, bn = cfg.conv1_channels, cfg.conv2_channels, cfg.batch_norm
        self.members, self.p, self.plain = members, cfg.dropout, not bn  # plain: no batch norm
        self.kernels = kernels
        self.conv1 = MemberConv2d(members, 1, c1, 3)  # 14 -> 12, pooled to 6
        self.bn1 = nn.BatchNorm2d(members * c1) if bn else nn.Identity()
        self.conv2 = MemberConv2d(members, c1, c2, 3)  # 6 -> 4, pooled to 2
        self.bn2 = nn.BatchNorm2d(members * c2) if bn else nn.Identity()
        self.fc1 = MemberLinear(members, c2 * 2 * 2, cfg.hidden)
        self.bn3 = MemberBatchNorm1d(members, cfg.hidden) if bn else nn.Identity()
        self.fc2 = MemberLinear(members, cfg.hidden, 10)

    def forward(self, x: torch.Tensor, gens: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        # Channels-last (N x H x W x M*C in memory) is what oneDNN's grouped convolutions and
        # pooling run fastest on; max-pooling before ReLU is exact (ReLU is monotonic) and
        # leaves ReLU a quarter of the work.
        m, n = x.shape[:2]
        images = x.reshape(m, n, 14, 14)
        conv1, conv2 = self.conv1.conv, self.conv2.conv
        if self.kernels.stem and stem_kernel.takes(images, conv1.weight, conv2.weight):  # both layers in one pass
            h = stem(images, conv1.weight, conv1.bias, conv2.weight, conv2.bias, self.members)
        else:
            h = self._second(self._first(images), n)
        h = F.relu(self.bn3(self.fc1(h)))
        return self.fc2(dropout(h, self.p, self.training, gens))

    def _first(self, images: torch.Tensor) -> torch.Tensor:
        """M x N x 14 x 14 images -> N x M*C1 x 6 x 6 maps (channels-last)."""
        if self.kernels.first == "fused" and first_layer_kernel.takes(images, self.conv1.conv.weight):
            norm = None if self.plain else self.bn1
            return first_layer(images, self.conv1.conv.weight, self.conv1.conv.bias, norm)
        h = images.permute(1, 2, 3, 0).contiguous().permute(0, 3, 1, 2)
        return F.relu(F.max_pool2d(self.bn1(self.conv1(h)), 2))

    def _second(self, h: torch.Tensor, n: int) -> torch.Tensor:
        """N x M*C1 x 6 x 6 maps -> M x N x (2*2*C2): each member's features, (h, w, c) order."""
        conv2, m = self.conv2.conv, self.members
        winograd = self.kernels.second != "torch" and winograd_kernel.takes(h, conv2.weight)
        if winograd and self.kernels.second == "winograd_pool":  # pooled and rectified in the same pass
            return winograd_conv_pool_relu(h, conv2.weight, conv2.bias, m)
        h = winograd_conv(h, conv2.weight, conv2.bias, m) if winograd else self.conv2(h)
        h = F.relu(F.max_pool2d(self.bn2(h), 2))
        # N x M*C2 x 2 x 2 (channels-last) -> M x N x (2*2*C2)
        return h.permute(0, 2, 3, 1).reshape(n, 4, m, -1).permute(2, 0, 1, 3).reshape(m, n, -1)

    def init_(self, gens: Sequence[torch.Generator]) -> None:
        for layer in (self.conv1, self.conv2, self.fc1, self.fc2):
            layer.init_(gens)


class TwinNet(nn.Module):
    """K members: K x N x 2 x 14 x 14 pairs -> (K x N x 2 answer logits, K x N x 2 x 10 digit logits).

    `kernels`: which kernels run the first two layers (hpo.kernels.dispatch); by default the
    dispatch's choice for the CPU at torch's current thread count, made once, here.
    """

    def __init__(self, cfg: TwinConfig, members: int = 1, kernels: Kernels | None = None) -> None:
        super().__init__()
        kernels = choose(cfg.batch_norm) if kernels is None else kernels
        if not kernels.fits(cfg.batch_norm):
            raise ValueError(f"kernels '{kernels.name}' pool right after the convolution: no room for batch norm")
        self.cfg, self.members, self.kernels = cfg, members, kernels
        # Without sharing, each member's two encoders are two members of one grouped encoder.
        self.encoder = Encoder(members if cfg.weight_sharing else 2 * members, cfg, kernels)
        self.heads = nn.ModuleList(
            [MemberLinear(members, 20, cfg.head_hidden), MemberLinear(members, cfg.head_hidden, 2)]
            if cfg.head == "mlp"
            else []
        )

    def forward(
        self, x: torch.Tensor, gens: Sequence[torch.Generator] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`gens`: one dropout generator per member (None: torch's global stream)."""
        k, n = x.shape[:2]
        if self.cfg.weight_sharing:
            digits = self.encoder(x.reshape(k, 2 * n, 1, 14, 14), gens).view(k, n, 2, 10)
        else:  # member m's two encoders draw their masks one after the other from gens[m]
            per_image = x.transpose(1, 2).reshape(2 * k, n, 1, 14, 14)
            pairs = None if gens is None else [g for g in gens for _ in (0, 1)]
            digits = self.encoder(per_image, pairs).view(k, 2, n, 10).transpose(1, 2)
        if self.cfg.head == "compare":
            return compare_digits(digits), digits
        head_in = digits.softmax(-1) if self.cfg.head_input == "softmax" else digits
        hidden, out = self.heads
        return out(F.relu(hidden(head_in.reshape(k, n, 20)))), digits

    def init_(self, gens: Sequence[torch.Generator]) -> TwinNet:
        """Initialise member m from gens[m] alone, in an order that does not depend on K."""
        if len(gens) != self.members:
            raise ValueError(f"need {self.members} generators, got {len(gens)}")
        self.encoder.init_(gens if self.cfg.weight_sharing else [g for g in gens for _ in (0, 1)])
        for layer in self.heads:
            layer.init_(gens)
        return self

    def parameters_per_member(self) -> int:
        return sum(p.numel() for p in self.parameters()) // self.members
