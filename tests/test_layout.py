"""The package's shape is checked, not just described: layers, style, module size, one copy of the specs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 300


def _tool(name: str) -> str:
    """The console script installed beside this interpreter (the venv's or the system's)."""
    found = Path(sys.executable).parent / name
    path = str(found) if found.exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; pip install -e '.[dev]' installs it")
    return path


def test_imports_follow_the_layer_contracts() -> None:
    result = subprocess.run([_tool("lint-imports")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_code_is_ruff_clean_and_formatted() -> None:
    lint = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout[-4000:]
    fmt = subprocess.run([_tool("ruff"), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout[-4000:]


def test_no_module_is_over_300_lines() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / "hpo").rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_builtin_specs_have_one_source_in_studies() -> None:
    from hpo.spec.builtin import builtin_path, builtin_specs

    files = sorted(p.stem for p in (ROOT / "studies").glob("*.toml"))
    assert files and sorted(builtin_specs()) == files
    assert builtin_path("twin") is not None and builtin_path("twin").resolve() == (ROOT / "studies/twin.toml").resolve()
    assert list((ROOT / "hpo").rglob("*.toml")) == [], "a spec copied into the package would be a second source"


def test_every_package_is_listed_for_the_wheel() -> None:
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "hpo").rglob("__init__.py")}
    assert found <= listed, f"packages missing from pyproject.toml's list: {sorted(found - listed)}"
