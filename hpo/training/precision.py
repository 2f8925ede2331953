"""Where a trial computes and in what float type: the --device and --precision flags resolved.

bfloat16 is asked for, never chosen: hpo's own float32 kernels made float32 the faster on
every CPU measured (docs/performance.md).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from hpo.errors import HpoError

__all__ = ["Precision", "autocast", "native_bfloat16", "resolve_device", "resolve_precision"]

Precision = Literal["float32", "bfloat16"]


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512_BF16 or AMX), as oneDNN sees it.

    Without it torch emulates bfloat16 through float32, slower than float32 itself.
    """
    backend = getattr(torch.backends, "mkldnn", None)
    return bool(backend is not None and backend.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(name: str) -> Precision:
    """--precision: 'float32' (the default), 'bfloat16', or 'auto' (the faster: float32).

    bfloat16 means the network's forward pass runs under autocast (convolutions and matrix
    products in bfloat16, accumulating in float32); the loss, the gradients' parameters and
    Adam stay float32. It is asked for explicitly, never by default. 'auto' picked it where the
    CPU has it natively until hpo's own float32 kernels (stem.py, winograd.py) made float32
    the faster: the reference trial now trains 1.2x to 1.3x slower in bfloat16 on such a CPU
    (docs/performance.md), so 'auto' means float32.
    """
    if name not in ("auto", "float32", "bfloat16"):
        raise HpoError(f"--precision must be auto, float32 or bfloat16; got '{name}'")
    if name == "auto":
        return "float32"
    if name == "bfloat16" and not native_bfloat16():
        raise HpoError(
            "--precision bfloat16 asked for, but this CPU has no native bfloat16 (AVX512_BF16 or AMX); use "
            "float32 or auto"
        )
    return name


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Autocast for the forward pass in bfloat16, a no-op in float32."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def resolve_device(name: str) -> torch.device:
    """--device: 'auto' picks CUDA when present; asking for CUDA without it is a user error."""
    if name not in ("auto", "cpu", "cuda"):
        raise HpoError(f"--device must be auto, cpu or cuda; got '{name}'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise HpoError("--device cuda asked for, but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)
