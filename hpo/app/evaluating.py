"""What `hpo evaluate` does: a trial's or a fixed spec's configuration trained on fresh rounds and tested."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hpo.app.ensemble import ENSEMBLE_MODES
from hpo.errors import HpoError
from hpo.readers.results import DEFAULT_RULE, load_existing_study, pick_trial
from hpo.spec.study_spec import load_spec
from hpo.store.connect import (
    DEFAULT_STORAGE,
)


def recorded_kernels(name: str | None) -> Any:
    """A trial's recorded kernel choice (hpo.kernels.dispatch), so its test trains as it did; None
    (a spec, or a trial from before choices were recorded): the dispatch's, here and now."""
    from hpo.kernels.dispatch import Kernels

    return Kernels.named(name) if name else None


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
    pick: str = DEFAULT_RULE  # how the recommended trial is chosen (hpo.readers.results.RULES)
    ensemble: int = 0  # K > 0: greedy ensemble selection of K members instead of one trial (hpo.app.ensemble)
    ensemble_mode: str = "retrain"  # what a trial picked twice becomes (hpo.app.ensemble.ENSEMBLE_MODES)


class EpochEvents(Protocol):
    """What a caller is told while the rounds train (the CLI draws a progress bar from it)."""

    def started(self, description: str, total: int, unit: str = "epochs") -> None: ...
    def epoch(self, done: int) -> None: ...
    def stopped(self) -> None: ...


@dataclass(frozen=True)
class EvaluateResult:
    label: str  # what was evaluated, for titles
    params: dict[str, Any]
    evaluation: Any  # hpo.training.rounds.Evaluation
    record: dict[str, Any]  # the JSON form, also saved in the study
    members: list[Any] = field(default_factory=list)  # --ensemble: (Member, its Evaluation alone)


def evaluate(options: EvaluateOptions, events: EpochEvents | None = None) -> EvaluateResult:
    """Train `rounds` fresh models of the configuration and test each on unseen pairs."""
    import torch

    from hpo.spec.registry import configs
    from hpo.training.batched import Diverged
    from hpo.training.data import resolve_data_dir
    from hpo.training.precision import resolve_device, resolve_precision
    from hpo.training.rounds import round_pairs, train_and_test

    o = options
    if (o.study is None) == (o.spec is None):
        raise HpoError(
            "give either --study NAME (its best trial, or --trial N) or --spec FILE with all parameters fixed"
        )
    if o.trial is not None and o.study is None:
        raise HpoError("--trial needs --study")
    for flag, value in (("--rounds", o.rounds), ("--pairs", o.pairs), ("--epochs", o.epochs), ("--threads", o.threads)):
        if value is not None and value < 1:
            raise HpoError(f"{flag} must be at least 1; got {value}")
    if o.ensemble_mode not in ENSEMBLE_MODES:
        raise HpoError(f"unknown ensemble mode '{o.ensemble_mode}'; choose one of {', '.join(ENSEMBLE_MODES)}")
    resolve_device(o.device)
    precision = resolve_precision(o.precision)
    if o.ensemble:
        from hpo.app.ensemble import evaluate_ensemble

        return evaluate_ensemble(o, events)
    study, trial_no, kernel_name = None, None, None
    if o.spec is not None:
        spec = load_spec(o.spec)
        if not spec.is_fixed:
            unfixed = ", ".join(n for n in spec.space if n not in spec.fixed_params())
            raise HpoError(
                f"spec '{o.spec}' leaves {unfixed} to the search; evaluate needs every parameter fixed (or use --study)"
            )
        params, settings, label = spec.fixed_params(), spec.train, f"spec '{o.spec}'"
    else:
        from hpo.readers.results import recipe

        study = load_existing_study(o.storage, o.study)
        chosen = pick_trial(study, o.trial, o.pick)
        how = recipe(chosen)
        params, settings, trial_no, kernel_name = how.params, how.settings, chosen.number, how.kernels
        label = f"trial #{chosen.number} of study '{o.study}'"
    model_cfg, train_cfg = configs(params, o.epochs or settings.test_epochs, settings.batch_size)
    if o.threads:
        torch.set_num_threads(o.threads)
    device = resolve_device(o.device)
    data = round_pairs(resolve_data_dir(o.data_dir), o.rounds, o.pairs, o.seed)
    if events is not None:
        events.started(f"{o.rounds} rounds (trained together)", train_cfg.epochs)
    try:
        hook = (lambda epoch, _: events.epoch(epoch)) if events is not None else None
        result = train_and_test(
            model_cfg, train_cfg, data, o.seed, device, hook, trial_no, precision, recorded_kernels(kernel_name)
        )
    except Diverged as exc:
        raise HpoError(f"evaluation of {label} diverged: {exc}") from None
    finally:
        if events is not None:
            events.stopped()
    record = {"study": o.study, **result.to_dict(), "params": params}
    if study is not None:
        from hpo.readers.results import save_evaluation

        save_evaluation(study, record)
    return EvaluateResult(label, params, result, record)
