"""hpo as a tool: the wheel installs into a fresh environment and runs from an empty folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import hpo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `hpo` command of a fresh virtual environment holding the built wheel (no download).

    The environment sees this interpreter's packages (torch, optuna...) through a .pth file
    listing its site-packages folders: `--system-site-packages` would give it the base
    interpreter's instead, which lack them when the tests run inside a virtual environment.
    """
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy: building in the checkout would leave build/ behind, and reuse it
    shutil.copytree(ROOT / "hpo", source / "hpo", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "studies", source / "studies", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    # Offline, with the setuptools at hand: a virtual environment made by `python -m venv` may
    # hold an older one (no bdist_wheel) than its base interpreter, whose build is as good.
    builders = dict.fromkeys([sys.executable, getattr(sys, "_base_executable", sys.executable)])
    failures = []
    for python in builders:
        build = subprocess.run(
            [python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"), source],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if build.returncode == 0:
            break
        failures.append(f"{python}: {build.stderr[-1500:]}")
    else:
        pytest.fail("no interpreter here builds the wheel offline: " + "\n".join(failures))
    (wheel,) = (root / "dist").glob("hpo-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {Path(name).name for name in archive.namelist() if name.startswith("hpo/studies/")}
    assert {p.name for p in (ROOT / "studies").glob("*.toml")} <= shipped, "the built-in specs ship in the wheel"
    venv.create(root / "env", with_pip=False)
    python = root / "env" / "bin" / "python"
    env_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (Path(env_site) / "_tests_parent_packages.pth").write_text("\n".join(ours) + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return root / "env" / "bin" / "hpo"


def run(hpo_bin: Path, folder: Path, *args: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(hpo_bin), *map(str, args)], cwd=folder, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_wheel_runs_the_main_command_from_an_empty_folder(installed, tmp_path, mnist_dir) -> None:
    folder = tmp_path / "anywhere"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HPO_JOBS")}
    env.update(HPO_DATA_DIR=str(Path(mnist_dir).resolve()), COLUMNS="200")

    version = run(installed, folder, "--version", env=env)
    assert version.returncode == 0 and version.stdout.strip() == f"hpo {hpo.__version__}"
    specs = run(installed, folder, "specs", env=env)
    assert specs.returncode == 0 and all(
        name in specs.stdout for name in ("twin", "ablation", "best", "pareto", "report-a")
    )

    where = subprocess.run(
        [installed.parent / "python", "-c", "import hpo; print(hpo.__file__)"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(ROOT) not in where.stdout, "the command must run the installed wheel, not the checkout"

    optimize = run(installed, folder, "optimize", "--trials", 2, "--epochs", 1, "--folds", 2, env=env)
    assert optimize.returncode == 0, optimize.stderr
    assert "recommended trial of study 'twin'" in optimize.stdout
    assert (folder / "storage" / "hpo.db").is_file(), "the default store is a file in the folder it ran in"
    studies = run(installed, folder, "studies", env=env)
    assert studies.returncode == 0 and re.search(r"│ twin .*│ twin [0-9a-f]{8}", studies.stdout), studies.stdout
