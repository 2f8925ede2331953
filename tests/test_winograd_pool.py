"""The second convolution by Winograd with its bias, max-pooling and ReLU in one pass computes
PyTorch's composition: values, every gradient, ties and NaNs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hpo.kernels.winograd_pool import winograd_conv_pool_relu


def composition(x, weight, bias, members):
    """What the model computes without the fused pass: convolution, pooling, ReLU, then each
    member's features in (row, column, channel) order."""
    h = F.relu(F.max_pool2d(F.conv2d(x, weight, bias, groups=members), 2))
    n = h.shape[0]
    return h.permute(0, 2, 3, 1).reshape(n, 4, members, -1).permute(2, 0, 1, 3).reshape(members, n, -1)


def inputs(members: int, cin: int, cout: int, images: int, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(members * 10 + cout)
    x = torch.randn(images, members * cin, 6, 6, generator=gen, dtype=dtype).relu()
    weight = 0.2 * torch.randn(members * cout, cin, 3, 3, generator=gen, dtype=dtype)
    bias = 0.1 * torch.randn(members * cout, generator=gen, dtype=dtype)
    return [x.contiguous(memory_format=torch.channels_last), weight.contiguous(memory_format=torch.channels_last), bias]


def output_and_gradients(function, x, weight, bias, members, seed=0):
    x, weight, bias = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    out = function(x, weight, bias, members)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return [out.detach(), *torch.autograd.grad(out, (x, weight, bias), grad)]


@pytest.mark.parametrize("members,cin,cout,images", [(5, 32, 64, 50), (3, 8, 16, 7), (1, 1, 1, 1), (2, 3, 5, 4)])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_the_pooled_pass_equals_convolution_pooling_and_relu_with_every_gradient(
    members, cin, cout, images, dtype, tolerance
) -> None:
    data = inputs(members, cin, cout, images, dtype)
    ours = output_and_gradients(winograd_conv_pool_relu, *data, members)
    reference = output_and_gradients(composition, *data, members)
    for name, a, b in zip(("features", "input gradient", "weight gradient", "bias gradient"), ours, reference):
        assert a.dtype == dtype and a.shape == b.shape, name
        error = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
        assert error < tolerance, f"{name}: relative error {error:.2e}"


def test_ties_go_to_the_first_place_and_windows_at_or_below_zero_pass_no_gradient() -> None:
    # Zero weights: every output is its bias, so each window is a four-way tie; one member's
    # bias is positive (the first place takes the whole gradient), the other's zero and
    # negative (ReLU stops it).
    x = torch.rand(3, 2 * 2, 6, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight = torch.zeros(2 * 3, 2, 3, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    bias = torch.tensor([0.5, 0.25, 1.0, 0.0, -0.5, 0.0], dtype=torch.float64)
    ours = output_and_gradients(winograd_conv_pool_relu, x, weight, bias, 2, seed=3)
    reference = output_and_gradients(composition, x, weight, bias, 2, seed=3)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert ours[3][3:].abs().max() == 0, "no gradient reaches biases whose windows ReLU zeroed"
    assert ours[3][:3].abs().min() > 0


def test_a_nan_wins_its_window_and_passes_relu_as_in_pytorch() -> None:
    x, weight, bias = inputs(2, 3, 4, 2, torch.float64)
    x = x.clone()
    x[1, 4, 2, 3] = float("nan")  # member 1's channel 1: every output of image 1, member 1 is NaN
    ours = winograd_conv_pool_relu(x, weight, bias, 2)
    reference = composition(x, weight, bias, 2)
    torch.testing.assert_close(ours, reference, equal_nan=True, rtol=1e-12, atol=1e-12)
    assert ours[1, 1].isnan().all() and not ours[0].isnan().any() and not ours[1, 0].isnan().any()


def test_the_pooled_pass_passes_gradcheck() -> None:
    x, weight, bias = inputs(2, 3, 4, 3, torch.float64)
    args = (x.detach().requires_grad_(), weight.detach().requires_grad_(), bias.detach().requires_grad_())
    assert torch.autograd.gradcheck(lambda *t: winograd_conv_pool_relu(*t, 2), args)


def test_members_that_do_not_divide_the_channels_are_refused() -> None:
    x, weight, bias = inputs(2, 3, 4, 3, torch.float32)
    with pytest.raises(ValueError, match="members"):
        winograd_conv_pool_relu(x, weight, bias, 3)
