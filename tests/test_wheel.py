"""hpo as a tool: the wheel installs into a fresh environment and runs from an empty folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import hpo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `hpo` command of a fresh virtual environment holding the built wheel (no download)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy: building in the checkout would leave build/ behind, and reuse it
    shutil.copytree(ROOT / "hpo", source / "hpo", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (root / "dist").glob("hpo-*.whl")
    venv.create(root / "env", system_site_packages=True, with_pip=False)
    python = root / "env" / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True, capture_output=True, timeout=300)
    return root / "env" / "bin" / "hpo"


def run(hpo_bin: Path, folder: Path, *args: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(hpo_bin), *map(str, args)], cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_runs_the_main_command_from_an_empty_folder(installed, tmp_path, mnist_dir) -> None:
    folder = tmp_path / "anywhere"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HPO_JOBS")}
    env.update(HPO_DATA_DIR=str(Path(mnist_dir).resolve()), COLUMNS="200")

    version = run(installed, folder, "--version", env=env)
    assert version.returncode == 0 and version.stdout.strip() == f"hpo {hpo.__version__}"
    specs = run(installed, folder, "specs", env=env)
    assert specs.returncode == 0 and all(name in specs.stdout for name in ("twin", "ablation", "best", "pareto", "report-a"))

    where = subprocess.run([installed.parent / "python", "-c", "import hpo; print(hpo.__file__)"], cwd=folder, env=env,
                           capture_output=True, text=True, check=True)
    assert str(ROOT) not in where.stdout, "the command must run the installed wheel, not the checkout"

    optimize = run(installed, folder, "optimize", "--trials", 2, "--epochs", 1, "--folds", 2, env=env)
    assert optimize.returncode == 0, optimize.stderr
    assert "recommended trial of study 'twin'" in optimize.stdout
    assert (folder / "storage" / "hpo.db").is_file(), "the default store is a file in the folder it ran in"
    studies = run(installed, folder, "studies", env=env)
    assert studies.returncode == 0 and re.search(r"│ twin .*│ twin [0-9a-f]{8}", studies.stdout), studies.stdout
