"""The second convolution by Winograd, its bias, 2 x 2 max-pooling and ReLU in one pass.

Without batch norm the model pools the second convolution's 4 x 4 maps to 2 x 2, rectifies them
and reorders them into each member's features for the first dense layer. Through PyTorch that
is five operators forward and as many backward, each a pass over the maps (max-pooling's
backward also zero-fills a 4 x 4 gradient to scatter into). Here the output transform adds the
bias, keeps each window's largest value and where it was, rectifies, and writes the features in
the dense layer's order; the backward pass routes each feature's gradient back to that position
as it transforms the gradient to the tile's points. The result is PyTorch's composition exactly,
ties and NaNs included: the first of equal values wins, and a NaN wins as max_pool2d's does.
"""

from __future__ import annotations

import numpy as np
import torch

from hpo.kernels.compile import jit
from hpo.kernels.winograd import (
    check_members,
    input_gradient,
    input_points,
    products,
    products_backward,
    takes,
)
from hpo.kernels.winograd_tiles import OUT, SIZE, data_constants, output_adjoint, output_transform

__all__ = ["takes", "winograd_conv_pool_relu"]


def _window(y0, y1, y2, y3, zero):
    """The largest of a 2 x 2 window in row-major order, rectified, and its place (-1 where
    ReLU passes no gradient): max_pool2d's choice (the first of ties, a NaN over all), then
    relu's (a NaN passes, with its gradient)."""
    best, where = y0, 0
    take = (y1 > best) | (y1 != y1)
    best, where = (y1 if take else best), (1 if take else where)
    take = (y2 > best) | (y2 != y2)
    best, where = (y2 if take else best), (2 if take else where)
    take = (y3 > best) | (y3 != y3)
    best, where = (y3 if take else best), (3 if take else where)
    dead = best <= 0
    return (zero if dead else best), (-1 if dead else where)


def _points_to_features(p, bias, h, where, k):
    """p: 6 x 6 x M x N x C (the products) -> h: M x N x 2 x 2 x C, relu(max_pool(A^T p A + bias)),
    and where each pooled value came from (0 to 3, or -1)."""
    members, channels = p.shape[2], p.shape[4]
    rows = np.empty((4, 6, channels), p.dtype)
    zero = k[0] - k[0]
    for n in range(p.shape[3]):
        for m in range(members):
            for j in range(6):
                for c in range(channels):
                    rows[0, j, c], rows[1, j, c], rows[2, j, c], rows[3, j, c] = output_transform(
                        p[0, j, m, n, c],
                        p[1, j, m, n, c],
                        p[2, j, m, n, c],
                        p[3, j, m, n, c],
                        p[4, j, m, n, c],
                        p[5, j, m, n, c],
                        k,
                    )
            for r in range(2):  # pooled row r from output rows 2r and 2r + 1; one loop per window
                for s in range(2):  # (two stores a loop: with four, LLVM leaves the loop scalar, 5x slower)
                    for c in range(channels):
                        b = bias[m * channels + c]
                        a0, a1, a2, a3 = output_transform(
                            rows[2 * r, 0, c],
                            rows[2 * r, 1, c],
                            rows[2 * r, 2, c],
                            rows[2 * r, 3, c],
                            rows[2 * r, 4, c],
                            rows[2 * r, 5, c],
                            k,
                        )
                        b0, b1, b2, b3 = output_transform(
                            rows[2 * r + 1, 0, c],
                            rows[2 * r + 1, 1, c],
                            rows[2 * r + 1, 2, c],
                            rows[2 * r + 1, 3, c],
                            rows[2 * r + 1, 4, c],
                            rows[2 * r + 1, 5, c],
                            k,
                        )
                        if s == 0:
                            h[m, n, r, s, c], where[m, n, r, s, c] = _window(a0 + b, a1 + b, b0 + b, b1 + b, zero)
                        else:
                            h[m, n, r, s, c], where[m, n, r, s, c] = _window(a2 + b, a3 + b, b2 + b, b3 + b, zero)


