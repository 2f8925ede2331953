"""The first layer's batch statistics: the patches' moments from the Gram matrix equal the patches'."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hpo.kernels.patch_moments import patch_moments


def moments_of_the_patches(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition: every 3x3 patch of a member's images, their mean and biased covariance."""
    members, images = x.shape[:2]
    patches = F.unfold(x.reshape(members * images, 1, 14, 14), 3)  # M*N x 9 x 144
    patches = patches.view(members, images, 9, -1).transpose(1, 2).reshape(members, 9, -1)
    mean = patches.mean(-1, keepdim=True)
    centred = patches - mean
    return mean, centred @ centred.transpose(1, 2) / centred.shape[-1]


def mnist_like(members: int, images: int, dtype: torch.dtype) -> torch.Tensor:
    """Sparse strokes on a blank background, standardised as hpo's data is (mean far from 0)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(members, images, 14, 14, generator=gen, dtype=dtype)
    x[x < 0.7] = 0
    return (x - 0.13) / 0.31


@pytest.mark.parametrize("members,images", [(1, 1), (5, 50), (3, 7)])
def test_patch_moments_equal_the_mean_and_covariance_of_every_patch_in_float64(members, images) -> None:
    x = mnist_like(members, images, torch.float64)
    mean, cov = patch_moments(x)
    expected_mean, expected_cov = moments_of_the_patches(x)
    assert mean.shape == (members, 9, 1) and cov.shape == (members, 9, 9) and cov.dtype == torch.float64
    torch.testing.assert_close(mean, expected_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cov, expected_cov, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cov, cov.transpose(1, 2), rtol=0, atol=0)


def test_in_float32_they_stay_within_float32_rounding_of_float64() -> None:
    x = mnist_like(5, 50, torch.float64)
    mean, cov = patch_moments(x.float())
    exact_mean, exact_cov = moments_of_the_patches(x)
    assert cov.dtype == torch.float32
    torch.testing.assert_close(mean.double(), exact_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cov.double(), exact_cov, rtol=1e-5, atol=1e-5)


def test_each_member_reads_only_its_own_images() -> None:
    x = mnist_like(3, 10, torch.float64)
    alone = patch_moments(x[1:2])
    x[0], x[2] = 5.0, -3.0
    together = patch_moments(x)
    torch.testing.assert_close(together[0][1:2], alone[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(together[1][1:2], alone[1], rtol=1e-12, atol=1e-12)
