"""The fused first layer computes what PyTorch's convolution, max-pooling and ReLU compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hpo.kernels.dispatch import Kernels
from hpo.kernels.first_layer import first_layer, takes
from hpo.spec.registry import TwinConfig

MEMBERS, IMAGES, CHANNELS = 3, 20, 8


def unfused(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    images = x.permute(1, 2, 3, 0).contiguous().permute(0, 3, 1, 2)
    return F.relu(F.max_pool2d(F.conv2d(images, weight, bias, groups=x.shape[0]), 2))


def inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse MNIST-like images, some blank (every window ties), weights, biases and a gradient."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(MEMBERS, IMAGES, 14, 14, generator=gen, dtype=dtype)
    x[x < 0.6] = 0
    x[:, :4] = 0
    weight = 0.3 * torch.randn(MEMBERS * CHANNELS, 1, 3, 3, generator=gen, dtype=dtype)
    bias = 0.1 * torch.randn(MEMBERS * CHANNELS, generator=gen, dtype=dtype)
    grad = torch.randn(IMAGES, MEMBERS * CHANNELS, 6, 6, generator=gen, dtype=dtype)
    return x, weight, bias, grad


def output_and_gradients(layer, x, weight, bias, grad):
    weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    out = layer(x, weight, bias)
    out.backward(grad)
    return out.detach(), weight.grad, bias.grad


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
def test_fused_first_layer_equals_convolution_pooling_and_relu_with_their_gradients(dtype, tolerance) -> None:
    x, weight, bias, grad = inputs(dtype)
    assert takes(x, weight)
    fused = output_and_gradients(first_layer, x, weight, bias, grad)
    reference = output_and_gradients(unfused, x, weight, bias, grad)
    for ours, theirs in zip(fused, reference):
        assert ours.dtype == dtype
        torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=tolerance)
    assert fused[0].is_contiguous(memory_format=torch.channels_last), "the layout the second convolution wants"
    assert (fused[0] == 0).float().mean() > 0.1, "ReLU had work to do"


def test_tied_windows_send_the_gradient_to_one_position_as_max_pooling_does() -> None:
    # Blank images tie all four positions of every window: the bias gradient counts each
    # pooled cell once, as max_pool2d routes it to the first position only.
    x, weight, bias, grad = inputs(torch.float64)
    x = torch.zeros_like(x)
    bias = bias.abs() + 0.1  # every output positive: ReLU passes everything
    fused = output_and_gradients(first_layer, x, weight, bias, grad)
    reference = output_and_gradients(unfused, x, weight, bias, grad)
    torch.testing.assert_close(fused[2], reference[2])
    torch.testing.assert_close(fused[2], grad.sum((0, 2, 3)))


def test_a_nan_pixel_makes_its_windows_nan_as_in_pytorch() -> None:
    x, weight, bias, _ = inputs(torch.float32)
    x[1, 5, 7, 7] = float("nan")
    ours, theirs = first_layer(x, weight, bias), unfused(x, weight, bias)
    assert torch.equal(ours.isnan(), theirs.isnan()) and ours.isnan().any()


def test_it_takes_only_cpu_images_of_the_weights_dtype_that_need_no_gradient_outside_autocast() -> None:
    x, weight, _, _ = inputs(torch.float32)
    assert takes(x, weight)
    assert not takes(x.double(), weight)
    assert not takes(x.requires_grad_(), weight)
    assert not takes(x.detach().bfloat16(), weight.bfloat16())
    assert not takes(x.detach()[..., :12, :12], weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not takes(x.detach(), weight), "under autocast the bfloat16 convolution is what was asked for"


@pytest.mark.parametrize("sharing", [True, False])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_twin_net_takes_the_fused_layer_and_trains_the_same(sharing, batch_norm, trains_the_same_without) -> None:
    trains_the_same_without(
        TwinConfig(weight_sharing=sharing, batch_norm=batch_norm, dropout=0.0),
        Kernels(first="fused"),
        "first_layer",
        1e-10,
        1e-12,
    )


def with_batch_norm(fused: bool, training: bool, x, weight, bias, grad):
    """Output, gradients (weight, bias, scale, shift) and running statistics through batch norm
    whose scales are partly negative, fused or as conv2d -> BatchNorm2d -> max_pool2d -> relu."""
    norm = torch.nn.BatchNorm2d(weight.shape[0], dtype=x.dtype).train(training)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(-1.5, 2.0, weight.shape[0]))
        norm.bias.copy_(torch.linspace(0.3, -0.2, weight.shape[0]))
        norm.running_mean.fill_(0.05)
        norm.running_var.fill_(0.7)
    weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    if fused:
        out = first_layer(x, weight, bias, norm)
    else:
        images = x.permute(1, 2, 3, 0).contiguous().permute(0, 3, 1, 2)
        out = F.relu(F.max_pool2d(norm(F.conv2d(images, weight, bias, groups=x.shape[0])), 2))
    out.backward(grad)
    return [
        out.detach(),
        weight.grad,
        bias.grad,
        norm.weight.grad,
        norm.bias.grad,
        norm.running_mean,
        norm.running_var,
        norm.num_batches_tracked,
    ]


@pytest.mark.parametrize("training", [True, False], ids=["batch statistics", "running statistics"])
def test_fused_first_layer_with_batch_norm_equals_the_unfused_layers_and_updates_the_running_statistics(
    training,
) -> None:
    x, weight, bias, grad = inputs(torch.float64)
    fused = with_batch_norm(True, training, x, weight, bias, grad)
    reference = with_batch_norm(False, training, x, weight, bias, grad)
    for ours, theirs in zip(fused, reference):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10)
    assert int(fused[-1]) == int(training)


def test_the_fused_layer_passes_gradcheck_in_weight_bias_scale_and_shift() -> None:
    """Its backward sums the gradients of batch norm's scale and shift itself (per member, in
    one order); gradcheck compares all four with finite differences, scales of both signs."""
    from hpo.kernels.first_layer import _FirstLayer

    gen = torch.Generator().manual_seed(1)
    members, channels = 2, 4
    x = torch.rand(members, 3, 14, 14, generator=gen, dtype=torch.float64)  # dense: no tied windows
    weight = torch.randn(members * channels, 1, 3, 3, generator=gen, dtype=torch.float64).requires_grad_()
    bias = torch.randn(members * channels, generator=gen, dtype=torch.float64).requires_grad_()
    scale = torch.linspace(-1.4, 2.1, members * channels, dtype=torch.float64).requires_grad_()  # none at 0
    shift = torch.linspace(0.3, -0.2, members * channels, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda *t: _FirstLayer.apply(x, *t), (weight, bias, scale, shift))
