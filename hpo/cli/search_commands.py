"""`hpo optimize` and `hpo evaluate`: flags and environment -> option dataclasses -> one call into hpo.app -> print."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from hpo import app, console
from hpo.cli.base import DataDirOpt, DeviceOpt, PrecisionOpt, StorageOpt, checked, cli, fail, user_errors
from hpo.log_lines import LOG_FORMATS, TrialLog, wants_lines
from hpo.readers.results import DEFAULT_RULE
from hpo.store.connect import DEFAULT_STORAGE


@cli.command()
def optimize(
    trials: Annotated[
        int, typer.Option("--trials", "-n", help="Target number of finished (complete + pruned) trials in the study.")
    ] = 200,
    patience: Annotated[
        int,
        typer.Option(
            envvar="HPO_PATIENCE",
            help="Stop before --trials once the best CV score has risen by no more than its folds' standard error "
            "over this many finished trials (0: off; docs/results.md replays 30 and 50).",
        ),
    ] = 0,
    spec: Annotated[
        str,
        typer.Option(
            "--spec", envvar="HPO_SPEC", help="Study spec: a built-in name (see hpo specs) or a TOML file's path."
        ),
    ] = app.DEFAULT_SPEC,
    study: Annotated[str | None, typer.Option("--study", help="Study name (default: the spec's).")] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    data_dir: DataDirOpt = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for pairs, folds, sampler and initialisation (default: the spec's).")
    ] = None,
    folds: Annotated[int | None, typer.Option(help="Cross-validation folds (default: the spec's).")] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Training epochs per trial (default: the spec's); also how long hpo evaluate trains the "
            "recommendation, in place of the spec's final_epochs."
        ),
    ] = None,
    sampler: Annotated[
        str | None, typer.Option(help="tpe, random, gp or grid (default: the spec's, else tpe).")
    ] = None,
    pruner: Annotated[
        str | None,
        typer.Option(
            help="median, quartile (only the top quarter at each epoch goes on), hyperband, sha, wilcoxon or "
            "none (default: the spec's, else median)."
        ),
    ] = None,
    resample: Annotated[
        str | None,
        typer.Option(
            help="What each trial is scored on: fixed (one draw of pairs and folds), reshuffle (folds drawn "
            "again per trial) or fresh (pairs drawn again per trial); default: the spec's, else fixed."
        ),
    ] = None,
    enqueue: Annotated[
        bool | None,
        typer.Option(
            "--enqueue-published/--no-enqueue-published",
            help="Start a new study with the published hand-tuned configurations (default: the spec's).",
            show_default=False,
        ),
    ] = None,
    max_params: Annotated[
        int | None,
        typer.Option(help="Parameter budget per network, as an Optuna constraint (default: the spec's, else none)."),
    ] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "float32",
    jobs: Annotated[
        str,
        typer.Option(
            "--jobs",
            "-j",
            envvar="HPO_JOBS",
            help="Worker processes on this machine: auto (one per core, one torch thread each; on CUDA one per GPU) "
            "or N.",
        ),
    ] = "auto",
    threads: Annotated[
        int | None,
        typer.Option(
            envvar="HPO_THREADS", help="Torch CPU threads per worker (default: 1 with several workers, else torch's)."
        ),
    ] = None,
    heartbeat_interval: Annotated[
        int,
        typer.Option(
            envvar="HPO_HEARTBEAT_INTERVAL",
            help="Seconds between a running trial's heartbeats; a trial silent for 3 intervals is failed and retried.",
        ),
    ] = 10,
    retries: Annotated[
        int,
        typer.Option(
            envvar="HPO_RETRIES",
            help="How many times a failed (dead or stopped worker's) trial is re-run with the same parameters.",
        ),
    ] = 2,
    connect_timeout: Annotated[
        float,
        typer.Option(
            envvar="HPO_CONNECT_TIMEOUT", help="Seconds to keep retrying a database server that is not reachable yet."
        ),
    ] = 120.0,
    allow_space_change: Annotated[
        bool,
        typer.Option(
            "--allow-space-change",
            help="Continue a study whose spec searches other ranges or choices (everything else must match).",
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Optuna's log lines.")] = False,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            envvar="HPO_LOG_FORMAT",
            help="auto (a progress bar on a terminal, else log lines), bar, text (a line per finished trial and a "
            "summary every minute) or json (the same as JSON objects, for log collectors).",
        ),
    ] = "auto",
) -> None:
    """Search hyperparameters until the study holds --trials finished trials, or --patience says more stop paying.

    Re-running continues the study; any number of workers started with the same command share it.
    """
    from hpo.pool import cuda_devices, resolve_jobs, run_pool
    from hpo.search.loop import finished_trials
    from hpo.search.signals import Interrupted, stop_signals_raise

    workers, threads = checked(lambda: resolve_jobs(jobs, threads, cuda_devices(device)))
    options = app.OptimizeOptions(
        jobs=workers,
        trials=trials,
        patience=patience,
        spec=spec,
        study=study,
        storage=storage,
        data_dir=data_dir,
        seed=seed,
        folds=folds,
        epochs=epochs,
        sampler=sampler,
        pruner=pruner,
        resample=resample,
        enqueue_published=enqueue,
        max_params=max_params,
        device=device,
        threads=threads,
        heartbeat_interval=heartbeat_interval,
        retries=retries,
        connect_timeout=connect_timeout,
        verbose=verbose,
        allow_space_change=allow_space_change,
        precision=precision,
    )
    if log_format not in LOG_FORMATS:
        fail(f"--log-format must be one of {', '.join(LOG_FORMATS)}; got '{log_format}'")
    lines = wants_lines(log_format, sys.stderr)
    progress = TrialLog(json_lines=log_format == "json") if lines else console.StudyProgress()
    try:
        with user_errors(), stop_signals_raise():
            result = (run_pool if options.jobs > 1 else app.optimize)(options, progress)
    except Interrupted as exc:
        if progress.study is None:  # a signal before any trial ran: nothing to keep
            console.say(f"stopped by {exc}: no trial was running")
        else:
            console.say(console.interrupted_line(exc, progress.study.study_name, finished_trials(progress.study)))
        raise typer.Exit(128 + exc.signum) from None
    console.print_optimize(result)
    if result.failed_workers:
        console.say(
            f"{len(result.failed_workers)} of {options.jobs} workers failed: " + "; ".join(result.failed_workers)
        )
        raise typer.Exit(1)


@cli.command()
def evaluate(
    study: Annotated[
        str | None, typer.Option("--study", help="Evaluate this study's recommended trial (or --trial N).")
    ] = None,
    trial: Annotated[
        int | None, typer.Option("--trial", help="Trial number to evaluate (default: the recommended one).")
    ] = None,
    spec: Annotated[
        str | None,
        typer.Option(
            "--spec", help="Evaluate a spec whose parameters are all fixed values (a built-in name or a path)."
        ),
    ] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    data_dir: DataDirOpt = None,
    rounds: Annotated[
        int, typer.Option("--rounds", "-r", help="Rounds: fresh train/test pairs and initialisation each.")
    ] = 10,
    seed: Annotated[int, typer.Option(help="Seed every round's pairs and initialisation derive from.")] = 0,
    pairs: Annotated[int, typer.Option("--pairs", help="Training pairs and test pairs per round.")] = 1000,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Training epochs (default: the spec's final_epochs, else its epochs; for a study's trial, "
            "those it was searched with)."
        ),
    ] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "float32",
    threads: Annotated[
        int | None, typer.Option(envvar="HPO_THREADS", help="Torch CPU threads (default: torch's).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON (per-round test accuracies under 'accuracies').")
    ] = False,
    pick: Annotated[
        str,
        typer.Option(
            help="How the recommended trial is chosen: logloss (the lowest out-of-fold log loss among the 50 "
            "leaders by CV), best (the best CV score), one-se or lcb (docs/results.md)."
        ),
    ] = DEFAULT_RULE,
    ensemble: Annotated[
        int,
        typer.Option(
            help="Test an ensemble of K members picked by greedy selection on the trials' out-of-fold predictions."
        ),
    ] = 0,
    ensemble_mode: Annotated[
        str,
        typer.Option(
            help="What a trial selection picked twice becomes: retrain (two networks from different seeds) or "
            "weighted (one network counted twice); seeds: the recommended trial trained K times, no selection."
        ),
    ] = "retrain",
) -> None:
    """Test a configuration on unseen pairs over --rounds rounds, as the published tables report it."""
    import json

    options = app.EvaluateOptions(
        study=study,
        trial=trial,
        spec=spec,
        storage=storage,
        data_dir=data_dir,
        rounds=rounds,
        seed=seed,
        pairs=pairs,
        epochs=epochs,
        device=device,
        threads=threads,
        precision=precision,
        pick=pick,
        ensemble=ensemble,
        ensemble_mode=ensemble_mode,
    )
    result = checked(lambda: app.evaluate(options, console.EpochProgress()))
    if as_json:
        console.out.print_json(json.dumps(result.record))
    else:
        console.print_evaluation(result.label, result.params, result.evaluation)
        for member, alone in result.members:
            console.say(
                f"member #{member.trial} (copy {member.copy}, weight {member.weight}) alone: "
                f"{100 * alone.mean:.2f} ± {100 * alone.std:.2f}"
            )
