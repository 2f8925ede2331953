"""Winograd's F(4x4, 3x3) tile transforms as numba loops: the data's, the kernels' and their adjoints.

hpo.kernels.winograd runs the convolution around them (one `torch.bmm` each way); winograd_pool
and stem build their fused passes from the same transforms and constants.
"""

from __future__ import annotations

import numpy as np
import torch

from hpo.kernels.compile import jit

SIZE, KERNEL, OUT = 6, 3, 4  # 6 x 6 maps, 3 x 3 kernels -> 4 x 4: one tile of F(4x4, 3x3)

# Interpolation points 0, 1, -1, 2, -2 and infinity, as Lavin and Gray chose them. The kernels
# below write these matrices out; tests/test_winograd.py checks them against these.
_BT = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=np.float64,
)
_G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=np.float64,
)
_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=np.float64)


# The four 1D transforms, written out (k holds 2, 4, 5 and 8 in the data's float type: an int
# literal would turn float32 arithmetic into float64).
def _bt(x0, x1, x2, x3, x4, x5, k):
    """B^T: 6 values of a tile's row (or column) to the 6 points; the input's transform."""
    k2, k4, k5 = k[0], k[1], k[2]
    return (
        k4 * x0 - k5 * x2 + x4,
        x3 + x4 - k4 * (x1 + x2),
        k4 * (x1 - x2) - x3 + x4,
        k2 * (x3 - x1) - x2 + x4,
        k2 * (x1 - x3) - x2 + x4,
        k4 * x1 - k5 * x3 + x5,
    )


def _b(x0, x1, x2, x3, x4, x5, k):
    """B = (B^T)^T: the input transform's adjoint, for the input's gradient."""
    k2, k4, k5 = k[0], k[1], k[2]
    return (
        k4 * x0,
        k4 * (x2 - x1) + k2 * (x4 - x3) + k4 * x5,
        -k5 * x0 - k4 * (x1 + x2) - x3 - x4,
        x1 - x2 + k2 * (x3 - x4) - k5 * x5,
        x0 + x1 + x2 + x3 + x4,
        x5,
    )


def _at(x0, x1, x2, x3, x4, x5, k):
    """A^T: the 6 points back to 4 outputs; the output's transform."""
    k2, k4, k8 = k[0], k[1], k[3]
    return (x0 + x1 + x2 + x3 + x4, x1 - x2 + k2 * (x3 - x4), x1 + x2 + k4 * (x3 + x4), x1 - x2 + k8 * (x3 - x4) + x5)


def _a(x0, x1, x2, x3, k):
    """A = (A^T)^T: the output transform's adjoint, for the output's gradient."""
    k2, k4, k8 = k[0], k[1], k[3]
    return (
        x0,
        x0 + x1 + x2 + x3,
        x0 - x1 + x2 - x3,
        x0 + k2 * x1 + k4 * x2 + k8 * x3,
        x0 - k2 * x1 + k4 * x2 - k8 * x3,
        x3,
    )


def _g(x0, x1, x2, q):
    """G: a kernel's 3 taps along a row (or column) to the 6 points; q holds 1/4, 1/6, 1/12, 1/24."""
    q4, q6, q12, q24 = q[0], q[1], q[2], q[3]
    return (
        q4 * x0,
        -q6 * (x0 + x1 + x2),
        q6 * (x1 - x0 - x2),
        q24 * x0 + q12 * x1 + q6 * x2,
        q24 * x0 - q12 * x1 + q6 * x2,
        x2,
    )


def _gt(x0, x1, x2, x3, x4, x5, q):
    """G^T: the kernel transform's adjoint, 6 points to 3 taps, for the weights' gradient."""
    q4, q6, q12, q24 = q[0], q[1], q[2], q[3]
    return (q4 * x0 - q6 * (x1 + x2) + q24 * (x3 + x4), q6 * (x2 - x1) + q12 * (x3 - x4), q6 * (x3 + x4 - x1 - x2) + x5)


# The tile loops: rows, then columns, one member's C channels at a time, as loops over the
# channels with at most 6 stores each, few enough for LLVM to vectorise them (past 8 stores
# its runtime alias checks give up and the loop runs scalar: 1.6x slower, measured).
def _input_to_points(x, v, k):
    """x: N x 6 x 6 x M*C (image-major) -> v: 6 x 6 x M x N x C, v = B^T x B per tile."""
    members, channels = v.shape[2], v.shape[4]
    rows = np.empty((6, 6, channels), x.dtype)
    for n in range(x.shape[0]):
        for m in range(members):
            for j in range(6):
                for c in range(channels):
                    s = m * channels + c
                    (rows[0, j, c], rows[1, j, c], rows[2, j, c], rows[3, j, c], rows[4, j, c], rows[5, j, c]) = _bt(
                        x[n, 0, j, s], x[n, 1, j, s], x[n, 2, j, s], x[n, 3, j, s], x[n, 4, j, s], x[n, 5, j, s], k
                    )
            for i in range(6):
                for c in range(channels):
                    (
                        v[i, 0, m, n, c],
                        v[i, 1, m, n, c],
                        v[i, 2, m, n, c],
                        v[i, 3, m, n, c],
                        v[i, 4, m, n, c],
                        v[i, 5, m, n, c],
                    ) = _bt(rows[i, 0, c], rows[i, 1, c], rows[i, 2, c], rows[i, 3, c], rows[i, 4, c], rows[i, 5, c], k)


