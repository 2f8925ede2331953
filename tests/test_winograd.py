"""The second convolution by Winograd's F(4x4, 3x3) computes what the grouped convolution computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hpo.kernels.winograd_tiles as winograd_tiles
from hpo.kernels.dispatch import Kernels
from hpo.kernels.winograd import takes, winograd_conv
from hpo.spec.registry import TwinConfig


def inputs(members: int, cin: int, cout: int, images: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Rectified maps (as the first layer hands on), weights, biases and the output's gradient."""
    gen = torch.Generator().manual_seed(members * 100 + cin)
    x = torch.randn(images, members * cin, 6, 6, generator=gen, dtype=dtype).relu()
    weight = 0.2 * torch.randn(members * cout, cin, 3, 3, generator=gen, dtype=dtype)
    bias = 0.1 * torch.randn(members * cout, generator=gen, dtype=dtype)
    grad = torch.randn(images, members * cout, 4, 4, generator=gen, dtype=dtype)
    return [
        x.contiguous(memory_format=torch.channels_last),
        weight.contiguous(memory_format=torch.channels_last),
        bias,
        grad,
    ]


def output_and_gradients(conv, x, weight, bias, grad, members):
    x, weight, bias = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    out = conv(x, weight, bias, members)
    return [out.detach(), *torch.autograd.grad(out, (x, weight, bias), grad)]


def grouped(x, weight, bias, members):
    return F.conv2d(x, weight, bias, groups=members)


@pytest.mark.parametrize("members,cin,cout,images", [(5, 32, 64, 50), (3, 8, 16, 7), (1, 1, 1, 1), (2, 3, 5, 4)])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_winograd_equals_the_grouped_convolution_with_every_gradient(
    members, cin, cout, images, dtype, tolerance
) -> None:
    data = inputs(members, cin, cout, images, dtype)
    assert takes(data[0], data[1])
    ours = output_and_gradients(winograd_conv, *data, members)
    reference = output_and_gradients(grouped, *data, members)
    for name, a, b in zip(("output", "input gradient", "weight gradient", "bias gradient"), ours, reference):
        assert a.dtype == dtype and a.shape == b.shape, name
        error = ((a - b).abs().max() / b.abs().max()).item()
        assert error < tolerance, f"{name}: relative error {error:.2e}"
    assert ours[0].is_contiguous(memory_format=torch.channels_last), "the layout pooling and batch norm run fastest on"


def test_float32_rounding_stays_within_ten_times_the_direct_convolutions() -> None:
    # F(4x4, 3x3)'s transforms multiply by up to 8 and 5: more rounding than the direct sum,
    # bounded here against float64 on the reference layer's shapes.
    data = inputs(5, 32, 64, 50, torch.float64)
    exact = output_and_gradients(grouped, *data, 5)
    single = [t.float() for t in data]
    for ours, direct, truth in zip(
        output_and_gradients(winograd_conv, *single, 5), output_and_gradients(grouped, *single, 5), exact
    ):
        scale = truth.abs().max()
        ours_error, direct_error = (
            ((ours.double() - truth).abs().max() / scale).item(),
            ((direct.double() - truth).abs().max() / scale).item(),
        )
        assert ours_error < max(10 * direct_error, 1e-6), (ours_error, direct_error)


def test_winograd_passes_gradcheck() -> None:
    x, weight, bias, _ = inputs(2, 3, 4, 3, torch.float64)
    args = (x.detach().requires_grad_(), weight.detach().requires_grad_(), bias.detach().requires_grad_())
    assert torch.autograd.gradcheck(lambda *t: winograd_conv(*t, 2), args)


def test_it_takes_only_cpu_float_maps_of_6x6_with_3x3_kernels_outside_autocast() -> None:
    x, weight, _, _ = inputs(2, 3, 4, 3, torch.float32)
    assert takes(x, weight)
    assert not takes(x.double(), weight)
    assert not takes(x.bfloat16(), weight.bfloat16())
    assert not takes(x[..., :5, :5], weight)
    assert not takes(x, weight[..., :2, :2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not takes(x, weight), "under autocast the bfloat16 convolution is what was asked for"


def test_members_that_do_not_divide_the_channels_are_refused() -> None:
    x, weight, bias, _ = inputs(2, 3, 4, 3, torch.float32)
    with pytest.raises(ValueError, match="members"):
        winograd_conv(x, weight, bias, 3)


@pytest.mark.parametrize("sharing", [True, False])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_twin_net_takes_winograd_for_the_second_convolution_and_trains_the_same(
    sharing, batch_norm, trains_the_same_without
) -> None:
    # Without batch norm between the convolution and the pooling, the pooled pass can take it.
    second, path = ("winograd", "winograd_conv") if batch_norm else ("winograd_pool", "winograd_conv_pool_relu")
    trains_the_same_without(
        TwinConfig(weight_sharing=sharing, batch_norm=batch_norm, dropout=0.0),
        Kernels("torch", second),
        path,
        1e-9,
        1e-11,
    )


@pytest.mark.parametrize("name", ["_bt", "_b", "_at", "_a", "_g", "_gt"])
def test_the_written_out_transforms_are_the_matrices_of_lavin_and_gray(name) -> None:
    matrix = {
        "_bt": winograd_tiles._BT,
        "_b": winograd_tiles._BT.T,
        "_at": winograd_tiles._AT,
        "_a": winograd_tiles._AT.T,
        "_g": winograd_tiles._G,
        "_gt": winograd_tiles._G.T,
    }[name]
    constants = winograd_tiles._Q[torch.float64] if name in ("_g", "_gt") else winograd_tiles._K[torch.float64]
    columns = [getattr(winograd_tiles, name)(*unit, constants) for unit in np.eye(matrix.shape[1])]
    np.testing.assert_allclose(np.array(columns).T, matrix, rtol=1e-15, atol=0)
