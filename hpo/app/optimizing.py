"""What `hpo optimize` does: check its options, load the data, open the study, run the worker loop.

Modules that need torch are imported inside the functions that train, so the CLI starts without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial

from hpo.errors import HpoError
from hpo.readers.results import DEFAULT_RULE, is_multi_objective, recommendation
from hpo.spec.study_spec import StudySpec, load_spec
from hpo.store.connect import (
    DEFAULT_RETRIES,
    DEFAULT_STORAGE,
    check_storage_url,
    open_storage,
)

DEFAULT_SPEC = "twin"  # built-in (studies/twin.toml)


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
    resample: str | None = None
    enqueue_published: bool | None = None
    max_params: int | None = None
    device: str = "auto"
    threads: int | None = None
    heartbeat_interval: int = 10
    retries: int = DEFAULT_RETRIES
    connect_timeout: float = 120.0
    verbose: bool = False
    allow_space_change: bool = False
    precision: str = "float32"  # or bfloat16 / auto (bfloat16 where the CPU has it natively)
    jobs: int = 1  # worker processes: hpo.pool runs several, each through optimize() with jobs=1
    patience: int = 0  # stop once the best CV score rose within its noise over this many trials (0: off)


class OptimizeEvents(Protocol):
    """What a caller is told while a study runs (the CLI draws a progress bar from it)."""

    def notice(self, line: str) -> None: ...
    def started(self, study: optuna.Study, target: int) -> None: ...
    def trial_finished(self, study: optuna.Study, trial: FrozenTrial | None) -> None: ...
    def stopped(self) -> None: ...


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


@dataclass(frozen=True)
class OptimizeResult:
    study: optuna.Study
    recommended: FrozenTrial | None  # single objective: the trial to test; None before any completes
    pareto: list[FrozenTrial] = field(default_factory=list)  # several objectives: the front
    failed_workers: list[str] = field(default_factory=list)  # --jobs: one line per worker that failed
    rule: str = DEFAULT_RULE  # the rule that chose `recommended` (logloss falls back to best without predictions)


def check_optimize(options: OptimizeOptions) -> StudySpec:
    """Every check that needs no data and no database, in the order a user would fix them."""
    from hpo.training.precision import resolve_device, resolve_precision

    o = options
    spec = load_spec(o.spec).with_overrides(
        name=o.study,
        seed=o.seed,
        folds=o.folds,
        epochs=o.epochs,
        sampler=o.sampler,
        pruner=o.pruner,
        resample=o.resample,
        enqueue_published=o.enqueue_published,
        max_params=o.max_params,
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
    if o.patience < 0:
        raise HpoError(f"--patience must be 0 (off) or more trials; got {o.patience}")
    if o.patience and spec.multi_objective:
        raise HpoError(f"--patience stops a study by its best CV score; spec '{spec.source}' has several objectives")
    return spec


def study_pairs(options: OptimizeOptions, spec: StudySpec) -> Any:
    """The study's training pairs, loaded before any store is opened: bad data writes nothing.

    hpo.pool calls it in the parent too, before the study is created and the workers start.
    """
    from hpo.training.data import cv_pairs, load_mnist, resolve_data_dir

    data_dir = resolve_data_dir(options.data_dir)
    if data_dir.is_file():
        raise HpoError(
            f"--data-dir '{data_dir}' is a file; point --data-dir (or $HPO_DATA_DIR) at the folder holding MNIST"
        )
    images = len(load_mnist(data_dir, train=True).labels)
    wanted = spec.train.train_pairs
    if 2 * wanted > images:
        raise HpoError(
            f"train_pairs = {wanted} needs {2 * wanted} images but MNIST's train split under --data-dir '{data_dir}' "
            f"has {images}; lower [train] train_pairs in spec '{spec.source}' to {images // 2} or less"
        )
    return cv_pairs(data_dir, wanted, spec.seed)


def optimize(options: OptimizeOptions, events: OptimizeEvents) -> OptimizeResult:
    """Run the study until it holds `options.trials` finished trials (or --patience stops it).

    Raises worker.Interrupted when SIGTERM or SIGINT stops it (the trial in hand is failed
    and queued for retry first).
    """
    import torch

    from hpo.search.loop import run_until
    from hpo.search.objective import Objective
    from hpo.search.stopping import study_plateau
    from hpo.training.precision import resolve_device, resolve_precision

    spec = check_optimize(options)
    if options.threads:
        torch.set_num_threads(options.threads)
    device = resolve_device(options.device)
    pairs = study_pairs(options, spec)
    study = open_study(options, spec, events.notice)
    digits = keep_targets(study, spec, pairs, options.data_dir)
    events.started(study, options.trials)
    try:
        precision = resolve_precision(options.precision)
        run_until(
            study,
            Objective(spec, pairs, device, precision, digits=digits),
            options.trials,
            callbacks=[events.trial_finished],
            retries=options.retries,
            until=lambda s: study_plateau(s, options.patience) is not None,
        )
    finally:
        events.stopped()
    tell_plateau(options, study, events)
    return optimize_result(study)


def tell_plateau(options: OptimizeOptions, study: optuna.Study, events: OptimizeEvents) -> None:
    """Say why a study stopped short of --trials, when --patience stopped it."""
    from hpo.search.loop import finished_trials
    from hpo.search.stopping import study_plateau

    reached = study_plateau(study, options.patience) if finished_trials(study) < options.trials else None
    if reached is not None:
        events.notice(reached.line())


def keep_targets(study: optuna.Study, spec: StudySpec, pairs: Any, data_dir: Path | None) -> Any:
    """Store the targets the trials' out-of-fold predictions are scored on (the ensemble reads them).

    With resample = "fresh" every trial sees its own pairs, so there is nothing to store; the
    objective draws them from the training digits returned here instead.
    """
    from hpo.readers.ensemble import TARGETS_KEY, encode_targets
    from hpo.training.data import load_mnist, resolve_data_dir

    if spec.resample == "fresh":
        return load_mnist(resolve_data_dir(data_dir), train=True)
    if not spec.multi_objective and TARGETS_KEY not in study.user_attrs:
        study.set_user_attr(TARGETS_KEY, encode_targets(pairs.targets.tolist()))
    return None


def open_study(options: OptimizeOptions, spec: StudySpec, notify: Any) -> optuna.Study:
    """The study, created or checked, in the store opened for a worker (waiting out outages)."""
    from hpo.search.study import load_or_create

    optuna.logging.set_verbosity(optuna.logging.INFO if options.verbose else optuna.logging.ERROR)
    storage = open_storage(
        options.storage,
        heartbeat_interval=options.heartbeat_interval,
        retries=options.retries,
        connect_timeout=options.connect_timeout,
        notify=notify,
    )
    return load_or_create(spec, storage, options.allow_space_change)


def optimize_result(study: optuna.Study) -> OptimizeResult:
    if is_multi_objective(study):
        return OptimizeResult(study, None, sorted(study.best_trials, key=lambda t: t.values[0]))
    chosen = recommendation(study)
    return OptimizeResult(study, None) if chosen is None else OptimizeResult(study, chosen.trial, rule=chosen.rule)
