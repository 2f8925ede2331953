"""What the training commands do, as typed functions over frozen option dataclasses: optimize, evaluate.

The CLI parses flags into these options, calls one function and prints what it returns; the
benchmarks and tests call the same functions (hpo.pool runs several optimize workers, and
hpo.reading holds the read-only commands). Modules that need torch are imported inside the
functions that train, so the CLI starts without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HpoError
from hpo.results import is_multi_objective, load_existing_study, pick_trial, scores
from hpo.spec import StudySpec, load_spec
from hpo.storage import (
    DEFAULT_RETRIES,
    DEFAULT_STORAGE,
    check_storage_url,
    open_storage,
)

DEFAULT_SPEC = "twin"  # built-in (hpo/specs/twin.toml)


@dataclass(frozen=True)
class OptimizeOptions:
    """`hpo optimize`: None means "the spec's value" for the study settings."""

    trials: int = 200
    spec: str | Path = DEFAULT_SPEC
    study: str | None = None
    storage: str = DEFAULT_STORAGE
    data_dir: Path | None = None
    seed: int | None = None
    folds: int | None = None
    epochs: int | None = None
    sampler: str | None = None
    pruner: str | None = None
    enqueue_published: bool | None = None
    max_params: int | None = None
    device: str = "auto"
    threads: int | None = None
    heartbeat_interval: int = 10
    retries: int = DEFAULT_RETRIES
    connect_timeout: float = 120.0
    confirm: int = 5
    verbose: bool = False
    allow_space_change: bool = False
    precision: str = "float32"  # or bfloat16 / auto (bfloat16 where the CPU has it natively)
    jobs: int = 1  # worker processes: hpo.pool runs several, each through optimize() with jobs=1


class OptimizeEvents(Protocol):
    """What a caller is told while a study runs (the CLI draws a progress bar from it)."""

    def notice(self, line: str) -> None: ...
    def started(self, study: optuna.Study, target: int) -> None: ...
    def trial_finished(self, study: optuna.Study, trial: FrozenTrial | None) -> None: ...
    def stopped(self) -> None: ...
    def confirmed(self, trial: FrozenTrial, value: float) -> None: ...
    def confirm_failed(self, trial: FrozenTrial, reason: str) -> None: ...


class Silent:
    """Events nobody watches (benchmarks)."""

    def notice(self, line: str) -> None:
        pass

    def started(self, study: optuna.Study, target: int) -> None:
        pass

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial | None) -> None:
        pass

    def stopped(self) -> None:
        pass

    def confirmed(self, trial: FrozenTrial, value: float) -> None:
        pass

    def confirm_failed(self, trial: FrozenTrial, reason: str) -> None:
        pass


@dataclass(frozen=True)
class OptimizeResult:
    study: optuna.Study
    recommended: FrozenTrial | None  # single objective: the trial to test; None before any completes
    second_score: float | None  # its CV accuracy on the second draw, when confirmed
    pareto: list[FrozenTrial] = field(default_factory=list)  # several objectives: the front
    failed_workers: list[str] = field(default_factory=list)  # --jobs: one line per worker that failed


def check_optimize(options: OptimizeOptions) -> StudySpec:
    """Every check that needs no data and no database, in the order a user would fix them."""
    from hpo.train import resolve_device, resolve_precision

    o = options
    spec = load_spec(o.spec).with_overrides(
        name=o.study, seed=o.seed, folds=o.folds, epochs=o.epochs, sampler=o.sampler, pruner=o.pruner,
        enqueue_published=o.enqueue_published, max_params=o.max_params,
    )
    if o.trials < 1:
        raise HpoError(f"--trials must be at least 1; got {o.trials}")
    resolve_device(o.device)
    resolve_precision(o.precision)
    if o.threads is not None and o.threads < 1:
        raise HpoError(f"--threads must be at least 1; got {o.threads}")
    check_storage_url(o.storage)
    if o.heartbeat_interval < 1:
        raise HpoError(f"--heartbeat-interval must be at least 1 second; got {o.heartbeat_interval}")
    if o.retries < 0:
        raise HpoError(f"--retries must be 0 or more; got {o.retries}")
    if o.connect_timeout < 0:
        raise HpoError(f"--connect-timeout must be 0 or more seconds; got {o.connect_timeout:g}")
    if o.confirm < 0:
        raise HpoError(f"--confirm must be 0 or more; got {o.confirm}")
    return spec


def optimize(options: OptimizeOptions, events: OptimizeEvents) -> OptimizeResult:
    """Run the study until it holds `options.trials` finished trials, then confirm its leaders.

    Raises worker.Interrupted when SIGTERM or SIGINT stops it (the trial in hand is failed
    and queued for retry first).
    """
    import torch

    from hpo.data import cv_pairs, resolve_data_dir
    from hpo.objective import Objective
    from hpo.train import resolve_device, resolve_precision
    from hpo.worker import run_until

    spec = check_optimize(options)
    if options.threads:
        torch.set_num_threads(options.threads)
    device = resolve_device(options.device)
    data_dir = resolve_data_dir(options.data_dir)
    pairs = cv_pairs(data_dir, spec.train.train_pairs, spec.seed)
    study, storage = open_study(options, spec, events.notice)
    events.started(study, options.trials)
    try:
        precision = resolve_precision(options.precision)
        run_until(study, Objective(spec, pairs, device, precision), options.trials, callbacks=[events.trial_finished], retries=options.retries)
    finally:
        events.stopped()
    confirm(options, spec, study, storage, events)
    return optimize_result(study)


def confirm(options: OptimizeOptions, spec: StudySpec, study: optuna.Study, storage: Any, events: OptimizeEvents) -> None:
    """Re-score the leaders on a second draw of pairs (hpo.confirm), unless turned off."""
    if not options.confirm or spec.multi_objective:
        return
    from hpo.confirm import confirm_leaders
    from hpo.data import resolve_data_dir
    from hpo.train import resolve_device

    data_dir, device = resolve_data_dir(options.data_dir), resolve_device(options.device)
    confirm_leaders(study, spec, data_dir, options.confirm, device, events, storage=storage, precision=options.precision)


def open_study(options: OptimizeOptions, spec: StudySpec, notify: Any) -> tuple[optuna.Study, Any]:
    """The study store opened for a worker (waiting out outages) and the study, created or checked."""
    from hpo.study import load_or_create

    optuna.logging.set_verbosity(optuna.logging.INFO if options.verbose else optuna.logging.ERROR)
    storage = open_storage(
        options.storage, heartbeat_interval=options.heartbeat_interval, retries=options.retries,
        connect_timeout=options.connect_timeout, notify=notify,
    )
    return load_or_create(spec, storage, options.allow_space_change), storage


def optimize_result(study: optuna.Study) -> OptimizeResult:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return OptimizeResult(study, None, None)
    if is_multi_objective(study):
        return OptimizeResult(study, None, None, sorted(study.best_trials, key=lambda t: t.values[0]))
    best = pick_trial(study, None)
    return OptimizeResult(study, best, scores(study).get(best.number))


@dataclass(frozen=True)
class EvaluateOptions:
    """`hpo evaluate`: a study's trial (recommended, or `trial`) or a spec with every parameter fixed."""

    study: str | None = None
    trial: int | None = None
    spec: str | Path | None = None
    storage: str = DEFAULT_STORAGE
    data_dir: Path | None = None
    rounds: int = 10
    seed: int = 0
    pairs: int = 1000
    epochs: int | None = None
    device: str = "auto"
    threads: int | None = None
    precision: str = "float32"


