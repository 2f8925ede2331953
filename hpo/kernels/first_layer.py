"""The first layer fused: a one-channel 3x3 convolution, 2x2 max-pooling and ReLU in one loop
(with batch norm between them, too).

Through PyTorch this layer is memory-bound, not compute-bound: the convolution writes a
4.6 MB activation per training step (5 members x 50 images x 32 channels x 12 x 12) that
pooling reads, pooling's backward zero-fills and scatters into, and the convolution's
backward reads again, for only 0.08 MFLOP an image. Here each pooled cell computes its four
window positions in registers, keeps the largest and which one it was, and writes only the
pooled, rectified result; the backward pass routes each gradient to that position and
accumulates the weights' gradients from the image directly. It is the same function as
`relu(max_pool2d(conv2d(x, w, b, groups=M), 2))`, ties and NaNs resolved as PyTorch's
pooling resolves them (the first largest position, NaN wins), to float rounding. Batch norm
is a per-channel affine map, so it commutes with pooling once the window's largest value is
taken where scale * value is largest; the loop applies it (scale, shift, then ReLU) to the
pooled values and its backward sums the gradients of scale and shift, each member's in one
order. Its batch statistics follow from the images' patches (patch_moments.py).

Numba compiles the two loops for this CPU on first use and caches them on disk. They run on
one thread: hpo's workers train on one thread each, and at two threads a second thread for
this layer made whole trials slower, not faster (numba's OpenMP pool also resets torch's
thread count; a helper thread of our own competed with torch's own; docs/performance.md).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hpo.kernels.compile import jit, kernel_inputs
from hpo.kernels.patch_moments import batch_norm_affine

SIZE, KERNEL, POOLED = 14, 3, 6  # 14 x 14 digits, 3 x 3 kernel: 12 x 12, pooled to 6 x 6
# A float32 zero: an int literal would make the loops' float32 arithmetic float64 (float64 stays float64).
_ZERO = np.float32(0)


def _forward(x, w, b, scale, shift, out, arg, act):
    """x: M x N x 14 x 14, w: M x 9 x C, b, scale and shift: M x C -> out, arg, act: N x 6 x 6 x M*C
    (channels-last): per window the convolution's value where scale * value is largest, where
    that was, and relu(scale * value + shift)."""
    for m in range(x.shape[0]):
        _forward_member(x, w, b, scale, shift, out, arg, act, m)


def _forward_member(x, w, b, scale, shift, out, arg, act, m):
    # Per window: the 4 x 4 patch under it held in 16 scalars, then for each channel its four
    # positions (in PyTorch's scan order) from 9 weights loaded once: 11 loads and 2 stores
    # per 36 multiply-adds (a loop per position took 1.2x as long). The stores go to two small
    # arrays and are copied out after: stored into the output inside the loop, one call in two
    # in a training step ran 2.5x as long (1.4 against 0.55 ms), as if the fresh output's
    # addresses sometimes collided with the weights' (4K aliasing).
    channels = w.shape[2]
    kept = np.empty(channels, out.dtype)
    normed = np.empty(channels, out.dtype)
    chosen = np.empty(channels, np.uint8)
    sign = np.empty(channels, out.dtype)
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = w[m, 0], w[m, 1], w[m, 2], w[m, 3], w[m, 4], w[m, 5], w[m, 6], w[m, 7], w[m, 8]
    bm, am, hm = b[m], scale[m], shift[m]
    for c in range(channels):
        sign[c] = -1 if am[c] < 0 else 1
    sm = sign
    first, last = m * channels, (m + 1) * channels
    for n in range(x.shape[1]):
        img = x[m, n]
        for i in range(POOLED):
            for j in range(POOLED):
                r, s = 2 * i, 2 * j
                p00, p01, p02, p03 = img[r, s], img[r, s + 1], img[r, s + 2], img[r, s + 3]
                p10, p11, p12, p13 = img[r + 1, s], img[r + 1, s + 1], img[r + 1, s + 2], img[r + 1, s + 3]
                p20, p21, p22, p23 = img[r + 2, s], img[r + 2, s + 1], img[r + 2, s + 2], img[r + 2, s + 3]
                p30, p31, p32, p33 = img[r + 3, s], img[r + 3, s + 1], img[r + 3, s + 2], img[r + 3, s + 3]
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
                    best, key, which = v0, sm[c] * v0, np.uint8(0)
                    k = sm[c] * v1
                    take = (k > key) | (v1 != v1)
                    best, key, which = (v1 if take else best), (k if take else key), (np.uint8(1) if take else which)
                    k = sm[c] * v2
                    take = (k > key) | (v2 != v2)
                    best, key, which = (v2 if take else best), (k if take else key), (np.uint8(2) if take else which)
                    k = sm[c] * v3
                    take = (k > key) | (v3 != v3)
                    best, which = (v3 if take else best), (np.uint8(3) if take else which)
                    kept[c] = best
                    chosen[c] = which
                for c in range(channels):  # normalised and rectified (NaN stays NaN, as in ReLU)
                    y = am[c] * kept[c] + hm[c]
                    normed[c] = y if (y > 0 or y != y) else _ZERO
                pooled, where, output = out[n, i, j, first:last], arg[n, i, j, first:last], act[n, i, j, first:last]
                for c in range(channels):  # stored apart: see above
                    pooled[c] = kept[c]
                    where[c] = chosen[c]
                    output[c] = normed[c]


def _backward(x, g, scale, out, arg, act, gw, gb, gscale, gshift):
    """The gradients of w, b, scale and shift (M x 9 x C, M x C, M x C, M x C) from the output's
    gradient g (N x 6 x 6 x M*C), each member's summed in one fixed order."""
    for m in range(x.shape[0]):
        _backward_member(x, g, scale[m], out, arg, act, gw[m], gb[m], gscale[m], gshift[m], m)


