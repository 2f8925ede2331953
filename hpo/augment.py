"""Random translation of training images: 2,000 labelled digits are few, and shifted copies
teach the encoder that a digit is the same digit one pixel over."""

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
    offsets = torch.stack(
        [torch.randint(0, 2 * max_shift + 1, (2, per_member), generator=g) for g in gens], dim=1
    ).view(2, k * per_member).to(x.device)
    images = F.pad(x.reshape(k * per_member, 1, h, w), (max_shift,) * 4, mode="replicate")[:, 0]
    rows = (offsets[0, :, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (offsets[1, :, None] + torch.arange(w, device=x.device))[:, None, :]
    picked = images[torch.arange(k * per_member, device=x.device)[:, None, None], rows, cols]
    return picked.view(k, n, c, h, w)
