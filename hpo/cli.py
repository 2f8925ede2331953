"""The `hpo` command line: flags and environment -> option dataclasses -> one call into hpo.app -> print."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, make_server

import typer

from hpo import __version__, reading, views
from hpo import app as application
from hpo.errors import HpoError
from hpo.storage import DEFAULT_STORAGE

app = typer.Typer(
    help="Automatic, shared hyperparameter search for twin CNNs on MNIST digit pairs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        views.out.print(f"hpo {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print hpo's version and exit.")] = False,
) -> None:
    """Automatic, shared hyperparameter search for twin CNNs on MNIST digit pairs."""
T = TypeVar("T")

StorageOpt = Annotated[
    str, typer.Option("--storage", envvar="HPO_STORAGE", help="SQLAlchemy URL of the study store (default: the SQLite file storage/hpo.db under the current folder; postgresql+psycopg://user:pass@host/db for many machines).")
]
DataDirOpt = Annotated[
    Optional[Path],
    typer.Option("--data-dir", envvar="HPO_DATA_DIR", help="Folder holding MNIST, downloaded there once when absent (default: ~/.cache/hpo, or $XDG_CACHE_HOME/hpo)."),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda (auto picks CUDA when present).")]
PrecisionOpt = Annotated[
    str,
    typer.Option(envvar="HPO_PRECISION", help="float32, bfloat16 (CPUs with native bfloat16: forward pass in bfloat16, loss and Adam in float32) or auto (float32, which trains faster than bfloat16 with hpo's own CPU kernels)."),
]


def fail(message: str) -> None:
    """One line on stderr, exit status 2: how every bad input ends."""
    views.say(f"error: {message}")
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


@app.command()
def optimize(
    trials: Annotated[int, typer.Option("--trials", "-n", help="Target number of finished (complete + pruned) trials in the study.")] = 200,
    spec: Annotated[str, typer.Option("--spec", envvar="HPO_SPEC", help="Study spec: a built-in name (see hpo specs) or a TOML file's path.")] = application.DEFAULT_SPEC,
    study: Annotated[Optional[str], typer.Option("--study", help="Study name (default: the spec's).")] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    data_dir: DataDirOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for pairs, folds, sampler and initialisation (default: the spec's).")] = None,
    folds: Annotated[Optional[int], typer.Option(help="Cross-validation folds (default: the spec's).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs per trial (default: the spec's).")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="tpe, random or grid (default: the spec's, else tpe).")] = None,
    pruner: Annotated[Optional[str], typer.Option(help="median, hyperband, sha or none (default: the spec's, else median).")] = None,
    enqueue: Annotated[
        Optional[bool],
        typer.Option("--enqueue-published/--no-enqueue-published", help="Start a new study with the published hand-tuned configurations (default: the spec's).", show_default=False),
    ] = None,
    max_params: Annotated[Optional[int], typer.Option(help="Parameter budget per network, as an Optuna constraint (default: the spec's, else none).")] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "float32",
    jobs: Annotated[str, typer.Option("--jobs", "-j", envvar="HPO_JOBS", help="Worker processes on this machine: auto (one per core, one torch thread each) or N.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(envvar="HPO_THREADS", help="Torch CPU threads per worker (default: 1 with several workers, else torch's).")] = None,
    heartbeat_interval: Annotated[int, typer.Option(envvar="HPO_HEARTBEAT_INTERVAL", help="Seconds between a running trial's heartbeats; a trial silent for 3 intervals is failed and retried.")] = 10,
    retries: Annotated[int, typer.Option(envvar="HPO_RETRIES", help="How many times a failed (dead or stopped worker's) trial is re-run with the same parameters.")] = 2,
    connect_timeout: Annotated[float, typer.Option(envvar="HPO_CONNECT_TIMEOUT", help="Seconds to keep retrying a database server that is not reachable yet.")] = 120.0,
    confirm: Annotated[int, typer.Option(help="Re-score this many leading trials on a second draw of training pairs before recommending one (0: off).")] = 5,
    allow_space_change: Annotated[bool, typer.Option("--allow-space-change", help="Continue a study whose spec searches other ranges or choices (everything else must match).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Optuna's log lines.")] = False,
) -> None:
    """Search hyperparameters until the study holds --trials finished trials (re-running continues it).

    Any number of workers started with the same command share the study.
    """
    from hpo.pool import resolve_jobs, run_pool
    from hpo.worker import Interrupted, finished_trials, stop_signals_raise

    workers, threads = checked(lambda: resolve_jobs(jobs, threads))
    options = application.OptimizeOptions(
        jobs=workers, trials=trials, spec=spec, study=study, storage=storage, data_dir=data_dir, seed=seed, folds=folds,
        epochs=epochs, sampler=sampler, pruner=pruner, enqueue_published=enqueue, max_params=max_params,
        device=device, threads=threads, heartbeat_interval=heartbeat_interval, retries=retries,
        connect_timeout=connect_timeout, confirm=confirm, verbose=verbose, allow_space_change=allow_space_change, precision=precision,
    )
    progress = views.StudyProgress()
    try:
        with user_errors(), stop_signals_raise():
            result = (run_pool if options.jobs > 1 else application.optimize)(options, progress)
    except Interrupted as exc:
        if progress.study is None:  # a signal before any trial ran: nothing to keep
            views.say(f"stopped by {exc}: no trial was running")
        else:
            views.say(views.interrupted_line(exc, progress.study.study_name, finished_trials(progress.study)))
        raise typer.Exit(128 + exc.signum) from None
    views.print_optimize(result)
    if result.failed_workers:
        views.say(f"{len(result.failed_workers)} of {options.jobs} workers failed: " + "; ".join(result.failed_workers))
        raise typer.Exit(1)


@app.command()
def specs() -> None:
    """List the built-in study specs (pass a name to --spec, or the path of your own TOML file)."""
    from hpo.specs import builtin_specs

    views.print_specs(builtin_specs())


@app.command()
def studies(storage: StorageOpt = DEFAULT_STORAGE) -> None:
    """List the studies in a storage with trial counts and best values."""
    views.print_studies(storage, checked(lambda: reading.list_studies(storage)))


@app.command()
def evaluate(
    study: Annotated[Optional[str], typer.Option("--study", help="Evaluate this study's recommended trial (or --trial N).")] = None,
    trial: Annotated[Optional[int], typer.Option("--trial", help="Trial number to evaluate (default: the recommended one).")] = None,
    spec: Annotated[Optional[str], typer.Option("--spec", help="Evaluate a spec whose parameters are all fixed values (a built-in name or a path).")] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    data_dir: DataDirOpt = None,
    rounds: Annotated[int, typer.Option("--rounds", "-r", help="Rounds: fresh train/test pairs and initialisation each.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed every round's pairs and initialisation derive from.")] = 0,
    pairs: Annotated[int, typer.Option("--pairs", help="Training pairs and test pairs per round.")] = 1000,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (default: the trial's or the spec's).")] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "float32",
    threads: Annotated[Optional[int], typer.Option(envvar="HPO_THREADS", help="Torch CPU threads (default: torch's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON (per-round test accuracies under 'accuracies').")] = False,
) -> None:
    """Test a configuration on unseen pairs over --rounds rounds, as the published tables report it."""
    import json

    options = application.EvaluateOptions(
        study=study, trial=trial, spec=spec, storage=storage, data_dir=data_dir, rounds=rounds, seed=seed,
        pairs=pairs, epochs=epochs, device=device, threads=threads, precision=precision,
    )
    result = checked(lambda: application.evaluate(options, views.EpochProgress()))
    if as_json:
        views.out.print_json(json.dumps(result.record))
    else:
        views.print_evaluation(result.label, result.params, result.evaluation)


@app.command()
def report(
    study: Annotated[str, typer.Option("--study", help="Study to report on.")],
    out_path: Annotated[Optional[Path], typer.Option("--out", help="HTML file to write (default: STUDY-report.html).")] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
) -> None:
    """Write one self-contained HTML report: Optuna's plots, our ablation summary, top trials, evaluation."""
    path = out_path or Path(f"{study}-report.html")
    loaded = checked(lambda: reading.report(study, storage, path))
    views.print_cells(loaded)
    views.out.print(f"wrote {path}")


@app.command()
def export(
    study: Annotated[str, typer.Option("--study", help="Study whose trials to export.")],
    fmt: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    out_path: Annotated[Optional[Path], typer.Option("--out", help="File to write (default: stdout).")] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
) -> None:
    """Write a study's trials (parameters, values, state, user attributes) as CSV or JSON."""
    text = checked(lambda: reading.export(study, storage, fmt, out_path))
    if text is not None:
        sys.stdout.write(text)


@app.command()
def dashboard(
    storage: StorageOpt = DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Serve optuna-dashboard on the study store the other commands use (Ctrl-C stops it)."""
    wsgi = checked(lambda: reading.dashboard_app(storage))
    try:
        server = make_server(host, port, wsgi, handler_class=_QuietHandler)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port")
    views.out.print(f"optuna-dashboard on {storage}: open http://{host}:{port}/dashboard (Ctrl-C stops it)", markup=False, highlight=False, soft_wrap=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


class _QuietHandler(WSGIRequestHandler):
    """No line per request on stderr."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass
