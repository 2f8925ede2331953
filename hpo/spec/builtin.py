"""The built-in study specs: `--spec twin` names one, a path names a file.

They live in the repository's top-level studies/ folder, which the wheel ships as the package
`hpo.studies` (pyproject.toml maps one to the other), so there is one copy.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_PACKAGE = "hpo.studies"
DEFAULT = "twin"


def builtin_path(name: str) -> Path | None:
    """The built-in spec called `name` (with or without .toml), if there is one."""
    file = resources.files(_PACKAGE).joinpath(f"{name.removesuffix('.toml')}.toml")
    return Path(str(file)) if file.is_file() else None


def builtin_specs() -> dict[str, str]:
    """Each built-in spec's name and the first line of its comment header."""
    found = {}
    for file in sorted(resources.files(_PACKAGE).iterdir(), key=lambda f: f.name):
        if file.name.endswith(".toml"):
            first = next((line for line in file.read_text(encoding="utf-8").splitlines() if line.startswith("#")), "# ")
            found[file.name.removesuffix(".toml")] = first.lstrip("# ").strip()
    return found
