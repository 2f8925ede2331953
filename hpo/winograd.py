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
over all of them, so the model takes this path on one or two threads, where it was measured to
pay (`winograd_pays`; docs/performance.md).
"""

from __future__ import annotations

import numpy as np
import torch

from hpo.compiled import jit, kernel_inputs

SIZE, KERNEL, OUT = 6, 3, 4  # 6 x 6 maps, 3 x 3 kernels -> 4 x 4: one tile of F(4x4, 3x3)
MAX_THREADS = 2  # the most torch threads it was measured to pay at

# Interpolation points 0, 1, -1, 2, -2 and infinity, as Lavin and Gray chose them. The kernels
# below write these matrices out; tests/test_winograd.py checks them against these.
_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=np.float64)
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=np.float64)
_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=np.float64)


# The four 1D transforms, written out (k holds 2, 4, 5 and 8 in the data's float type: an int
# literal would turn float32 arithmetic into float64).
def _bt(x0, x1, x2, x3, x4, x5, k):  # type: ignore[no-untyped-def]
    """B^T: 6 values of a tile's row (or column) to the 6 points; the input's transform."""
    k2, k4, k5 = k[0], k[1], k[2]
    return (k4 * x0 - k5 * x2 + x4, x3 + x4 - k4 * (x1 + x2), k4 * (x1 - x2) - x3 + x4,
            k2 * (x3 - x1) - x2 + x4, k2 * (x1 - x3) - x2 + x4, k4 * x1 - k5 * x3 + x5)


def _b(x0, x1, x2, x3, x4, x5, k):  # type: ignore[no-untyped-def]
    """B = (B^T)^T: the input transform's adjoint, for the input's gradient."""
    k2, k4, k5 = k[0], k[1], k[2]
    return (k4 * x0, k4 * (x2 - x1) + k2 * (x4 - x3) + k4 * x5, -k5 * x0 - k4 * (x1 + x2) - x3 - x4,
            x1 - x2 + k2 * (x3 - x4) - k5 * x5, x0 + x1 + x2 + x3 + x4, x5)


def _at(x0, x1, x2, x3, x4, x5, k):  # type: ignore[no-untyped-def]
    """A^T: the 6 points back to 4 outputs; the output's transform."""
    k2, k4, k8 = k[0], k[1], k[3]
    return (x0 + x1 + x2 + x3 + x4, x1 - x2 + k2 * (x3 - x4), x1 + x2 + k4 * (x3 + x4), x1 - x2 + k8 * (x3 - x4) + x5)


def _a(x0, x1, x2, x3, k):  # type: ignore[no-untyped-def]
    """A = (A^T)^T: the output transform's adjoint, for the output's gradient."""
    k2, k4, k8 = k[0], k[1], k[3]
    return (x0, x0 + x1 + x2 + x3, x0 - x1 + x2 - x3, x0 + k2 * x1 + k4 * x2 + k8 * x3, x0 - k2 * x1 + k4 * x2 - k8 * x3, x3)


def _g(x0, x1, x2, q):  # type: ignore[no-untyped-def]
    """G: a kernel's 3 taps along a row (or column) to the 6 points; q holds 1/4, 1/6, 1/12, 1/24."""
    q4, q6, q12, q24 = q[0], q[1], q[2], q[3]
    return (q4 * x0, -q6 * (x0 + x1 + x2), q6 * (x1 - x0 - x2), q24 * x0 + q12 * x1 + q6 * x2, q24 * x0 - q12 * x1 + q6 * x2, x2)


def _gt(x0, x1, x2, x3, x4, x5, q):  # type: ignore[no-untyped-def]
    """G^T: the kernel transform's adjoint, 6 points to 3 taps, for the weights' gradient."""
    q4, q6, q12, q24 = q[0], q[1], q[2], q[3]
    return (q4 * x0 - q6 * (x1 + x2) + q24 * (x3 + x4), q6 * (x2 - x1) + q12 * (x3 - x4), q6 * (x3 + x4 - x1 - x2) + x5)


# The tile loops: rows, then columns, one member's C channels at a time, as loops over the
# channels with at most 6 stores each, few enough for LLVM to vectorise them (past 8 stores
# its runtime alias checks give up and the loop runs scalar: 1.6x slower, measured).
def _input_to_points(x, v, k):  # type: ignore[no-untyped-def]
    """x: N x 6 x 6 x M*C (image-major) -> v: 6 x 6 x M x N x C, v = B^T x B per tile."""
    members, channels = v.shape[2], v.shape[4]
    rows = np.empty((6, 6, channels), x.dtype)
    for n in range(x.shape[0]):
        for m in range(members):
            for j in range(6):
                for c in range(channels):
                    s = m * channels + c
                    (rows[0, j, c], rows[1, j, c], rows[2, j, c], rows[3, j, c], rows[4, j, c], rows[5, j, c]) = _bt(
                        x[n, 0, j, s], x[n, 1, j, s], x[n, 2, j, s], x[n, 3, j, s], x[n, 4, j, s], x[n, 5, j, s], k)
            for i in range(6):
                for c in range(channels):
                    (v[i, 0, m, n, c], v[i, 1, m, n, c], v[i, 2, m, n, c], v[i, 3, m, n, c], v[i, 4, m, n, c], v[i, 5, m, n, c]) = _bt(
                        rows[i, 0, c], rows[i, 1, c], rows[i, 2, c], rows[i, 3, c], rows[i, 4, c], rows[i, 5, c], k)