class EpochEvents(Protocol):
    """What a caller is told while the rounds train (the CLI draws a progress bar from it)."""

    def started(self, description: str, epochs: int) -> None: ...
    def epoch(self, done: int) -> None: ...
    def stopped(self) -> None: ...


@dataclass(frozen=True)
class EvaluateResult:
    label: str  # what was evaluated, for titles
    params: dict[str, Any]
    evaluation: Any  # hpo.evaluate.Evaluation
    record: dict[str, Any]  # the JSON form, also saved in the study


def evaluate(options: EvaluateOptions, events: EpochEvents | None = None) -> EvaluateResult:
    """Train `rounds` fresh models of the configuration and test each on unseen pairs."""
    import torch

    from hpo.data import resolve_data_dir
    from hpo.evaluate import evaluate as run_rounds
    from hpo.evaluate import round_pairs
    from hpo.params import configs
    from hpo.train import Diverged, resolve_device, resolve_precision

    o = options
    if (o.study is None) == (o.spec is None):
        raise HpoError("give either --study NAME (its best trial, or --trial N) or --spec FILE with all parameters fixed")
    if o.trial is not None and o.study is None:
        raise HpoError("--trial needs --study")
    for flag, value in (("--rounds", o.rounds), ("--pairs", o.pairs), ("--epochs", o.epochs), ("--threads", o.threads)):
        if value is not None and value < 1:
            raise HpoError(f"{flag} must be at least 1; got {value}")
    resolve_device(o.device)
    precision = resolve_precision(o.precision)
    study, trial_no = None, None
    if o.spec is not None:
        spec = load_spec(o.spec)
        if not spec.is_fixed:
            unfixed = ", ".join(n for n in spec.space if n not in spec.fixed_params())
            raise HpoError(f"spec '{o.spec}' leaves {unfixed} to the search; evaluate needs every parameter fixed (or use --study)")
        params, settings, label = spec.fixed_params(), spec.train, f"spec '{o.spec}'"
    else:
        from hpo.results import recipe

        study = load_existing_study(o.storage, o.study)
        chosen = pick_trial(study, o.trial)
        how = recipe(chosen)
        params, settings, trial_no = how.params, how.settings, chosen.number
        label = f"trial #{chosen.number} of study '{o.study}'"
    model_cfg, train_cfg = configs(params, o.epochs or settings.epochs, settings.batch_size)
    if o.threads:
        torch.set_num_threads(o.threads)
    device = resolve_device(o.device)
    data = round_pairs(resolve_data_dir(o.data_dir), o.rounds, o.pairs, o.seed)
    if events is not None:
        events.started(f"{o.rounds} rounds (trained together)", train_cfg.epochs)
    try:
        hook = (lambda epoch, _: events.epoch(epoch)) if events is not None else None
        result = run_rounds(model_cfg, train_cfg, data, o.seed, device, on_epoch=hook, trial=trial_no, precision=precision)
    except Diverged as exc:
        raise HpoError(f"evaluation of {label} diverged: {exc}") from None
    finally:
        if events is not None:
            events.stopped()
    record = {"study": o.study, **result.to_dict(), "params": params}
    if study is not None:
        from hpo.results import save_evaluation

        save_evaluation(study, record)
    return EvaluateResult(label, params, result, record)
