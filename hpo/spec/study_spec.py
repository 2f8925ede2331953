"""Study specs: TOML files that declare a study, its fixed training settings and its search space.

    [study]  name, direction, seed, sampler, pruner, resample, enqueue_published, max_params,
             and for several objectives: objectives = [...] with directions = [...]
    [train]  folds, epochs, batch_size, train_pairs, final_epochs
    [space]  parameter = { choices = [...] } | { low, high, log?, step? } | plain value (fixed)

Every check happens here, before anything touches storage, and fails with one HpoError line.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hpo.errors import HpoError
from hpo.spec.builtin import builtin_path, builtin_specs
from hpo.spec.space import Choice, Fixed, FloatRange, IntRange, Param, Suggester, only_keys, parse_param

SAMPLERS = ("tpe", "random", "gp", "grid")
PRUNERS = ("median", "quartile", "hyperband", "sha", "wilcoxon", "none")
# What each trial is scored on: the study's one draw of pairs and folds, the same pairs with folds
# drawn again for every trial, or a fresh draw of pairs (and folds) for every trial.
RESAMPLES = ("fixed", "reshuffle", "fresh")
DIRECTIONS = ("maximize", "minimize")
# What a trial can be scored on: mean CV accuracy, parameters per network, training seconds.
OBJECTIVES = ("accuracy", "params", "seconds")


@dataclass(frozen=True)
class TrainSettings:
    """Fixed training settings every trial of a study shares.

    `final_epochs`: how long the recommendation trains when it is tested (`hpo evaluate`), where
    a trial's CV score only has to rank it; None: as long as a trial.
    """

    folds: int = 5
    epochs: int = 25
    batch_size: int = 25
    train_pairs: int = 1000
    final_epochs: int | None = None

    @property
    def test_epochs(self) -> int:
        return self.final_epochs or self.epochs


@dataclass(frozen=True)
class StudySpec:
    name: str
    objectives: tuple[str, ...] = ("accuracy",)
    directions: tuple[str, ...] = ("maximize",)
    seed: int = 0
    sampler: str = "tpe"
    pruner: str = "median"
    resample: str = "fixed"
    enqueue_published: bool = False
    max_params: int | None = None
    train: TrainSettings = TrainSettings()
    space: Mapping[str, Param] = field(default_factory=dict)
    source: str = field(default="", compare=False)  # the name or path it was loaded from
    text: str = field(default="", compare=False, repr=False)  # the TOML as written

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def direction(self) -> str:
        """The one direction of a single-objective study."""
        if self.multi_objective:
            raise ValueError(f"study '{self.name}' has several objectives: {', '.join(self.objectives)}")
        return self.directions[0]

    def suggest(self, trial: Suggester) -> dict[str, Any]:
        """Every parameter's value for one trial: sampled ranges and choices, plus fixed values."""
        return {name: param.suggest(trial, name) for name, param in self.space.items()}

    def fixed_params(self) -> dict[str, Any]:
        """The fixed parameter values, which Optuna does not record as trial params."""
        return {name: p.value for name, p in self.space.items() if isinstance(p, Fixed)}

    @property
    def is_fixed(self) -> bool:
        return all(isinstance(p, Fixed) for p in self.space.values())

    def grid(self) -> dict[str, list[Any]]:
        """The search space as a grid, for Optuna's GridSampler (choices only)."""
        ranges = [n for n, p in self.space.items() if isinstance(p, (FloatRange, IntRange))]
        if ranges:
            raise HpoError(
                f"the grid sampler needs choice lists or fixed values; {', '.join(ranges)} "
                "are ranges (use --sampler tpe or random, or give them choices)"
            )
        return {n: list(p.choices) for n, p in self.space.items() if isinstance(p, Choice)}

    def with_overrides(self, **overrides: Any) -> StudySpec:
        """The spec with CLI overrides applied (None means keep); validated again."""
        keys = ("name", "seed", "sampler", "pruner", "resample", "enqueue_published", "max_params")
        study = {k: v for k, v in overrides.items() if v is not None and k in keys}
        train = {k: v for k, v in overrides.items() if v is not None and k in ("folds", "epochs")}
        if "epochs" in train and train["epochs"] != self.train.epochs:
            train["final_epochs"] = None  # --epochs N: trials and the test of the recommendation alike
        spec = replace(self, **study, train=replace(self.train, **train))
        _check_settings(spec)
        return spec


def load_spec(name_or_path: str | Path) -> StudySpec:
    """Read and validate a spec: a file, or a built-in spec by name (`hpo specs` lists them)."""
    path = Path(name_or_path)
    if not path.is_file():
        builtin = builtin_path(str(name_or_path)) if len(path.parts) == 1 else None
        if builtin is None:
            raise HpoError(
                f"spec '{name_or_path}' not found: neither a file nor a built-in spec ({', '.join(builtin_specs())}); "
                "pass --spec with a built-in name or the path of a study TOML file"
            )
        path = builtin
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise HpoError(f"spec file '{path}' is not valid TOML: {exc}") from None
    return replace(parse_spec(raw, source=str(name_or_path)), source=str(name_or_path), text=text)


def parse_spec(raw: Mapping[str, Any], source: str = "<spec>") -> StudySpec:
    try:
        return _parse(raw)
    except HpoError as exc:
        raise HpoError(f"{source}: {exc}") from None