def _input_gradient(g, x, k):  # type: ignore[no-untyped-def]
    """g: 6 x 6 x M x N x C (the points' gradient) -> x: N x 6 x 6 x M*C, x = B g B^T per tile."""
    members, channels = g.shape[2], g.shape[4]
    rows = np.empty((6, 6, channels), g.dtype)
    for n in range(g.shape[3]):
        for m in range(members):
            for j in range(6):
                for c in range(channels):
                    (rows[0, j, c], rows[1, j, c], rows[2, j, c], rows[3, j, c], rows[4, j, c], rows[5, j, c]) = _b(
                        g[0, j, m, n, c], g[1, j, m, n, c], g[2, j, m, n, c], g[3, j, m, n, c], g[4, j, m, n, c], g[5, j, m, n, c], k)
            for i in range(6):
                for c in range(channels):
                    s = m * channels + c
                    (x[n, i, 0, s], x[n, i, 1, s], x[n, i, 2, s], x[n, i, 3, s], x[n, i, 4, s], x[n, i, 5, s]) = _b(
                        rows[i, 0, c], rows[i, 1, c], rows[i, 2, c], rows[i, 3, c], rows[i, 4, c], rows[i, 5, c], k)


def _points_to_output(p, y, k):  # type: ignore[no-untyped-def]
    """p: 6 x 6 x M x N x C (the products) -> y: N x 4 x 4 x M*C, y = A^T p A per tile."""
    members, channels = p.shape[2], p.shape[4]
    rows = np.empty((4, 6, channels), p.dtype)
    for n in range(p.shape[3]):
        for m in range(members):
            for j in range(6):
                for c in range(channels):
                    rows[0, j, c], rows[1, j, c], rows[2, j, c], rows[3, j, c] = _at(
                        p[0, j, m, n, c], p[1, j, m, n, c], p[2, j, m, n, c], p[3, j, m, n, c], p[4, j, m, n, c], p[5, j, m, n, c], k)
            for i in range(4):
                for c in range(channels):
                    s = m * channels + c
                    y[n, i, 0, s], y[n, i, 1, s], y[n, i, 2, s], y[n, i, 3, s] = _at(
                        rows[i, 0, c], rows[i, 1, c], rows[i, 2, c], rows[i, 3, c], rows[i, 4, c], rows[i, 5, c], k)


def _output_gradient(g, p, k):  # type: ignore[no-untyped-def]
    """g: N x 4 x 4 x M*C (the output's gradient) -> p: 6 x 6 x M x N x C, p = A g A^T per tile."""
    members, channels = p.shape[2], p.shape[4]
    rows = np.empty((6, 4, channels), g.dtype)
    for n in range(g.shape[0]):
        for m in range(members):
            for j in range(4):
                for c in range(channels):
                    s = m * channels + c
                    (rows[0, j, c], rows[1, j, c], rows[2, j, c], rows[3, j, c], rows[4, j, c], rows[5, j, c]) = _a(
                        g[n, 0, j, s], g[n, 1, j, s], g[n, 2, j, s], g[n, 3, j, s], k)
            for i in range(6):
                for c in range(channels):
                    (p[i, 0, m, n, c], p[i, 1, m, n, c], p[i, 2, m, n, c], p[i, 3, m, n, c], p[i, 4, m, n, c], p[i, 5, m, n, c]) = _a(
                        rows[i, 0, c], rows[i, 1, c], rows[i, 2, c], rows[i, 3, c], k)


def _weight_to_points(w, u, q):  # type: ignore[no-untyped-def]
    """w: M*C_out x 3 x 3 x C_in (the weight, channels-last) -> u: 6 x 6 x M*C_out x C_in, u = G w G^T."""
    channels = w.shape[3]
    rows = np.empty((6, 3, channels), w.dtype)
    for r in range(w.shape[0]):
        for j in range(3):
            for c in range(channels):
                rows[0, j, c], rows[1, j, c], rows[2, j, c], rows[3, j, c], rows[4, j, c], rows[5, j, c] = _g(
                    w[r, 0, j, c], w[r, 1, j, c], w[r, 2, j, c], q)
        for i in range(6):
            for c in range(channels):
                u[i, 0, r, c], u[i, 1, r, c], u[i, 2, r, c], u[i, 3, r, c], u[i, 4, r, c], u[i, 5, r, c] = _g(
                    rows[i, 0, c], rows[i, 1, c], rows[i, 2, c], q)


