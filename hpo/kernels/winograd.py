"""The second convolution by Winograd's minimal filtering, F(4x4, 3x3): a quarter of the multiplies.

The second layer convolves 6 x 6 maps with 3 x 3 kernels into 4 x 4 maps: exactly one tile of
Winograd's F(4x4, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
2016). Transformed to that tile's 36 points, the convolution becomes 36 independent matrix
products per member, images x C_in by C_in x C_out, with 36 multiplies per output channel and
input channel where the direct convolution needs 144. The transforms are linear maps with small
constant matrices, so the backward pass is the same three steps transposed: the weights'
gradient is exact up to float rounding, not an approximation. In float32 the rounding is about
ten times the direct convolution's (relative 5e-6 against 4e-7 on random data; the tests bound
it), far below what training notices.

The transforms (the data's, the kernels' and their adjoints) run in six loops compiled by numba
(one thread, cached on disk, as the first layer's); the products are one `torch.bmm` each way.
The kernels' transform as a loop, not as a 36 x 9 matrix product and two permuting copies, made
the layer 1.14x faster. The transforms stay on one thread while oneDNN's convolution spreads
over all of them, so the dispatch (hpo.kernels.dispatch) takes this path on one or two threads,
where it was measured to pay (docs/performance.md).
"""

from __future__ import annotations

import torch

from hpo.kernels.compile import kernel_inputs
from hpo.kernels.winograd_tiles import (
    _K,
    _Q,
    KERNEL,
    OUT,
    SIZE,
    _input_gradient,
    _input_to_points,
    _output_gradient,
    _points_to_output,
    _weight_gradient,
    _weight_to_points,
)


def input_points(x: torch.Tensor, members: int) -> torch.Tensor:
    """N x M*C_in x 6 x 6 maps (channels-last) -> each tile at the 36 points, 36*M x N x C_in."""
    images, cin = x.shape[0], x.shape[1] // members
    v = torch.empty(SIZE, SIZE, members, images, cin, dtype=x.dtype)
    x_image = x.detach().permute(0, 2, 3, 1).contiguous().view(images, SIZE, SIZE, -1)
    _input_to_points(x_image.numpy(), v.numpy(), _K[v.dtype])
    return v.view(-1, images, cin)


def products(v: torch.Tensor, weight: torch.Tensor, members: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The input's points v (36*M x N x C_in) and the weight (M*C_out x C_in x 3 x 3) -> the
    kernels at the 36 points u (36*M x C_out x C_in) and the products (6 x 6 x M x N x C_out)."""
    cout, cin = weight.shape[0] // members, weight.shape[1]
    u = torch.empty(SIZE, SIZE, members * cout, cin, dtype=v.dtype)
    _weight_to_points(weight.detach().permute(0, 2, 3, 1).contiguous().numpy(), u.numpy(), _Q[u.dtype])
    u = u.view(-1, cout, cin)
    return u, torch.bmm(v, u.transpose(1, 2)).view(SIZE, SIZE, members, v.shape[1], cout)


def products_backward(
    v: torch.Tensor, u: torch.Tensor, g_products: torch.Tensor, points_gradient: bool
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The products' gradient (6 x 6 x M x N x C_out) -> the input points' gradient (if asked
    for; 6 x 6 x M x N x C_in) and the weight's (channels-last, as the weight is stored)."""
    members, images, cout, cin = g_products.shape[2], v.shape[1], u.shape[1], u.shape[2]
    g_products = g_products.view(-1, images, cout)
    g_u = torch.bmm(g_products.transpose(1, 2), v).view(SIZE, SIZE, members * cout, cin)
    g_w = torch.empty(members * cout, KERNEL, KERNEL, cin, dtype=v.dtype)
    _weight_gradient(g_u.numpy(), g_w.numpy(), _Q[g_w.dtype])
    g_v = torch.bmm(g_products, u).view(SIZE, SIZE, members, images, cin) if points_gradient else None
    return g_v, g_w.permute(0, 3, 1, 2)


def input_gradient(g_v: torch.Tensor) -> torch.Tensor:
    """The input points' gradient (6 x 6 x M x N x C_in) -> the maps' (N x M*C_in x 6 x 6, channels-last)."""
    members, images, cin = g_v.shape[2:]
    g_x = torch.empty(images, SIZE, SIZE, members * cin, dtype=g_v.dtype)
    _input_gradient(g_v.numpy(), g_x.numpy(), _K[g_x.dtype])
    return g_x.permute(0, 3, 1, 2)


class _WinogradConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, members: int) -> torch.Tensor:
        v = input_points(x, members)
        u, p = products(v, weight, members)
        y = torch.empty(x.shape[0], OUT, OUT, weight.shape[0], dtype=x.dtype)
        _points_to_output(p.numpy(), y.numpy(), _K[y.dtype])
        y += bias.detach()
        ctx.save_for_backward(v, u)
        return y.permute(0, 3, 1, 2)  # N x M*C_out x 4 x 4, channels-last

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, None]:
        v, u = ctx.saved_tensors
        members, images, cout = v.shape[0] // (SIZE * SIZE), v.shape[1], u.shape[1]
        g = grad.permute(0, 2, 3, 1).contiguous()
        g_products = torch.empty(SIZE, SIZE, members, images, cout, dtype=grad.dtype)
        _output_gradient(g.numpy(), g_products.numpy(), _K[g.dtype])
        g_v, g_weight = products_backward(v, u, g_products, ctx.needs_input_grad[0])
        return None if g_v is None else input_gradient(g_v), g_weight, g.sum((0, 1, 2)), None


def takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `winograd_conv` (and `winograd_conv_pool_relu`) take these inputs: CPU float32 or
    float64, 6 x 6 maps, 3 x 3 kernels, no autocast."""
    return x.dim() == 4 and tuple(x.shape[2:]) == (SIZE, SIZE) and takes_kernels(weight, x)


def takes_kernels(weight: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the transforms take this weight with maps like x (the maps' size is the caller's
    to check): 3 x 3 kernels of x's float type, on the CPU, no autocast."""
    return kernel_inputs(x, weight) and tuple(weight.shape[2:]) == (KERNEL, KERNEL)


def winograd_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, members: int) -> torch.Tensor:
    """conv2d(x, weight, bias, groups=members) for N x M*C_in x 6 x 6 maps and 3 x 3 kernels.

    Returns N x M*C_out x 4 x 4 in channels-last memory, as the grouped convolution does.
    """
    check_members(x.shape[1], weight, members)
    return _WinogradConv.apply(x, weight, bias, members)


def check_members(channels: int, weight: torch.Tensor, members: int) -> None:
    """Refuses a member count that does not split the input's channels and the weight's
    (M*C_out x C_in x 3 x 3) into equal groups, one per member."""
    if channels != members * weight.shape[1] or weight.shape[0] % members:
        raise ValueError(f"{members} members do not divide {channels} input and {weight.shape[0]} output channels")