def _parse(raw: Mapping[str, Any]) -> StudySpec:
    only_keys(raw, {"study", "train", "space"}, "top-level tables")
    study = _table(raw, "study")
    train = _table(raw, "train")
    space_raw = _table(raw, "space")
    only_keys(
        study,
        {
            "name",
            "direction",
            "directions",
            "objectives",
            "seed",
            "sampler",
            "pruner",
            "resample",
            "enqueue_published",
            "max_params",
        },
        "[study] keys",
    )
    only_keys(train, {"folds", "epochs", "batch_size", "train_pairs", "final_epochs"}, "[train] keys")
    if "name" not in study:
        raise HpoError('[study] needs a name, e.g. name = "twin"')
    settings = TrainSettings(**{k: _int(f"[train] {k}", v) for k, v in train.items()})
    space = {name: parse_param(name, value) for name, value in space_raw.items()}
    if "batch_size" in space and "batch_size" in train:
        raise HpoError("batch_size is set in both [train] and [space]; keep one")
    if "direction" in study and "directions" in study:
        raise HpoError("[study] has both direction and directions; keep one")
    objectives = _strings("[study] objectives", study.get("objectives", ["accuracy"]))
    directions = _strings("[study] directions", study.get("directions", [study.get("direction", "maximize")]))
    if len(directions) != len(objectives):
        raise HpoError(
            f"[study] lists {len(objectives)} objectives but {len(directions)} directions; give one direction each"
        )
    enqueue = study.get("enqueue_published", False)
    if not isinstance(enqueue, bool):
        raise HpoError(f"[study] enqueue_published must be true or false; got {enqueue!r}")
    max_params = study.get("max_params")
    spec = StudySpec(
        name=_str("[study] name", study["name"]),
        objectives=objectives,
        directions=directions,
        seed=_int("[study] seed", study.get("seed", 0)),
        enqueue_published=enqueue,
        max_params=None if max_params is None else _int("[study] max_params", max_params),
        sampler=_str("[study] sampler", study.get("sampler", "tpe")),
        pruner=_str("[study] pruner", study.get("pruner", "median")),
        resample=_str("[study] resample", study.get("resample", "fixed")),
        train=settings,
        space=space,
    )
    _check_settings(spec)
    return spec


def _check_settings(spec: StudySpec) -> None:
    t = spec.train
    if not spec.name.strip():
        raise HpoError("the study name is empty; give --study NAME or [study] name")
    for direction in spec.directions:
        if direction not in DIRECTIONS:
            raise HpoError(f"direction must be one of {', '.join(DIRECTIONS)}; got '{direction}'")
    for objective in spec.objectives:
        if objective not in OBJECTIVES:
            raise HpoError(f"unknown objective '{objective}'; choose from {', '.join(OBJECTIVES)}")
    if spec.objectives != ("accuracy",) and not spec.multi_objective:
        # Pruning and the recommendation both read a single objective as accuracy.
        raise HpoError(
            f"a single objective must be accuracy; got '{spec.objectives[0]}': search it beside accuracy, "
            f'e.g. objectives = ["accuracy", "{spec.objectives[0]}"] with directions = ["maximize", "minimize"] '
            'and pruner = "none"'
        )
    if len(set(spec.objectives)) != len(spec.objectives):
        raise HpoError(f"objectives repeat: {', '.join(spec.objectives)}")
    if spec.multi_objective and spec.pruner != "none":
        raise HpoError('pruners need one objective; set pruner = "none" for a multi-objective study')
    if spec.max_params is not None and spec.max_params < 1:
        raise HpoError(f"max_params must be at least 1; got {spec.max_params}")
    if spec.sampler not in SAMPLERS:
        raise HpoError(f"unknown sampler '{spec.sampler}'; choose one of {', '.join(SAMPLERS)}")
    if spec.pruner not in PRUNERS:
        raise HpoError(f"unknown pruner '{spec.pruner}'; choose one of {', '.join(PRUNERS)}")
    if spec.resample not in RESAMPLES:
        raise HpoError(f"unknown resample '{spec.resample}'; choose one of {', '.join(RESAMPLES)}")
    if t.train_pairs < 2:
        raise HpoError(f"train_pairs must be at least 2; got {t.train_pairs}")
    if t.folds < 2 or t.folds > t.train_pairs:
        raise HpoError(f"folds must be between 2 and train_pairs ({t.train_pairs}); got {t.folds}")
    if t.epochs < 1:
        raise HpoError(f"epochs must be at least 1; got {t.epochs}")
    if t.final_epochs is not None and t.final_epochs < 1:
        raise HpoError(f"final_epochs must be at least 1; got {t.final_epochs}")
    if t.batch_size < 1:
        raise HpoError(f"batch_size must be at least 1; got {t.batch_size}")
    if spec.sampler == "grid":
        spec.grid()


def _table(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise HpoError(f"[{key}] must be a table")
    return value


def _int(what: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise HpoError(f"{what} must be an integer; got {value!r}")
    return value


def _strings(what: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise HpoError(f"{what} must be a non-empty list of strings; got {value!r}")
    return tuple(value)


def _str(what: str, value: Any) -> str:
    if not isinstance(value, str):
        raise HpoError(f"{what} must be a string; got {value!r}")
    return value
