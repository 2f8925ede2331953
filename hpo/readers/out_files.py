"""Files a command writes (--out): checked before any work, written with one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

from hpo.errors import HpoError


def check_out(path: Path | None) -> None:
    """An --out file we could write, checked before any work; None means stdout."""
    if path is None:
        return
    if path.is_dir():
        raise HpoError(f"--out '{path}' is a folder; give a file path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise HpoError(f"cannot write --out '{path}': folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise HpoError(f"cannot write --out '{path}': permission denied")


def write_out(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise HpoError(f"cannot write --out '{path}': {exc.strerror or exc}") from None
