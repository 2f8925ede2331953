"""The `hpo` command line: flags and environment -> specs, storage URLs and calls. No ML here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional
from wsgiref.simple_server import WSGIRequestHandler

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hpo.errors import HpoError

app = typer.Typer(
    help="Automatic, shared hyperparameter search for twin CNNs on MNIST digit pairs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

DEFAULT_SPEC = Path("studies/twin.toml")

StorageOpt = Annotated[
    Optional[str],
    typer.Option("--storage", envvar="HPO_STORAGE", help="SQLAlchemy URL of the study store (default: sqlite:///storage/hpo.db)."),
]
DataDirOpt = Annotated[
    Optional[Path],
    typer.Option("--data-dir", envvar="HPO_DATA_DIR", help="Folder holding MNIST (downloaded there when absent) (default: data)."),
]


def fail(message: str) -> None:
    """One line on stderr, exit status 2: how every bad input ends."""
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def storage_url(flag: Optional[str]) -> str:
    from hpo.study import DEFAULT_STORAGE

    return flag or DEFAULT_STORAGE


@app.command()
def optimize(
    trials: Annotated[int, typer.Option("--trials", "-n", help="Target number of finished (complete + pruned) trials in the study.")] = 200,
    spec_path: Annotated[Path, typer.Option("--spec", help="Study spec (TOML): search space and training settings.")] = DEFAULT_SPEC,
    study: Annotated[Optional[str], typer.Option("--study", help="Study name (default: the spec's).")] = None,
    storage: StorageOpt = None,
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
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (auto picks CUDA when present).")] = "auto",
    threads: Annotated[Optional[int], typer.Option(envvar="HPO_THREADS", help="Torch CPU threads for this worker (default: torch's).")] = None,
    heartbeat_interval: Annotated[int, typer.Option(envvar="HPO_HEARTBEAT_INTERVAL", help="Seconds between a running trial's heartbeats; a trial silent for 3 intervals is failed and retried.")] = 10,
    retries: Annotated[int, typer.Option(envvar="HPO_RETRIES", help="How many times a failed (dead or stopped worker's) trial is re-run with the same parameters.")] = 2,
    connect_timeout: Annotated[float, typer.Option(envvar="HPO_CONNECT_TIMEOUT", help="Seconds to keep retrying a database server that is not reachable yet.")] = 120.0,
    confirm: Annotated[int, typer.Option(help="Re-score this many leading trials on a second draw of training pairs before recommending one (0: off).")] = 5,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Optuna's log lines.")] = False,
) -> None:
    """Search hyperparameters until the study holds --trials finished trials (re-running continues it).

    Any number of workers started with the same command share the study.
    """
    from hpo.study import stop_signals_raise

    try:
        run = _prepare_optimize(
            spec_path, study, seed, folds, epochs, sampler, pruner, enqueue, max_params, trials, device, threads, storage
        )
        worker = _check_worker_options(heartbeat_interval, retries, connect_timeout)
        if confirm < 0:
            raise HpoError(f"--confirm must be 0 or more; got {confirm}")
        with stop_signals_raise():
            _optimize(run, data_dir, trials, verbose, worker, confirm)
    except HpoError as exc:
        fail(str(exc))
    except KeyboardInterrupt as exc:  # a signal before any trial ran: nothing to keep
        err.print(f"stopped by {exc}: no trial was running", markup=False, highlight=False)
        raise typer.Exit(128 + getattr(exc, "signum", 2)) from None


def _check_worker_options(heartbeat_interval: int, retries: int, connect_timeout: float) -> dict:
    if heartbeat_interval < 1:
        raise HpoError(f"--heartbeat-interval must be at least 1 second; got {heartbeat_interval}")
    if retries < 0:
        raise HpoError(f"--retries must be 0 or more; got {retries}")
    if connect_timeout < 0:
        raise HpoError(f"--connect-timeout must be 0 or more seconds; got {connect_timeout:g}")
    return {"heartbeat_interval": heartbeat_interval, "retries": retries, "connect_timeout": connect_timeout}


def _prepare_optimize(spec_path, study, seed, folds, epochs, sampler, pruner, enqueue, max_params, trials, device, threads, storage):  # type: ignore[no-untyped-def]
    """Every check that needs no data and no database, in the order a user would fix them."""
    from hpo.spec import load_spec
    from hpo.study import check_storage_url
    from hpo.train import resolve_device

    spec = load_spec(spec_path).with_overrides(
        name=study, seed=seed, folds=folds, epochs=epochs, sampler=sampler, pruner=pruner,
        enqueue_published=enqueue, max_params=max_params,
    )
    if trials < 1:
        raise HpoError(f"--trials must be at least 1; got {trials}")
    resolve_device(device)
    if threads is not None and threads < 1:
        raise HpoError(f"--threads must be at least 1; got {threads}")
    url = storage_url(storage)
    check_storage_url(url)
    return spec, url, device, threads


def _optimize(run, data_dir: Optional[Path], trials: int, verbose: bool, worker: dict, confirm: int) -> None:  # type: ignore[no-untyped-def]
    import optuna
    import torch

    from hpo.data import cv_pairs, resolve_data_dir
    from hpo.objective import Objective
    from hpo.study import Interrupted, finished_trials, load_or_create, open_storage, run_until
    from hpo.train import resolve_device

    spec, url, device_name, threads = run
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device_name)
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.ERROR)
    data_dir = resolve_data_dir(data_dir)
    pairs = cv_pairs(data_dir, spec.train.train_pairs, spec.seed)
    study = load_or_create(spec, open_storage(url, **worker))
    objective = Objective(spec, pairs, device)
    with _trial_progress(study, trials) as on_trial:
        try:
            run_until(study, objective, trials, callbacks=[on_trial], retries=worker["retries"])
        except Interrupted as exc:
            on_trial.progress.stop()
            err.print(_interrupted_line(exc, spec.name, finished_trials(study)), markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(128 + exc.signum) from None
    if confirm and not spec.multi_objective:
        _confirm(study, spec, data_dir, confirm, device)
    _print_best(study)


def _confirm(study, spec, data_dir: Path, top: int, device) -> None:  # type: ignore[no-untyped-def]
    """Re-score the leaders on a second draw of pairs (hpo.confirm), one line each."""
    from hpo.confirm import confirm_leaders

    def line(trial, value: float) -> None:  # type: ignore[no-untyped-def]
        err.print(f"confirmed trial #{trial.number}: CV {trial.value:.4f}, on a second draw of pairs {value:.4f}", markup=False, highlight=False)

    confirm_leaders(study, spec, data_dir, top, device, on_confirmed=line)


def _interrupted_line(exc, study_name: str, finished: int) -> str:  # type: ignore[no-untyped-def]
    """What a stopped worker leaves behind, in one line."""
    line = f"interrupted by {exc}: study '{study_name}' keeps its {finished} finished trials"
    if exc.trial_number is None:
        return line + "; no trial was running"
    if exc.retry is None:
        return line + f"; the running trial #{exc.trial_number} was marked FAIL (no retries left)"
    return line + f"; the running trial #{exc.trial_number} was marked FAIL and queued for retry as #{exc.retry}"


class _trial_progress:
    """A progress bar over finished trials that shows the best value so far."""

    def __init__(self, study, target: int) -> None:  # type: ignore[no-untyped-def]
        from hpo.study import finished_trials

        self.study = study
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("best {task.fields[best]}"),
            TimeElapsedColumn(),
            console=err,
        )
        self.task = self.progress.add_task(
            f"study {study.study_name}", total=target, completed=min(finished_trials(study), target), best=self._best()
        )

    def _best(self) -> str:
        if len(self.study.directions) > 1:
            return f"pareto {len(self.study.best_trials)}"
        try:
            return f"{self.study.best_value:.4f}"
        except ValueError:
            return "-"

    def __enter__(self):  # type: ignore[no-untyped-def]
        self.progress.start()
        return self

    def __call__(self, study, trial) -> None:  # type: ignore[no-untyped-def]
        from hpo.study import finished_trials

        self.progress.update(self.task, completed=finished_trials(study), best=self._best())

    def __exit__(self, *exc) -> None:  # type: ignore[no-untyped-def]
        self.progress.stop()


def _print_best(study) -> None:  # type: ignore[no-untyped-def]
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        out.print(f"study '{study.study_name}' has no complete trial yet")
        return
    if len(study.directions) > 1:
        _print_pareto(study)
        return
    from hpo.confirm import scores
    from hpo.results import pick_trial

    best = pick_trial(study, None)
    second = scores(study).get(best.number)
    how = "best mean CV over two draws of pairs" if second is not None else "best CV"
    table = Table(title=f"recommended trial of study '{study.study_name}': #{best.number} ({how})")
    table.add_column("parameter")
    table.add_column("value", justify="right")
    for name, value in best.params.items():
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    table.add_row("[bold]CV accuracy", f"[bold]{best.value:.4f}")
    if second is not None:
        table.add_row("CV accuracy, second draw", f"{second:.4f}")
    folds = best.user_attrs.get("fold_accuracies")
    if folds:
        table.add_row("fold accuracies", " ".join(f"{a:.3f}" for a in folds))
    out.print(table)


def _print_pareto(study) -> None:  # type: ignore[no-untyped-def]
    names = study.metric_names or [f"value {i}" for i in range(len(study.directions))]
    table = Table(title=f"Pareto front of study '{study.study_name}'")
    table.add_column("trial", justify="right")
    for name, direction in zip(names, study.directions):
        table.add_column(f"{name} ({direction.name.lower()})", justify="right")
    for trial in sorted(study.best_trials, key=lambda t: t.values[0]):
        table.add_row(str(trial.number), *(f"{v:.4g}" for v in trial.values))
    out.print(table)


@app.command()
def studies(storage: StorageOpt = None) -> None:
    """List the studies in a storage with trial counts and best values."""
    try:
        _studies(storage_url(storage))
    except HpoError as exc:
        fail(str(exc))


def _studies(url: str) -> None:
    import optuna
    from optuna.trial import TrialState

    from hpo.results import open_existing_storage

    storage = open_existing_storage(url)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=True)
    if not summaries:
        out.print(f"no studies in {url}")
        return
    table = Table(title=f"studies in {url}")
    for col in ("study", "trials", "complete", "pruned", "failed", "running", "best value"):
        table.add_column(col, justify="left" if col == "study" else "right")
    for s in summaries:
        trials = optuna.load_study(study_name=s.study_name, storage=storage).get_trials(deepcopy=False)
        count = {state: sum(t.state == state for t in trials) for state in TrialState}
        best = f"{s.best_trial.value:.4f}" if s.best_trial is not None and s.best_trial.value is not None else "-"
        table.add_row(
            s.study_name,
            str(len(trials)),
            str(count[TrialState.COMPLETE]),
            str(count[TrialState.PRUNED]),
            str(count[TrialState.FAIL]),
            str(count[TrialState.RUNNING]),
            best,
        )
    out.print(table)


@app.command()
def evaluate(
    study: Annotated[Optional[str], typer.Option("--study", help="Evaluate this study's best trial (or --trial N).")] = None,
    trial: Annotated[Optional[int], typer.Option("--trial", help="Trial number to evaluate (default: the best).")] = None,
    spec_path: Annotated[Optional[Path], typer.Option("--spec", help="Evaluate a spec whose parameters are all fixed values.")] = None,
    storage: StorageOpt = None,
    data_dir: DataDirOpt = None,
    rounds: Annotated[int, typer.Option("--rounds", "-r", help="Rounds: fresh train/test pairs and initialisation each.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed every round's pairs and initialisation derive from.")] = 0,
    pairs: Annotated[int, typer.Option("--pairs", help="Training pairs and test pairs per round.")] = 1000,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (default: the trial's or the spec's).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (auto picks CUDA when present).")] = "auto",
    threads: Annotated[Optional[int], typer.Option(envvar="HPO_THREADS", help="Torch CPU threads (default: torch's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON (per-round test accuracies under 'accuracies').")] = False,
) -> None:
    """Test a configuration on unseen pairs over --rounds rounds, as the published tables report it."""
    try:
        _evaluate(study, trial, spec_path, storage_url(storage), data_dir, rounds, seed, pairs, epochs, device, threads, as_json)
    except HpoError as exc:
        fail(str(exc))


def _evaluate(study_name, trial_no, spec_path, url, data_dir, rounds, seed, n_pairs, epochs, device_name, threads, as_json) -> None:  # type: ignore[no-untyped-def]
    import json

    import torch

    from hpo.data import resolve_data_dir
    from hpo.evaluate import configs, round_pairs
    from hpo.evaluate import evaluate as run_rounds
    from hpo.train import Diverged, resolve_device

    if (study_name is None) == (spec_path is None):
        raise HpoError("give either --study NAME (its best trial, or --trial N) or --spec FILE with all parameters fixed")
    if trial_no is not None and study_name is None:
        raise HpoError("--trial needs --study")
    for flag, value in (("--rounds", rounds), ("--pairs", n_pairs), ("--epochs", epochs), ("--threads", threads)):
        if value is not None and value < 1:
            raise HpoError(f"{flag} must be at least 1; got {value}")
    resolve_device(device_name)
    study = None
    if spec_path is not None:
        params, training, label = _fixed_spec(spec_path)
    else:
        from hpo.results import full_params, load_existing_study, pick_trial, trial_training

        study = load_existing_study(url, study_name)
        chosen = pick_trial(study, trial_no)
        params, training, trial_no = full_params(chosen), trial_training(chosen), chosen.number
        label = f"trial #{chosen.number} of study '{study_name}'"
    model_cfg, train_cfg = configs(params, epochs or training.epochs, training.batch_size)
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device_name)
    data = round_pairs(resolve_data_dir(data_dir), rounds, n_pairs, seed)
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"), TimeElapsedColumn(), console=err
    )
    with progress:
        task = progress.add_task(f"{rounds} rounds (trained together)", total=train_cfg.epochs)
        try:
            result = run_rounds(
                model_cfg, train_cfg, data, seed, device, on_epoch=lambda epoch, _: progress.update(task, completed=epoch), trial=trial_no
            )
        except Diverged as exc:
            raise HpoError(f"evaluation of {label} diverged: {exc}") from None
    record = {"study": study_name, **result.to_dict(), "params": params}
    if study is not None:
        from hpo.results import save_evaluation

        save_evaluation(study, record)
    if as_json:
        out.print_json(json.dumps(record))
    else:
        _print_evaluation(label, params, result)


def _fixed_spec(path: Path):  # type: ignore[no-untyped-def]
    """A spec's fixed parameters and training settings, or why it cannot be evaluated."""
    from hpo.objective import fixed_params
    from hpo.spec import load_spec

    spec = load_spec(path)
    if not spec.is_fixed:
        unfixed = ", ".join(n for n, p in spec.space.items() if n not in fixed_params(spec))
        raise HpoError(f"spec '{path}' leaves {unfixed} to the search; evaluate needs every parameter fixed (or use --study)")
    return fixed_params(spec), spec.train, f"spec '{path}'"


