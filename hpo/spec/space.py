"""A study's search space: each parameter fixed, a choice, or a range, checked against hpo.spec.registry.

Kept apart from the spec file's other tables so that a parameter's rules read in one place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from hpo.errors import HpoError
from hpo.spec.registry import PARAMS
from hpo.spec.registry import Param as ParamInfo


class Suggester(Protocol):
    """The part of optuna.Trial a parameter needs (kept as a protocol: specs know no Optuna)."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...


@dataclass(frozen=True)
class Fixed:
    value: Any

    def suggest(self, trial: Suggester, name: str) -> Any:
        return self.value


@dataclass(frozen=True)
class Choice:
    choices: tuple[Any, ...]

    def suggest(self, trial: Suggester, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def suggest(self, trial: Suggester, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False
    step: int = 1

    def suggest(self, trial: Suggester, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)


Param = Fixed | Choice | FloatRange | IntRange


def parse_param(name: str, value: Any) -> Param:
    kind = PARAMS.get(name)
    if kind is None:
        raise HpoError(f"unknown parameter '{name}' in [space]; known: {', '.join(PARAMS)}")
    if not isinstance(value, dict):
        return Fixed(_typed(name, kind, value))
    if "choices" in value:
        only_keys(value, {"choices"}, f"keys of '{name}'")
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise HpoError(f"'{name}': choices must be a non-empty list")
        return Choice(tuple(_typed(name, kind, c) for c in choices))
    only_keys(value, {"low", "high", "log", "step"}, f"keys of '{name}'")
    if "low" not in value or "high" not in value:
        raise HpoError(f"'{name}' needs low and high, choices, or a plain value")
    if kind.type in (bool, str):
        raise HpoError(f"'{name}' takes {kind.rule}; give choices or a plain value, not a range")
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise HpoError(f"'{name}': log must be true or false")
    low, high = _typed(name, kind, value["low"]), _typed(name, kind, value["high"])
    if low >= high:
        raise HpoError(f"'{name}': low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise HpoError(f"'{name}': a log range needs low > 0; got {low}")
    step = value.get("step")
    if step is not None:
        step = _value(name, kind.type, "> 0", lambda v: v > 0, step)
        if log:
            raise HpoError(f"'{name}': step and log cannot be combined")
    if kind.type is int:
        return IntRange(low, high, log, step or 1)
    return FloatRange(float(low), float(high), log, None if step is None else float(step))


def _typed(name: str, kind: ParamInfo, value: Any) -> Any:
    return _value(name, kind.type, kind.rule, kind.ok, value)


def _value(name: str, type_: type, rule: str, ok: Callable[[Any], bool], value: Any) -> Any:
    if type_ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, type_) or (type_ is int and isinstance(value, bool)):
        raise HpoError(f"'{name}' takes {type_.__name__} values {rule}; got {value!r}")
    if isinstance(value, float) and not math.isfinite(value) or not ok(value):
        raise HpoError(f"'{name}' must be {rule}; got {value!r}")
    return value


def only_keys(table: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise HpoError(f"unknown {what}: {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
