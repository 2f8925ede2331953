"""How hpo's CPU kernels (first_layer.py, winograd.py) are compiled: numba, for this CPU.

Cached on disk, so a worker pays the compile (about 2 s) once per install, not per run; no
bounds checks; fused multiply-adds allowed but no other reordering of float arithmetic, so a
kernel sums in the order its code says; the GIL released, so other threads run beside it.
"""

from __future__ import annotations

from numba import njit

_OPTIONS = dict(boundscheck=False, error_model="numpy", fastmath={"contract"}, nogil=True)


def jit(function):  # type: ignore[no-untyped-def]
    try:
        return njit(cache=True, **_OPTIONS)(function)
    except RuntimeError:  # no writable cache folder (a read-only install and no home): compile each run
        return njit(**_OPTIONS)(function)
