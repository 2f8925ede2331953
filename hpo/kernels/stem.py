"""The network's first two layers in one pass, without batch norm: no 6 x 6 map in memory.

The first layer (hpo/first_layer.py) writes each image's pooled 6 x 6 map for every channel,
and the second convolution by Winograd (hpo/winograd.py) reads it back at once to transform it
to the tile's 36 points; backward, Winograd writes the map's gradient and the first layer reads
it back. Each is a pass over 1.15 MB a training step, written cold and read cold: the two
loops took three times as long in a trial as on warm buffers. Here one loop per image computes
the pooled map into a scratch tile that stays in the L1 cache and transforms it from there, and
backward transforms the points' gradient into a scratch tile and feeds the first layer's weight
gradient from it. The arithmetic is that of the two layers' own loops, in the same order, so
the result is theirs bit for bit. Batch norm needs the first layer's map normalised between
the layers, so with it the model takes the two layers one by one.
"""

from __future__ import annotations

import numpy as np
import torch

from hpo.kernels import first_layer
from hpo.kernels.compile import jit
from hpo.kernels.first_layer import KERNEL, POOLED
from hpo.kernels.winograd import (
    check_members,
    products,
    products_backward,
    takes_kernels,
)
from hpo.kernels.winograd_pool import features_backward, pooled_features
from hpo.kernels.winograd_tiles import SIZE, data_constants, input_adjoint, input_transform

__all__ = ["stem", "takes"]

_ZERO = np.float32(0)
_DEAD = np.uint8(4)  # in `arg`: ReLU zeroed this cell (else 0 to 3, the window's chosen place)


def _forward(x, w, b, v, arg, k):
    """x: M x N x 14 x 14 images, w: M x 9 x C, b: M x C -> v: 6 x 6 x M x N x C, each image's
    pooled, rectified map transformed to the 36 points (B^T map B), and arg: M x N x 6 x 6 x C."""
    channels = w.shape[2]
    tile = np.empty((POOLED, POOLED, channels), v.dtype)
    rows = np.empty((POOLED, POOLED, channels), v.dtype)
    chosen = np.empty(channels, np.uint8)
    for m in range(x.shape[0]):
        w0, w1, w2, w3, w4, w5, w6, w7, w8 = (
            w[m, 0],
            w[m, 1],
            w[m, 2],
            w[m, 3],
            w[m, 4],
            w[m, 5],
            w[m, 6],
            w[m, 7],
            w[m, 8],
        )
        bm = b[m]
        for n in range(x.shape[1]):
            img = x[m, n]
            for i in range(POOLED):  # first_layer's loop, batch norm's sign left out (it is 1)
                for j in range(POOLED):
                    r, s = 2 * i, 2 * j
                    p00, p01, p02, p03 = img[r, s], img[r, s + 1], img[r, s + 2], img[r, s + 3]
                    p10, p11, p12, p13 = img[r + 1, s], img[r + 1, s + 1], img[r + 1, s + 2], img[r + 1, s + 3]
                    p20, p21, p22, p23 = img[r + 2, s], img[r + 2, s + 1], img[r + 2, s + 2], img[r + 2, s + 3]
                    p30, p31, p32, p33 = img[r + 3, s], img[r + 3, s + 1], img[r + 3, s + 2], img[r + 3, s + 3]
                    cell = tile[i, j]
                    for c in range(channels):
                        v0 = (
                            bm[c]
                            + w0[c] * p00
                            + w1[c] * p01
                            + w2[c] * p02
                            + w3[c] * p10
                            + w4[c] * p11
                            + w5[c] * p12
                            + w6[c] * p20
                            + w7[c] * p21
                            + w8[c] * p22
                        )
                        v1 = (
                            bm[c]
                            + w0[c] * p01
                            + w1[c] * p02
                            + w2[c] * p03
                            + w3[c] * p11
                            + w4[c] * p12
                            + w5[c] * p13
                            + w6[c] * p21
                            + w7[c] * p22
                            + w8[c] * p23
                        )
                        v2 = (
                            bm[c]
                            + w0[c] * p10
                            + w1[c] * p11
                            + w2[c] * p12
                            + w3[c] * p20
                            + w4[c] * p21
                            + w5[c] * p22
                            + w6[c] * p30
                            + w7[c] * p31
                            + w8[c] * p32
                        )
                        v3 = (
                            bm[c]
                            + w0[c] * p11
                            + w1[c] * p12
                            + w2[c] * p13
                            + w3[c] * p21
                            + w4[c] * p22
                            + w5[c] * p23
                            + w6[c] * p31
                            + w7[c] * p32
                            + w8[c] * p33
                        )
                        best, which = v0, np.uint8(0)
                        take = (v1 > best) | (v1 != v1)
                        best, which = (v1 if take else best), (np.uint8(1) if take else which)
                        take = (v2 > best) | (v2 != v2)
                        best, which = (v2 if take else best), (np.uint8(2) if take else which)
                        take = (v3 > best) | (v3 != v3)
                        best, which = (v3 if take else best), (np.uint8(3) if take else which)
                        cell[c] = best if (best > 0 or best != best) else _ZERO
                        chosen[c] = which if best > 0 else _DEAD
                    where = arg[m, n, i, j]
                    for c in range(channels):  # stored apart, as in first_layer's loop (4K aliasing)
                        where[c] = chosen[c]
            for j in range(SIZE):  # winograd's input transform, from the tile
                for c in range(channels):
                    rows[0, j, c], rows[1, j, c], rows[2, j, c], rows[3, j, c], rows[4, j, c], rows[5, j, c] = (
                        input_transform(
                            tile[0, j, c], tile[1, j, c], tile[2, j, c], tile[3, j, c], tile[4, j, c], tile[5, j, c], k
                        )
                    )
            for i in range(SIZE):
                for c in range(channels):
                    (
                        v[i, 0, m, n, c],
                        v[i, 1, m, n, c],
                        v[i, 2, m, n, c],
                        v[i, 3, m, n, c],
                        v[i, 4, m, n, c],
                        v[i, 5, m, n, c],
                    ) = input_transform(
                        rows[i, 0, c], rows[i, 1, c], rows[i, 2, c], rows[i, 3, c], rows[i, 4, c], rows[i, 5, c], k
                    )


