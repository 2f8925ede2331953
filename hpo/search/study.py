"""The study: sampler, pruner, create or load by name, warm start with the published configurations."""

from __future__ import annotations

import time

import optuna

from hpo.spec.pin import PIN_KEY, check_pin, pin_of
from hpo.spec.study_spec import StudySpec
from hpo.store.connect import retry_init_race
from hpo.store.experimental_api import experimental

TPE_STARTUP_TRIALS = 20
PIN_WAIT = 30.0  # seconds a worker that found a new study waits for its creator's pin


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    if spec.sampler == "tpe":
        # Optuna's 10 random start-up trials are few for a dozen parameters, several of them
        # choices: in a 125-trial default study here TPE sampled batch norm in 5 trials and
        # the cosine schedule (then searched) in 5, and exploited one corner from trial 20 on.
        return optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=TPE_STARTUP_TRIALS)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if spec.sampler == "gp":
        # Gaussian-process Bayesian optimisation; its start-up matches TPE's so they differ only after it.
        return optuna.samplers.GPSampler(seed=spec.seed, n_startup_trials=TPE_STARTUP_TRIALS)
    return optuna.samplers.GridSampler(spec.grid(), seed=spec.seed)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """Pruners read the mean CV accuracy reported after each epoch (steps 1..epochs).

    Wilcoxon instead reads each fold's accuracy at one epoch (steps 0..folds-1).
    """
    epochs = spec.train.epochs
    warm_up = min(3, epochs - 1)
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warm_up)
    if spec.pruner == "quartile":
        # Past the same warm-up, a trial goes on only while its best epoch so far is in the top
        # quarter of the earlier trials' at that epoch: fewer trials run all their epochs.
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=5, n_warmup_steps=warm_up)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if spec.pruner == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if spec.pruner == "wilcoxon":
        # Reads the folds' accuracies at one checkpoint epoch (hpo.search.objective.wilcoxon_epoch),
        # paired fold by fold with the best trial's: 5 folds give a one-sided p of at least 1/32.
        with experimental():
            return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=0)
    return optuna.pruners.NopPruner()


def load_or_create(
    spec: StudySpec, storage: optuna.storages.BaseStorage, allow_space_change: bool = False
) -> optuna.Study:
    """The named study, created on first use; later workers load the same one.

    Study names are unique in the store, so of several workers starting at the same instant
    exactly one creates the study, and only that one queues the published configurations.
    A study is pinned to the spec it was created with (hpo.spec.pin): another spec fails here,
    before anything is written.
    """

    def create() -> tuple[optuna.Study, bool]:
        sampler, pruner = make_sampler(spec), make_pruner(spec)
        try:
            study = optuna.create_study(
                storage=storage, study_name=spec.name, directions=list(spec.directions), sampler=sampler, pruner=pruner
            )
            return study, True
        except optuna.exceptions.DuplicatedStudyError:
            return optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner), False

    study, created = retry_init_race(create)
    settle_pin(study, spec, created, allow_space_change)
    if study.metric_names != list(spec.objectives):
        with experimental():
            retry_init_race(lambda: study.set_metric_names(list(spec.objectives)))
    if created and spec.enqueue_published:
        enqueue_published(study, spec)
    return study


def enqueue_published(study: optuna.Study, spec: StudySpec) -> int:
    """Queue the published configurations as the first trials of a new study; returns how many."""
    from hpo.search.warm_start import published_trials

    if study.get_trials(deepcopy=False):
        return 0
    queued = published_trials(spec)
    for published, params in queued:
        study.enqueue_trial(params, user_attrs={"published": published.source}, skip_if_exists=True)
    return len(queued)


def settle_pin(study: optuna.Study, spec: StudySpec, created: bool, allow_space_change: bool) -> None:
    """Pin a new study to `spec`, or check `spec` against the study's pin.

    Only the worker that created the study writes its pin: a worker that found it just created
    waits for that pin and checks against it, so that of two workers creating one study with
    different specs exactly one goes on. A study of an older release (trials, no pin) takes ours.
    """
    stored = study.user_attrs.get(PIN_KEY)
    if stored is None and not created:
        deadline = time.monotonic() + PIN_WAIT
        while stored is None and not study.get_trials(deepcopy=False) and time.monotonic() < deadline:
            time.sleep(0.1)
            stored = study.user_attrs.get(PIN_KEY)
    if stored is None or check_pin(study.study_name, stored, spec, allow_space_change):
        study.set_user_attr(PIN_KEY, pin_of(spec))