def _features_gradient(g, where, p, bias_gradient, k):
    """g: M x N x 2 x 2 x C (the features' gradient) -> p: 6 x 6 x M x N x C, p = A d A^T per
    tile, where d is g routed to each window's chosen place; and the bias's gradient, M*C."""
    members, channels = p.shape[2], p.shape[4]
    zero = k[0] - k[0]
    rows = np.empty((6, 4, channels), g.dtype)
    for m in range(members):
        for n in range(g.shape[1]):
            for j in range(4):  # the 4 x 4 gradient's column j: windows (0, j // 2) and (1, j // 2)
                for c in range(channels):
                    top, low = where[m, n, 0, j // 2, c], where[m, n, 1, j // 2, c]
                    d0 = g[m, n, 0, j // 2, c] if top == j % 2 else zero
                    d1 = g[m, n, 0, j // 2, c] if top == 2 + j % 2 else zero
                    d2 = g[m, n, 1, j // 2, c] if low == j % 2 else zero
                    d3 = g[m, n, 1, j // 2, c] if low == 2 + j % 2 else zero
                    rows[0, j, c], rows[1, j, c], rows[2, j, c], rows[3, j, c], rows[4, j, c], rows[5, j, c] = (
                        output_adjoint(d0, d1, d2, d3, k)
                    )
            for i in range(6):
                for c in range(channels):
                    (
                        p[i, 0, m, n, c],
                        p[i, 1, m, n, c],
                        p[i, 2, m, n, c],
                        p[i, 3, m, n, c],
                        p[i, 4, m, n, c],
                        p[i, 5, m, n, c],
                    ) = output_adjoint(rows[i, 0, c], rows[i, 1, c], rows[i, 2, c], rows[i, 3, c], k)
            for r in range(2):
                for s in range(2):
                    for c in range(channels):
                        if where[m, n, r, s, c] >= 0:
                            bias_gradient[m * channels + c] += g[m, n, r, s, c]


_window = jit(_window)
_points_to_features, _features_gradient = jit(_points_to_features), jit(_features_gradient)


def pooled_features(p: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The products (6 x 6 x M x N x C_out) -> the features (M x N x 2 x 2 x C_out) and where
    each came from (int8: 0 to 3, or -1 where ReLU passes no gradient)."""
    members, images, cout = p.shape[2:]
    h = torch.empty(members, images, OUT // 2, OUT // 2, cout, dtype=p.dtype)
    where = torch.empty(h.shape, dtype=torch.int8)
    _points_to_features(
        p.numpy(), bias.detach().contiguous().numpy(), h.numpy(), where.numpy(), data_constants[h.dtype]
    )
    return h, where


def features_backward(grad: torch.Tensor, where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The features' gradient (M x N x 4*C_out) -> the products' (6 x 6 x M x N x C_out) and the bias's."""
    members, images, cout = where.shape[0], where.shape[1], where.shape[4]
    g = grad.contiguous().view(where.shape)
    g_products = torch.empty(SIZE, SIZE, members, images, cout, dtype=grad.dtype)
    g_bias = torch.zeros(members * cout, dtype=grad.dtype)
    _features_gradient(g.numpy(), where.numpy(), g_products.numpy(), g_bias.numpy(), data_constants[g.dtype])
    return g_products, g_bias


class _WinogradConvPoolRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, members: int) -> torch.Tensor:
        v = input_points(x, members)
        u, p = products(v, weight, members)
        h, where = pooled_features(p, bias)
        ctx.save_for_backward(v, u, where)
        return h.view(members, x.shape[0], -1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, None]:
        v, u, where = ctx.saved_tensors
        g_products, g_bias = features_backward(grad, where)
        g_v, g_weight = products_backward(v, u, g_products, ctx.needs_input_grad[0])
        return None if g_v is None else input_gradient(g_v), g_weight, g_bias, None


def winograd_conv_pool_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, members: int) -> torch.Tensor:
    """relu(max_pool2d(conv2d(x, weight, bias, groups=members), 2)) for N x M*C_in x 6 x 6 maps
    and 3 x 3 kernels, as each member's features: M x N x (2*2*C_out), in (row, column,
    channel) order. It takes what `winograd_conv` takes (`takes`)."""
    check_members(x.shape[1], weight, members)
    return _WinogradConvPoolRelu.apply(x, weight, bias, members)