def _print_evaluation(label: str, params: dict, result) -> None:  # type: ignore[no-untyped-def]
    table = Table(title=f"test evaluation of {label}")
    table.add_column("")
    table.add_column("value", justify="right")
    for name, value in params.items():
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    table.add_row("[bold]test accuracy (%)", f"[bold]{100 * result.mean:.2f} ± {100 * result.std:.2f}")
    table.add_row("digit (auxiliary) accuracy (%)", f"{100 * result.digit_mean:.2f}")
    table.add_row("parameters", f"{result.n_params:,}")
    table.add_row("seconds per training", f"{result.seconds_per_training:.2f} (amortised: {result.rounds} rounds trained together in {result.seconds:.1f} s)")
    table.add_row("rounds, pairs, epochs, seed", f"{result.rounds}, {result.pairs}+{result.pairs}, {result.epochs}, {result.seed}")
    table.add_row("round accuracies", " ".join(f"{a:.3f}" for a in result.accuracies))
    out.print(table)


def check_out(path: Optional[Path]) -> None:
    """An --out file we could write, checked before any work; None means stdout."""
    if path is None:
        return
    if path.is_dir():
        raise HpoError(f"--out '{path}' is a folder; give a file path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise HpoError(f"cannot write --out '{path}': folder '{parent}' does not exist")
    import os

    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise HpoError(f"cannot write --out '{path}': permission denied")


def write_out(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise HpoError(f"cannot write --out '{path}': {exc.strerror or exc}") from None


@app.command()
def report(
    study: Annotated[str, typer.Option("--study", help="Study to report on.")],
    out_path: Annotated[Optional[Path], typer.Option("--out", help="HTML file to write (default: STUDY-report.html).")] = None,
    storage: StorageOpt = None,
) -> None:
    """Write one self-contained HTML report: Optuna's plots, our ablation summary, top trials, evaluation."""
    try:
        from hpo.report import ablation_cells, build_report
        from hpo.results import load_existing_study

        path = out_path or Path(f"{study}-report.html")
        check_out(path)
        loaded = load_existing_study(storage_url(storage), study)
        write_out(path, build_report(loaded))
    except HpoError as exc:
        fail(str(exc))
    cells = ablation_cells(loaded)
    if len(cells) > 1:
        table = Table(title="weight sharing x auxiliary loss (complete trials)")
        for col in ("weight sharing", "aux loss", "trials", "mean CV accuracy", "std"):
            table.add_column(col, justify="right")
        for c in cells:
            table.add_row("on" if c.weight_sharing else "off", "on" if c.aux_loss else "off", str(len(c.values)), f"{c.mean:.4f}", f"{c.std:.4f}")
        out.print(table)
    out.print(f"wrote {path}")


@app.command()
def export(
    study: Annotated[str, typer.Option("--study", help="Study whose trials to export.")],
    fmt: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    out_path: Annotated[Optional[Path], typer.Option("--out", help="File to write (default: stdout).")] = None,
    storage: StorageOpt = None,
) -> None:
    """Write a study's trials (parameters, values, state, user attributes) as CSV or JSON."""
    try:
        from hpo.export import FORMATS
        from hpo.export import export as render
        from hpo.results import load_existing_study

        if fmt not in FORMATS:
            raise HpoError(f"--format must be csv or json; got '{fmt}'")
        check_out(out_path)
        text = render(load_existing_study(storage_url(storage), study), fmt)
        if out_path is None:
            sys.stdout.write(text)
        else:
            write_out(out_path, text)
    except HpoError as exc:
        fail(str(exc))


@app.command()
def dashboard(
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Serve optuna-dashboard on the study store the other commands use (Ctrl-C stops it)."""
    from wsgiref.simple_server import make_server

    try:
        from optuna_dashboard import wsgi

        from hpo.results import open_existing_storage

        url = storage_url(storage)
        app_ = wsgi(open_existing_storage(url))
        try:
            server = make_server(host, port, app_, handler_class=_QuietHandler)
        except OSError as exc:
            raise HpoError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port") from None
    except HpoError as exc:
        fail(str(exc))
    out.print(f"optuna-dashboard on {url}: open http://{host}:{port}/dashboard (Ctrl-C stops it)", markup=False, highlight=False, soft_wrap=True)
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

