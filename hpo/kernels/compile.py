"""How hpo's CPU kernels (first_layer.py, winograd.py) are compiled (numba, for this CPU), and what they take.

Cached on disk in the user's cache folder (`cache_folder`), so a worker pays the compile once
per install and machine, not per run or per container (docs/performance.md has the cost); no
bounds checks; fused multiply-adds allowed but no other reordering of float arithmetic, so a
kernel sums in the order its code says; the GIL released, so other threads run beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

_OPTIONS = dict(boundscheck=False, error_model="numpy", fastmath={"contract"}, nogil=True)
CACHE_ENV = "NUMBA_CACHE_DIR"


def cache_folder() -> Path | None:
    """Where numba caches the compiled kernels: NUMBA_CACHE_DIR when the user set it, else
    $XDG_CACHE_HOME/hpo/numba (~/.cache/hpo/numba), set here before numba first reads it.

    Numba's own default is a __pycache__ beside the package's sources, which a read-only install
    (a container image built as root, run as a user; a system site-packages) cannot write.
    None: no home folder to put it in (numba then tries its own places).
    """
    if CACHE_ENV not in os.environ:
        base = os.environ.get("XDG_CACHE_HOME")
        try:
            root = Path(base) if base else Path.home() / ".cache"
        except RuntimeError:  # no home folder
            return None
        os.environ[CACHE_ENV] = str(root / "hpo" / "numba")
    return Path(os.environ[CACHE_ENV])


def jit(function):
    folder = cache_folder()  # before numba is imported: it reads NUMBA_CACHE_DIR on import
    from numba import njit
    from numba.core import config

    if folder is not None and str(folder) != config.CACHE_DIR:  # numba was imported before hpo set it
        config.reload_config()

    try:
        return njit(cache=True, **_OPTIONS)(function)
    except RuntimeError:  # no writable cache folder (a read-only install and no home): compile each run
        return njit(**_OPTIONS)(function)


def kernel_inputs(*tensors: torch.Tensor) -> bool:
    """Whether the kernels take these tensors: all on the CPU, all of one float type they are
    compiled for (float32 or float64), and no CPU autocast (which asks for bfloat16 operators)."""
    dtype = tensors[0].dtype
    return (
        dtype in (torch.float32, torch.float64)
        and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)
        and not torch.is_autocast_enabled("cpu")
    )
