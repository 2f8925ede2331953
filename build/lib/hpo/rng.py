"""Explicit randomness: every random stream in hpo is a torch.Generator derived from one seed."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from a seed and labels, so independent streams never share state."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded from `parts` (see derive_seed)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(*parts))
    return gen
