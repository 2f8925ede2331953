"""Augmentation of training pairs: 2,000 labelled digits are few. Shifted copies teach the
encoder that a digit is the same digit one pixel over; re-pairing shows the comparison new
pairs of the same digits every epoch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def random_shift(x: torch.Tensor, max_shift: int, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Shift every image of K x N x 2 x H x W by up to `max_shift` pixels in each direction.

    Member k's offsets come from gens[k] alone, so a member augments the same way whether it
    trains alone or beside others. Borders are filled by replicating the edge (background).
    """
    if max_shift == 0:
        return x
    k, n, c, h, w = x.shape
    per_member = n * c
    offsets = (
        torch.stack([torch.randint(0, 2 * max_shift + 1, (2, per_member), generator=g) for g in gens], dim=1)
        .view(2, k * per_member)
        .to(x.device)
    )
    images = F.pad(x.reshape(k * per_member, 1, h, w), (max_shift,) * 4, mode="replicate")[:, 0]
    rows = (offsets[0, :, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (offsets[1, :, None] + torch.arange(w, device=x.device))[:, None, :]
    picked = images[torch.arange(k * per_member, device=x.device)[:, None, None], rows, cols]
    return picked.view(k, n, c, h, w)


def random_rotate_scale(x: torch.Tensor, degrees: float, scale: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Rotate every image of K x N x 2 x H x W by up to `degrees` and rescale it by up to `scale`.

    Handwriting slants and varies in size; a few degrees and a few percent are still the same
    digit. Angles and factors of member k come from gens[k] alone; borders repeat the edge.
    """
    if degrees == 0 and scale == 0:
        return x
    k, n, c, h, w = x.shape
    per_member = n * c
    draws = torch.stack([torch.rand(2, per_member, generator=g) for g in gens], dim=1).view(2, k * per_member)
    angle = torch.deg2rad((2 * draws[0] - 1) * degrees).to(x.device, x.dtype)
    zoom = (1 + (2 * draws[1] - 1) * scale).to(x.device, x.dtype)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    images = x.reshape(k * per_member, 1, h, w)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return warped.view(k, n, c, h, w)


def repair(index: torch.Tensor, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """New pairs from the digits of each member's rows: K x M x 2 indices into the N x 2 digits.

    index (K x M) holds each member's training rows; their 2M digits are shuffled by gens[k]
    and paired in order, so every digit still appears once an epoch. Index the digits of
    `Pairs` flattened to 2N; the label of a new pair follows from its two classes.
    """
    k, m = index.shape
    digits = torch.stack((2 * index, 2 * index + 1), dim=2).view(k, 2 * m)
    perms = torch.stack([torch.randperm(2 * m, generator=g) for g in gens])
    return digits.gather(1, perms).view(k, m, 2)