def _backward(x, g, arg, dw, db, k):
    """g: 6 x 6 x M x N x C (the points' gradient) -> dw: M x 9 x C and db: M x C, the first
    layer's weights' and biases' gradients, through each image's map gradient B g B^T."""
    channels = dw.shape[2]
    tile = np.empty((POOLED, POOLED, channels), g.dtype)
    rows = np.empty((POOLED, POOLED, channels), g.dtype)
    passed = np.empty(channels, g.dtype)
    dw[:] = 0
    db[:] = 0
    for m in range(x.shape[0]):
        d0, d1, d2, d3, d4, d5, d6, d7, d8 = (
            dw[m, 0],
            dw[m, 1],
            dw[m, 2],
            dw[m, 3],
            dw[m, 4],
            dw[m, 5],
            dw[m, 6],
            dw[m, 7],
            dw[m, 8],
        )
        dbm = db[m]
        for n in range(x.shape[1]):
            for j in range(SIZE):  # winograd's input gradient, into the tile
                for c in range(channels):
                    rows[0, j, c], rows[1, j, c], rows[2, j, c], rows[3, j, c], rows[4, j, c], rows[5, j, c] = (
                        input_adjoint(
                            g[0, j, m, n, c],
                            g[1, j, m, n, c],
                            g[2, j, m, n, c],
                            g[3, j, m, n, c],
                            g[4, j, m, n, c],
                            g[5, j, m, n, c],
                            k,
                        )
                    )
            for i in range(SIZE):
                for c in range(channels):
                    tile[i, 0, c], tile[i, 1, c], tile[i, 2, c], tile[i, 3, c], tile[i, 4, c], tile[i, 5, c] = (
                        input_adjoint(
                            rows[i, 0, c], rows[i, 1, c], rows[i, 2, c], rows[i, 3, c], rows[i, 4, c], rows[i, 5, c], k
                        )
                    )
            img = x[m, n]
            for i in range(POOLED):  # first_layer's backward loop, from the tile
                for j in range(POOLED):
                    grad, where = tile[i, j], arg[m, n, i, j]
                    r, s = 2 * i, 2 * j
                    p00, p01, p02, p03 = img[r, s], img[r, s + 1], img[r, s + 2], img[r, s + 3]
                    p10, p11, p12, p13 = img[r + 1, s], img[r + 1, s + 1], img[r + 1, s + 2], img[r + 1, s + 3]
                    p20, p21, p22, p23 = img[r + 2, s], img[r + 2, s + 1], img[r + 2, s + 2], img[r + 2, s + 3]
                    p30, p31, p32, p33 = img[r + 3, s], img[r + 3, s + 1], img[r + 3, s + 2], img[r + 3, s + 3]
                    for c in range(channels):
                        passed[c] = grad[c] if where[c] != _DEAD else _ZERO
                        dbm[c] += passed[c]
                    for c in range(channels):
                        g0 = passed[c] if where[c] == 0 else _ZERO
                        g1 = passed[c] if where[c] == 1 else _ZERO
                        g2 = passed[c] if where[c] == 2 else _ZERO
                        g3 = passed[c] if where[c] == 3 else _ZERO
                        d0[c] += g0 * p00 + g1 * p01 + g2 * p10 + g3 * p11
                        d1[c] += g0 * p01 + g1 * p02 + g2 * p11 + g3 * p12
                        d2[c] += g0 * p02 + g1 * p03 + g2 * p12 + g3 * p13
                        d3[c] += g0 * p10 + g1 * p11 + g2 * p20 + g3 * p21
                        d4[c] += g0 * p11 + g1 * p12 + g2 * p21 + g3 * p22
                    for c in range(channels):
                        g0 = passed[c] if where[c] == 0 else _ZERO
                        g1 = passed[c] if where[c] == 1 else _ZERO
                        g2 = passed[c] if where[c] == 2 else _ZERO
                        g3 = passed[c] if where[c] == 3 else _ZERO
                        d5[c] += g0 * p12 + g1 * p13 + g2 * p22 + g3 * p23
                        d6[c] += g0 * p20 + g1 * p21 + g2 * p30 + g3 * p31
                        d7[c] += g0 * p21 + g1 * p22 + g2 * p31 + g3 * p32
                        d8[c] += g0 * p22 + g1 * p23 + g2 * p32 + g3 * p33