def _backward_member(x, g, am, out, arg, act, dw, db, da, dh, m):
    # The gradient through ReLU, then each weight's from the window's four positions at once,
    # in two loops of at most 5 stores (with 9, LLVM leaves a loop scalar); a loop per
    # position, loading and storing the 9 sums four times, took 1.6x as long.
    channels = dw.shape[1]
    passed = np.empty(channels, dw.dtype)
    through = np.empty(channels, dw.dtype)
    dw[:] = 0
    db[:] = 0
    da[:] = 0
    dh[:] = 0
    d0, d1, d2, d3, d4, d5, d6, d7, d8 = dw[0], dw[1], dw[2], dw[3], dw[4], dw[5], dw[6], dw[7], dw[8]
    first, last = m * channels, (m + 1) * channels
    for n in range(x.shape[1]):
        img = x[m, n]
        for i in range(POOLED):
            for j in range(POOLED):
                grad, pooled, where = g[n, i, j, first:last], out[n, i, j, first:last], arg[n, i, j, first:last]
                output = act[n, i, j, first:last]
                r, s = 2 * i, 2 * j
                p00, p01, p02, p03 = img[r, s], img[r, s + 1], img[r, s + 2], img[r, s + 3]
                p10, p11, p12, p13 = img[r + 1, s], img[r + 1, s + 1], img[r + 1, s + 2], img[r + 1, s + 3]
                p20, p21, p22, p23 = img[r + 2, s], img[r + 2, s + 1], img[r + 2, s + 2], img[r + 2, s + 3]
                p30, p31, p32, p33 = img[r + 3, s], img[r + 3, s + 1], img[r + 3, s + 2], img[r + 3, s + 3]
                for c in range(channels):  # through ReLU: where its output is positive
                    through[c] = grad[c] if output[c] > 0 else _ZERO
                for c in range(channels):  # to batch norm's shift and scale
                    dh[c] += through[c]
                    da[c] += through[c] * pooled[c]
                for c in range(channels):  # through the scale, to the convolution's bias
                    passed[c] = through[c] * am[c]
                    db[c] += passed[c]
                for c in range(channels):  # through the pooling: to the winning position
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


_forward_member, _backward_member = jit(_forward_member), jit(_backward_member)
_forward, _backward = jit(_forward), jit(_backward)


class _FirstLayer(torch.autograd.Function):
    """relu(scale * pooled + shift), pooled per window at the position where scale * value is
    largest (max-pooling of the normalised value, which is what follows the convolution)."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
    ) -> torch.Tensor:
        members, images = x.shape[:2]
        channels = weight.shape[0] // members
        w = weight.detach().reshape(members, channels, KERNEL * KERNEL).transpose(1, 2).contiguous()
        out = torch.empty(images, POOLED, POOLED, members * channels, dtype=x.dtype)
        act = torch.empty_like(out)
        arg = torch.empty(out.shape, dtype=torch.uint8)
        b, a, h = (t.detach().reshape(members, channels).contiguous() for t in (bias, scale, shift))
        _forward(x.numpy(), w.numpy(), b.numpy(), a.numpy(), h.numpy(), out.numpy(), arg.numpy(), act.numpy())
        ctx.save_for_backward(x, a, out, arg, act)
        ctx.channels = channels
        return act.permute(0, 3, 1, 2)  # N x M*C x 6 x 6, channels-last in memory

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x, a, out, arg, act = ctx.saved_tensors
        members, channels = x.shape[0], ctx.channels
        gw = torch.empty(members, KERNEL * KERNEL, channels, dtype=x.dtype)
        gb, ga, gh = (torch.empty(members, channels, dtype=x.dtype) for _ in range(3))
        g = grad.permute(0, 2, 3, 1).contiguous()
        _backward(
            x.numpy(),
            g.numpy(),
            a.numpy(),
            out.numpy(),
            arg.numpy(),
            act.numpy(),
            *(t.numpy() for t in (gw, gb, ga, gh)),
        )
        weight_grad = gw.transpose(1, 2).reshape(members * channels, 1, KERNEL, KERNEL)
        return None, weight_grad, gb.reshape(-1), ga.reshape(-1), gh.reshape(-1)


def takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `first_layer` takes these inputs: CPU tensors of float32 or float64, 14 x 14 images
    not needing a gradient, one-channel 3 x 3 kernels, no autocast (which asks for bfloat16)."""
    return (
        kernel_inputs(x, weight)
        and not x.requires_grad
        and tuple(x.shape[2:]) == (SIZE, SIZE)
        and tuple(weight.shape[1:]) == (1, KERNEL, KERNEL)
    )


def first_layer(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, norm: nn.BatchNorm2d | None = None
) -> torch.Tensor:
    """relu(max_pool2d(norm(conv2d(images, weight, bias, groups=M)), 2)) for M members' images.

    x: M x N x 14 x 14; weight: M*C x 1 x 3 x 3; bias: M*C; norm: batch norm over the M*C
    channels, or none. Returns N x M*C x 6 x 6 in channels-last memory, the layout the second
    (grouped) convolution runs fastest on.
    """
    x = x.contiguous()
    if norm is None:
        ones = torch.ones_like(bias.detach())
        return _FirstLayer.apply(x, weight, bias, ones, torch.zeros_like(ones))
    # Normalised and rectified in the loop, a quarter of the convolution's output; the gradients
    # of scale and shift summed per member there too, so a member's do not depend on how many
    # share the call (PyTorch's channels-last reduction summed a 16-channel member's tail its own way).
    scale, shift = batch_norm_affine(x, weight, bias, norm)
    return _FirstLayer.apply(x, weight, bias, scale, shift)