def _weight_gradient(g, w, q):  # type: ignore[no-untyped-def]
    """g: 6 x 6 x M*C_out x C_in (the points' gradient) -> w: M*C_out x 3 x 3 x C_in, w = G^T g G."""
    channels = g.shape[3]
    rows = np.empty((6, 3, channels), g.dtype)
    for r in range(g.shape[2]):
        for i in range(6):
            for c in range(channels):
                rows[i, 0, c], rows[i, 1, c], rows[i, 2, c] = _gt(
                    g[i, 0, r, c], g[i, 1, r, c], g[i, 2, r, c], g[i, 3, r, c], g[i, 4, r, c], g[i, 5, r, c], q)
        for j in range(3):
            for c in range(channels):
                w[r, 0, j, c], w[r, 1, j, c], w[r, 2, j, c] = _gt(
                    rows[0, j, c], rows[1, j, c], rows[2, j, c], rows[3, j, c], rows[4, j, c], rows[5, j, c], q)


_bt, _b, _at, _a, _g, _gt = jit(_bt), jit(_b), jit(_at), jit(_a), jit(_g), jit(_gt)
_input_to_points, _input_gradient = jit(_input_to_points), jit(_input_gradient)
_points_to_output, _output_gradient = jit(_points_to_output), jit(_output_gradient)
_weight_to_points, _weight_gradient = jit(_weight_to_points), jit(_weight_gradient)


# Per float type, the loops' constants: k for the data's transforms, q for the kernel's.
_K = {torch.float32: np.array([2, 4, 5, 8], np.float32), torch.float64: np.array([2, 4, 5, 8], np.float64)}
_Q = {dtype: np.array([1 / 4, 1 / 6, 1 / 12, 1 / 24], k.dtype) for dtype, k in _K.items()}


# What winograd_pool.py's and stem.py's loops build on: the transforms and their constants.
input_transform, input_adjoint, output_transform, output_adjoint, data_constants = _bt, _b, _at, _a, _K


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


def products_backward(v: torch.Tensor, u: torch.Tensor, g_products: torch.Tensor, points_gradient: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
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
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, members: int) -> torch.Tensor:  # type: ignore[override]
        v = input_points(x, members)
        u, p = products(v, weight, members)
        y = torch.empty(x.shape[0], OUT, OUT, weight.shape[0], dtype=x.dtype)
        _points_to_output(p.numpy(), y.numpy(), _K[y.dtype])
        y += bias.detach()
        ctx.save_for_backward(v, u)
        return y.permute(0, 3, 1, 2)  # N x M*C_out x 4 x 4, channels-last

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, None]:  # type: ignore[override]
        v, u = ctx.saved_tensors
        members, images, cout = v.shape[0] // (SIZE * SIZE), v.shape[1], u.shape[1]
        g = grad.permute(0, 2, 3, 1).contiguous()
        g_products = torch.empty(SIZE, SIZE, members, images, cout, dtype=grad.dtype)
        _output_gradient(g.numpy(), g_products.numpy(), _K[g.dtype])
        g_v, g_weight = products_backward(v, u, g_products, ctx.needs_input_grad[0])
        return None if g_v is None else input_gradient(g_v), g_weight, g.sum((0, 1, 2)), None


def kernels_fit(weight: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the transforms take this weight with maps like x: CPU float32 or float64, 3 x 3
    kernels, no autocast (the maps' size is the caller's to check)."""
    return kernel_inputs(x, weight) and not torch.is_autocast_enabled("cpu") and tuple(weight.shape[2:]) == (KERNEL, KERNEL)


def winograd_fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `winograd_conv` can run: CPU float32 or float64, 6 x 6 maps, 3 x 3 kernels, no autocast."""
    return x.dim() == 4 and tuple(x.shape[2:]) == (SIZE, SIZE) and kernels_fit(weight, x)


def threads_pay() -> bool:
    """Whether torch runs on few enough threads for Winograd to pay: one or two (hpo's default
    is one worker per core, one thread each). There the reference trial trained 1.44x (one
    thread) and 1.20x (two) faster than with oneDNN's convolution; on more threads oneDNN's
    convolution spreads over all of them while the transforms stay on one, and it was not
    measured (docs/performance.md)."""
    return torch.get_num_threads() <= MAX_THREADS


def winograd_pays(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether to take `winograd_conv`: where it fits and `threads_pay`."""
    return threads_pay() and winograd_fits(x, weight)


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
