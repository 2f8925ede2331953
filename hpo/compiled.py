"""How hpo's CPU kernels (first_layer.py, winograd.py) are compiled (numba, for this CPU), and what they take.

Cached on disk, so a worker pays the compile (about 2 s) once per install, not per run; no
bounds checks; fused multiply-adds allowed but no other reordering of float arithmetic, so a
kernel sums in the order its code says; the GIL released, so other threads run beside it.
"""

from __future__ import annotations

import torch
from numba import njit

_OPTIONS = dict(boundscheck=False, error_model="numpy", fastmath={"contract"}, nogil=True)


def jit(function):  # type: ignore[no-untyped-def]
    try:
        return njit(cache=True, **_OPTIONS)(function)
    except RuntimeError:  # no writable cache folder (a read-only install and no home): compile each run
        return njit(**_OPTIONS)(function)


def kernel_inputs(*tensors: torch.Tensor) -> bool:
    """Whether the kernels take these tensors: all on the CPU, all of one float type they are
    compiled for (float32 or float64)."""
    dtype = tensors[0].dtype
    return dtype in (torch.float32, torch.float64) and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)