def _input_gradient(g, x, k):
    """g: 6 x 6 x M x N x C (the points' gradient) -> x: N x 6 x 6 x M*C, x = B g B^T per tile."""
    members, channels = g.shape[2], g.shape[4]
    rows = np.empty((6, 6, channels), g.dtype)
    for n in range(g.shape[3]):
        for m in range(members):
            for j in range(6):
                for c in range(channels):
                    (rows[0, j, c], rows[1, j, c], rows[2, j, c], rows[3, j, c], rows[4, j, c], rows[5, j, c]) = _b(
                        g[0, j, m, n, c],
                        g[1, j, m, n, c],
                        g[2, j, m, n, c],
                        g[3, j, m, n, c],
                        g[4, j, m, n, c],
                        g[5, j, m, n, c],
                        k,
                    )
            for i in range(6):
                for c in range(channels):
                    s = m * channels + c
                    (x[n, i, 0, s], x[n, i, 1, s], x[n, i, 2, s], x[n, i, 3, s], x[n, i, 4, s], x[n, i, 5, s]) = _b(
                        rows[i, 0, c], rows[i, 1, c], rows[i, 2, c], rows[i, 3, c], rows[i, 4, c], rows[i, 5, c], k
                    )


def _points_to_output(p, y, k):
    """p: 6 x 6 x M x N x C (the products) -> y: N x 4 x 4 x M*C, y = A^T p A per tile."""
    members, channels = p.shape[2], p.shape[4]
    rows = np.empty((4, 6, channels), p.dtype)
    for n in range(p.shape[3]):
        for m in range(members):
            for j in range(6):
                for c in range(channels):
                    rows[0, j, c], rows[1, j, c], rows[2, j, c], rows[3, j, c] = _at(
                        p[0, j, m, n, c],
                        p[1, j, m, n, c],
                        p[2, j, m, n, c],
                        p[3, j, m, n, c],
                        p[4, j, m, n, c],
                        p[5, j, m, n, c],
                        k,
                    )
            for i in range(4):
                for c in range(channels):
                    s = m * channels + c
                    y[n, i, 0, s], y[n, i, 1, s], y[n, i, 2, s], y[n, i, 3, s] = _at(
                        rows[i, 0, c], rows[i, 1, c], rows[i, 2, c], rows[i, 3, c], rows[i, 4, c], rows[i, 5, c], k
                    )


def _output_gradient(g, p, k):
    """g: N x 4 x 4 x M*C (the output's gradient) -> p: 6 x 6 x M x N x C, p = A g A^T per tile."""
    members, channels = p.shape[2], p.shape[4]
    rows = np.empty((6, 4, channels), g.dtype)
    for n in range(g.shape[0]):
        for m in range(members):
            for j in range(4):
                for c in range(channels):
                    s = m * channels + c
                    (rows[0, j, c], rows[1, j, c], rows[2, j, c], rows[3, j, c], rows[4, j, c], rows[5, j, c]) = _a(
                        g[n, 0, j, s], g[n, 1, j, s], g[n, 2, j, s], g[n, 3, j, s], k
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
                    ) = _a(rows[i, 0, c], rows[i, 1, c], rows[i, 2, c], rows[i, 3, c], k)


def _weight_to_points(w, u, q):
    """w: M*C_out x 3 x 3 x C_in (the weight, channels-last) -> u: 6 x 6 x M*C_out x C_in, u = G w G^T."""
    channels = w.shape[3]
    rows = np.empty((6, 3, channels), w.dtype)
    for r in range(w.shape[0]):
        for j in range(3):
            for c in range(channels):
                rows[0, j, c], rows[1, j, c], rows[2, j, c], rows[3, j, c], rows[4, j, c], rows[5, j, c] = _g(
                    w[r, 0, j, c], w[r, 1, j, c], w[r, 2, j, c], q
                )
        for i in range(6):
            for c in range(channels):
                u[i, 0, r, c], u[i, 1, r, c], u[i, 2, r, c], u[i, 3, r, c], u[i, 4, r, c], u[i, 5, r, c] = _g(
                    rows[i, 0, c], rows[i, 1, c], rows[i, 2, c], q
                )


def _weight_gradient(g, w, q):
    """g: 6 x 6 x M*C_out x C_in (the points' gradient) -> w: M*C_out x 3 x 3 x C_in, w = G^T g G."""
    channels = g.shape[3]
    rows = np.empty((6, 3, channels), g.dtype)
    for r in range(g.shape[2]):
        for i in range(6):
            for c in range(channels):
                rows[i, 0, c], rows[i, 1, c], rows[i, 2, c] = _gt(
                    g[i, 0, r, c], g[i, 1, r, c], g[i, 2, r, c], g[i, 3, r, c], g[i, 4, r, c], g[i, 5, r, c], q
                )
        for j in range(3):
            for c in range(channels):
                w[r, 0, j, c], w[r, 1, j, c], w[r, 2, j, c] = _gt(
                    rows[0, j, c], rows[1, j, c], rows[2, j, c], rows[3, j, c], rows[4, j, c], rows[5, j, c], q
                )


_bt, _b, _at, _a, _g, _gt = jit(_bt), jit(_b), jit(_at), jit(_a), jit(_g), jit(_gt)
_input_to_points, _input_gradient = jit(_input_to_points), jit(_input_gradient)
_points_to_output, _output_gradient = jit(_points_to_output), jit(_output_gradient)
_weight_to_points, _weight_gradient = jit(_weight_to_points), jit(_weight_gradient)


# Per float type, the loops' constants: k for the data's transforms, q for the kernel's.
_K = {torch.float32: np.array([2, 4, 5, 8], np.float32), torch.float64: np.array([2, 4, 5, 8], np.float64)}
_Q = {dtype: np.array([1 / 4, 1 / 6, 1 / 12, 1 / 24], k.dtype) for dtype, k in _K.items()}


# What winograd_pool.py's and stem.py's loops build on: the transforms and their constants.
input_transform, input_adjoint, output_transform, output_adjoint, data_constants = _bt, _b, _at, _a, _K
