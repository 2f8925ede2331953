"""The Typer application, the options several commands share, and how a bad input ends: one line, exit 2."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from hpo import __version__, console
from hpo.errors import HpoError

cli = typer.Typer(
    help="Automatic, shared hyperparameter search for twin CNNs on MNIST digit pairs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        console.out.print(f"hpo {__version__}")
        raise typer.Exit()


@cli.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print hpo's version and exit.")
    ] = False,
) -> None:
    """Automatic, shared hyperparameter search for twin CNNs on MNIST digit pairs."""


T = TypeVar("T")

StorageOpt = Annotated[
    str,
    typer.Option(
        "--storage",
        envvar="HPO_STORAGE",
        help="SQLAlchemy URL of the study store (default: the SQLite file storage/hpo.db under the current folder; "
        "postgresql+psycopg://user:pass@host/db for many machines).",
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="HPO_DATA_DIR",
        help="Folder holding MNIST, downloaded there once when absent (default: ~/.cache/hpo, or $XDG_CACHE_HOME/hpo).",
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda (auto picks CUDA when present).")]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        envvar="HPO_PRECISION",
        help="float32, bfloat16 (CPUs with native bfloat16: forward pass in bfloat16, loss and Adam in float32) or "
        "auto (float32, which trains faster than bfloat16 with hpo's own CPU kernels).",
    ),
]


def fail(message: str) -> None:
    """One line on stderr, exit status 2: how every bad input ends."""
    console.say(f"error: {message}")
    raise typer.Exit(2)


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except HpoError as exc:
        fail(str(exc))


def checked(call: Callable[[], T]) -> T:
    with user_errors():
        return call()
    raise AssertionError("unreachable")
