"""The compiled kernels are cached in the user's cache folder (or NUMBA_CACHE_DIR), so a second
process, or a container built with the warm-up, starts without compiling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(env: dict[str, str], *args: str) -> str:
    """`python -m hpo.training.warm_up ARGS` in a fresh process with `env` over a clean environment."""
    base = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    done = subprocess.run(
        [sys.executable, "-m", "hpo.training.warm_up", *args],
        cwd=ROOT,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def warm_up(env: dict[str, str]) -> str:
    return run(env)


def cached(folder: Path) -> set[str]:
    """The kernels' cache files under `folder`: numba's index (.nbi) and compiled code (.nbc)."""
    return {p.name for p in folder.rglob("*") if p.suffix in (".nbi", ".nbc")}


@pytest.fixture(scope="module")
def xdg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("xdg-cache")
    warm_up({"XDG_CACHE_HOME": str(folder)})
    return folder


def test_the_kernels_compile_into_the_users_cache_folder(xdg) -> None:
    files = cached(xdg / "hpo" / "numba")
    for kernel in ("first_layer", "winograd_tiles", "winograd_pool", "stem"):
        assert any(name.startswith(f"{kernel}.") and name.endswith(".nbc") for name in files), (kernel, files)
    assert cached(xdg) == files, "nothing elsewhere under the cache home"


def test_a_second_process_finds_them_there_and_compiles_nothing_new(xdg) -> None:
    before = {p: p.stat().st_mtime_ns for p in (xdg / "hpo" / "numba").rglob("*.nbc")}
    warm_up({"XDG_CACHE_HOME": str(xdg)})
    after = {p: p.stat().st_mtime_ns for p in (xdg / "hpo" / "numba").rglob("*.nbc")}
    assert after == before, "no kernel compiled (or written) again"


def test_a_users_own_numba_cache_dir_is_respected(tmp_path) -> None:
    own, xdg = tmp_path / "own", tmp_path / "xdg"
    out = run({"NUMBA_CACHE_DIR": str(own), "XDG_CACHE_HOME": str(xdg)}, "--first-layer-only")
    assert cached(own) and not cached(xdg)
    assert str(own) in out


def test_the_image_compiles_the_kernels_at_build_time_into_a_cache_its_user_can_write() -> None:
    steps = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines() if not line.startswith("#")]
    install = next(i for i, line in enumerate(steps) if "pip install ." in line)
    warm = steps.index("RUN python -m hpo.training.warm_up")
    user = steps.index("USER hpo")
    assert install < user < warm, "compiled after the install, as the user the containers run as"
    assert any(line.startswith("NUMBA_CACHE_DIR=/") for line in steps[:install]), "the cache folder set for every user"
    assert 'chown hpo /data "$NUMBA_CACHE_DIR"' in steps[install + 3]
