"""The first two layers in one pass compute what the two fused layers compute one after the
other, bit for bit, and what PyTorch's layers compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import hpo.training.model
from hpo.kernels.dispatch import STEM, Kernels
from hpo.kernels.first_layer import first_layer
from hpo.kernels.stem import stem, takes
from hpo.kernels.winograd_pool import winograd_conv_pool_relu
from hpo.spec.registry import TwinConfig


def layer_by_layer(x, w1, b1, w2, b2, members):
    return winograd_conv_pool_relu(first_layer(x, w1, b1), w2, b2, members)


def pytorch(x, w1, b1, w2, b2, members):
    images = x.permute(1, 2, 3, 0).contiguous().permute(0, 3, 1, 2)  # N x M x 14 x 14
    h = F.relu(F.max_pool2d(F.conv2d(images, w1, b1, groups=members), 2))
    h = F.relu(F.max_pool2d(F.conv2d(h, w2, b2, groups=members), 2))
    n = h.shape[0]
    return h.permute(0, 2, 3, 1).reshape(n, 4, members, -1).permute(2, 0, 1, 3).reshape(members, n, -1)


def inputs(members: int, c1: int, c2: int, images: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Sparse MNIST-like images (some blank: every first-layer window ties), weights, biases."""
    gen = torch.Generator().manual_seed(members * 7 + c1)
    x = torch.rand(members, images, 14, 14, generator=gen, dtype=dtype)
    x[x < 0.6] = 0
    x[:, : images // 4] = 0
    w1 = 0.3 * torch.randn(members * c1, 1, 3, 3, generator=gen, dtype=dtype)
    b1 = 0.1 * torch.randn(members * c1, generator=gen, dtype=dtype)
    w2 = (0.2 * torch.randn(members * c2, c1, 3, 3, generator=gen, dtype=dtype)).contiguous(
        memory_format=torch.channels_last
    )
    b2 = 0.1 * torch.randn(members * c2, generator=gen, dtype=dtype)
    return [x, w1, b1, w2, b2]


def output_and_gradients(function, x, w1, b1, w2, b2, members):
    params = [t.detach().clone().requires_grad_() for t in (w1, b1, w2, b2)]
    out = function(x, *params, members)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    return [out.detach(), *torch.autograd.grad(out, params, grad)]


@pytest.mark.parametrize("members,c1,c2,images", [(5, 32, 64, 50), (3, 8, 16, 9), (1, 1, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_stem_equals_the_two_layers_one_by_one_bit_for_bit(members, c1, c2, images, dtype) -> None:
    data = inputs(members, c1, c2, images, dtype)
    assert takes(data[0], data[1], data[3])
    ours = output_and_gradients(stem, *data, members)
    theirs = output_and_gradients(layer_by_layer, *data, members)
    for name, a, b in zip(("features", "w1", "b1", "w2", "b2"), ours, theirs):
        assert a.dtype == dtype and a.shape == b.shape and torch.equal(a, b), name


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_the_stem_equals_pytorchs_layers_with_every_gradient(dtype, tolerance) -> None:
    data = inputs(3, 8, 16, 9, dtype)
    ours = output_and_gradients(stem, *data, 3)
    reference = output_and_gradients(pytorch, *data, 3)
    for name, a, b in zip(("features", "w1", "b1", "w2", "b2"), ours, reference):
        error = ((a - b).abs().max() / b.abs().max()).item()
        assert error < tolerance, f"{name}: relative error {error:.2e}"
    assert (ours[0] == 0).float().mean() > 0.1, "ReLU had work to do"


def test_a_nan_pixel_reaches_the_features_as_through_the_layers_one_by_one() -> None:
    data = inputs(2, 3, 4, 3, torch.float64)
    data[0] = data[0].clone()
    data[0][1, 2, 5, 5] = float("nan")
    ours, theirs = stem(*data, 2), layer_by_layer(*data, 2)
    torch.testing.assert_close(ours, theirs, equal_nan=True, rtol=0, atol=0)
    assert ours[1, 2].isnan().any() and not ours[0].isnan().any()


def test_the_stem_passes_gradcheck() -> None:
    x, *params = inputs(2, 3, 4, 3, torch.float64)
    args = [p.detach().requires_grad_() for p in params]
    assert torch.autograd.gradcheck(lambda *t: stem(x, *t, 2), args)


def test_the_stem_takes_what_both_fused_layers_take() -> None:
    x, w1, _, w2, _ = inputs(2, 3, 4, 3, torch.float32)
    assert takes(x, w1, w2)
    assert not takes(x.double(), w1, w2) and not takes(x.requires_grad_(), w1, w2)
    x = x.detach()
    assert not takes(x[..., :12, :12], w1, w2) and not takes(x, w1, w2[..., :2, :2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not takes(x, w1, w2)


def test_members_that_do_not_divide_the_channels_are_refused() -> None:
    x, w1, b1, w2, b2 = inputs(2, 3, 4, 3, torch.float32)
    with pytest.raises(ValueError, match="members"):
        stem(x, w1, b1, w2, b2, 4)


@pytest.mark.parametrize("sharing", [True, False])
def test_twin_net_without_batch_norm_takes_the_stem_and_trains_the_same(sharing, trains_the_same_without) -> None:
    trains_the_same_without(
        TwinConfig(weight_sharing=sharing, batch_norm=False, dropout=0.0), STEM, "stem", 1e-10, 1e-12
    )


def test_twin_net_with_batch_norm_refuses_kernels_that_pool_right_after_the_convolution() -> None:
    for kernels in (STEM, Kernels("fused", "winograd_pool")):
        with pytest.raises(ValueError, match="no room for batch norm"):
            hpo.training.model.TwinNet(TwinConfig(batch_norm=True), members=2, kernels=kernels)