_forward, _backward = jit(_forward), jit(_backward)


class _Stem(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, members: int
    ) -> torch.Tensor:
        images, c1 = x.shape[1], w1.shape[0] // members
        w = w1.detach().reshape(members, c1, KERNEL * KERNEL).transpose(1, 2).contiguous()
        v = torch.empty(SIZE, SIZE, members, images, c1, dtype=x.dtype)
        arg = torch.empty(members, images, POOLED, POOLED, c1, dtype=torch.uint8)
        _forward(
            x.numpy(),
            w.numpy(),
            b1.detach().reshape(members, c1).numpy(),
            v.numpy(),
            arg.numpy(),
            data_constants[x.dtype],
        )
        v = v.view(-1, images, c1)
        u, p = products(v, w2, members)
        h, where = pooled_features(p, b2)
        ctx.save_for_backward(x, arg, v, u, where)
        return h.view(members, images, -1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, None]:
        x, arg, v, u, where = ctx.saved_tensors
        members, c1 = arg.shape[0], arg.shape[4]
        g_products, g_b2 = features_backward(grad, where)
        g_v, g_w2 = products_backward(v, u, g_products, True)
        g_w1 = torch.empty(members, KERNEL * KERNEL, c1, dtype=x.dtype)
        g_b1 = torch.empty(members, c1, dtype=x.dtype)
        _backward(x.numpy(), g_v.numpy(), arg.numpy(), g_w1.numpy(), g_b1.numpy(), data_constants[x.dtype])
        return None, g_w1.transpose(1, 2).reshape(members * c1, 1, KERNEL, KERNEL), g_b1.reshape(-1), g_w2, g_b2, None


def takes(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> bool:
    """Whether `stem` takes these inputs: what the fused first layer takes, and 3 x 3 kernels of
    the same float type for the second convolution."""
    return first_layer.takes(x, w1) and takes_kernels(w2, x)


def stem(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, members: int
) -> torch.Tensor:
    """winograd_conv_pool_relu(first_layer(x, w1, b1), w2, b2, members): M x N x 14 x 14 images
    -> each member's features, M x N x (2*2*C2)."""
    check_members(w1.shape[0], w2, members)  # the first layer's M*C1 channels are the second's input
    return _Stem.apply(x.contiguous(), w1, b1, w2, b2, members)
