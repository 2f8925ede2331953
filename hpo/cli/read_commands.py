"""The read-only commands: specs, studies, report, export, dashboard (no torch is imported)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated
from wsgiref.simple_server import WSGIRequestHandler, make_server

import typer

from hpo import console
from hpo.cli.base import StorageOpt, checked, cli, fail
from hpo.readers import listing
from hpo.store.connect import DEFAULT_STORAGE, shown_url


@cli.command()
def specs() -> None:
    """List the built-in study specs (pass a name to --spec, or the path of your own TOML file)."""
    from hpo.spec.builtin import builtin_specs

    console.print_specs(builtin_specs())


@cli.command()
def studies(storage: StorageOpt = DEFAULT_STORAGE) -> None:
    """List the studies in a storage with trial counts and best values."""
    console.print_studies(storage, checked(lambda: listing.list_studies(storage)))


@cli.command()
def report(
    study: Annotated[str, typer.Option("--study", help="Study to report on.")],
    out_path: Annotated[
        Path | None, typer.Option("--out", help="HTML file to write (default: STUDY-report.html).")
    ] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
) -> None:
    """Write one self-contained HTML report: Optuna's plots, our ablation summary, top trials, evaluation."""
    path = out_path or Path(f"{study}-report.html")
    loaded = checked(lambda: listing.report(study, storage, path))
    console.print_cells(loaded)
    console.out.print(f"wrote {path}")


@cli.command()
def export(
    study: Annotated[str, typer.Option("--study", help="Study whose trials to export.")],
    fmt: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    out_path: Annotated[Path | None, typer.Option("--out", help="File to write (default: stdout).")] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
) -> None:
    """Write a study's trials (parameters, values, state, user attributes) as CSV or JSON."""
    text = checked(lambda: listing.export(study, storage, fmt, out_path))
    if text is not None:
        sys.stdout.write(text)


@cli.command()
def dashboard(
    storage: StorageOpt = DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Serve optuna-dashboard on the study store the other commands use (Ctrl-C stops it)."""
    wsgi = checked(lambda: listing.dashboard_app(storage))
    try:
        server = make_server(host, port, wsgi, handler_class=_QuietHandler)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port")
    console.out.print(
        f"optuna-dashboard on {shown_url(storage)}: open http://{host}:{port}/dashboard (Ctrl-C stops it)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


class _QuietHandler(WSGIRequestHandler):
    """No line per request on stderr."""

    def log_message(self, format: str, *args: object) -> None:
        pass
