"""The first layer's batch statistics from its input: each member's 3x3 patches' mean and covariance,
and from them batch norm of the layer's (never built) output as a scale and shift per channel.

Batch norm after the fused first layer (first_layer.py) needs each channel's mean and variance
over the never-built 12 x 12 convolution output. A channel is w . patch + b, so its mean is
w . mean(patch) + b and its variance w' cov(patch) w: nine means and a 9 x 9 covariance per
member, shared by all its channels.

Built from the patches (`F.unfold`, a transposing copy, a centring pass, a product over all
patches) they took about 1 to 2 ms of a 13 ms training step of the default study's common trial
(5 members x 50 images). Here one batched product gives every pair of pixels' product summed
over a member's images (its 196 x 196 Gram matrix), and each pair of taps' sum is 144 of those
entries, gathered: a third of the time, with no 9 x 144 patch copy of every image, and closer
to float64 (the images are centred on their mean pixel first, which leaves the covariance
unchanged and the Gram matrix's cancellation small).
"""

from __future__ import annotations

import torch
from torch import nn

SIZE, KERNEL = 14, 3
OUT = SIZE - KERNEL + 1  # 12 x 12 positions
TAPS = KERNEL * KERNEL


def _pixel_of_tap() -> torch.Tensor:
    """9 x 144: the flat pixel index (of 14 x 14) under tap k at each position, row-major."""
    taps = torch.tensor([(k // KERNEL, k % KERNEL) for k in range(TAPS)])
    positions = torch.tensor([(i, j) for i in range(OUT) for j in range(OUT)])
    return (taps[:, None, 0] + positions[None, :, 0]) * SIZE + taps[:, None, 1] + positions[None, :, 1]


_TAP_PIXELS = _pixel_of_tap()
_UPPER = [(k, q) for k in range(TAPS) for q in range(k, TAPS)]  # the 45 distinct pairs of taps
# 45 * 144 entries of the flattened Gram matrix: pair (k, q) at each position.
_PAIR_ENTRIES = torch.stack([_TAP_PIXELS[k] * SIZE * SIZE + _TAP_PIXELS[q] for k, q in _UPPER]).reshape(-1)
_ROWS, _COLS = torch.tensor([k for k, _ in _UPPER]), torch.tensor([q for _, q in _UPPER])


def patch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """M x N x 14 x 14 images -> each member's patch mean (M x 9 x 1) and covariance (M x 9 x 9)
    over its N images' 12 x 12 positions: the biased covariance, as batch norm's variance is.
    Taps in row-major order, as a 3 x 3 convolution's weight flattens."""
    members, images = x.shape[:2]
    pixels = x.detach().reshape(members, images, SIZE * SIZE)
    centre = pixels.mean((1, 2), keepdim=True)
    pixels = pixels - centre
    gram = torch.bmm(pixels.transpose(1, 2), pixels).reshape(members, -1)
    count = images * OUT * OUT
    entries = _PAIR_ENTRIES.to(x.device)
    upper = gram.index_select(1, entries).view(members, len(_UPPER), OUT * OUT).sum(-1) / count
    mean = pixels.sum(1).index_select(1, _TAP_PIXELS.to(x.device).reshape(-1)).view(members, TAPS, -1).sum(-1) / count
    second = torch.empty(members, TAPS, TAPS, dtype=x.dtype, device=x.device)
    rows, cols = _ROWS.to(x.device), _COLS.to(x.device)
    second[:, rows, cols] = upper
    second[:, cols, rows] = upper
    cov = second - mean[:, :, None] * mean[:, None, :]
    return (mean + centre.view(members, 1))[:, :, None], cov


def batch_norm_affine(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, norm: nn.BatchNorm2d
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch norm of the (never built) convolution output as scale * value + shift per channel.

    In training the batch's statistics follow from the images' 3 x 3 patches: a channel's mean
    is w . mean(patch) + b and its variance w' cov(patch) w, each member from its own images;
    the running statistics are updated as nn.BatchNorm2d updates them.
    """
    members, images = x.shape[:2]
    if norm.training:
        mean_patch, cov = patch_moments(x)  # M x 9 x 1, M x 9 x 9
        count = images * OUT * OUT  # the positions the moments averaged over
        w = weight.view(members, -1, KERNEL * KERNEL)  # M x C x 9
        mean = ((w @ mean_patch).squeeze(-1)).reshape(-1) + bias
        var = torch.einsum("mck,mkl,mcl->mc", w, cov, w).reshape(-1)
        with torch.no_grad():
            norm.num_batches_tracked.add_(1)
            momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
            norm.running_mean.mul_(1 - momentum).add_(momentum * mean)
            norm.running_var.mul_(1 - momentum).add_(momentum * var * count / (count - 1))
    else:
        mean, var = norm.running_mean, norm.running_var
    scale = norm.weight / torch.sqrt(var + norm.eps)
    return scale, norm.bias - scale * mean
