"""The parameter registry: every search parameter declared once, as a field of the config it feeds.

A parameter is a field of `TwinConfig` (the network) or `TrainConfig` (its training) made with
`param(default, rule, check, doc)`: its name, type, default, valid values and one-line
description live in that one declaration. Spec validation, `configs()` and the docs' parameter
table all read `PARAMS`, built from those fields. No torch here: report and export import it.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from hpo.errors import HpoError

Check = Callable[[Any], bool]


def _any(value: Any) -> bool:
    return True


def between(lo: float, hi: float, hi_open: bool = False) -> Check:
    return lambda v: lo <= v < hi if hi_open else lo <= v <= hi


def param(default: Any, rule: str, check: Check = _any, doc: str = "") -> Any:
    """A dataclass field that is also a search parameter (its metadata feeds the registry)."""
    return field(default=default, metadata={"rule": rule, "check": check, "doc": doc})


Head = Literal["mlp", "compare"]
HeadInput = Literal["logits", "softmax"]
Schedule = Literal["constant", "cosine"]


@dataclass(frozen=True)
class TwinConfig:
    """What one member network is made of."""

    weight_sharing: bool = param(True, "true or false", doc="one encoder for both digits (report A: +3 points)")
    batch_norm: bool = param(False, "true or false", doc="batch norm after each convolution and the hidden layer")
    dropout: float = param(0.25, "in [0, 1)", between(0.0, 1.0, hi_open=True), doc="dropout before the digit layer")
    conv1_channels: int = param(32, "in [1, 512]", between(1, 512), doc="channels of the first 3x3 convolution")
    conv2_channels: int = param(64, "in [1, 512]", between(1, 512), doc="channels of the second 3x3 convolution")
    hidden: int = param(128, "in [1, 4096]", between(1, 4096), doc="width of the encoder's hidden layer")
    head: Head = param(
        "mlp", "'mlp' or 'compare'", doc="mlp: learnt comparison; compare: P(d1 <= d2) from digit probabilities"
    )
    head_hidden: int = param(64, "in [1, 4096]", between(1, 4096), doc="width of the mlp head's hidden layer")
    head_input: HeadInput = param("logits", "'logits' or 'softmax'", doc="what the mlp head reads of the two digits")


@dataclass(frozen=True)
class TrainConfig:
    """How members are trained; the optimiser is Adam(lr, betas=(beta1, 0.999), weight_decay).

    `epochs` is a study setting ([train] epochs), not a search parameter.
    """

    epochs: int = 25
    batch_size: int = param(
        25, "in [1, 1000]", between(1, 1000), doc="training pairs per step (also a [train] setting)"
    )
    lr: float = param(
        1e-3, "in (0, 1]", lambda v: 0 < v <= 1, doc="Adam's learning rate (the peak, with the cosine schedule)"
    )
    beta1: float = param(0.9, "in [0, 1)", between(0.0, 1.0, hi_open=True), doc="Adam's first-moment decay")
    weight_decay: float = param(0.0, ">= 0", lambda v: v >= 0, doc="Adam's L2 penalty")
    aux_weight: float = param(1.0, ">= 0", lambda v: v >= 0, doc="weight of the digit (auxiliary) loss; 0 turns it off")
    shift: int = param(0, "in [0, 4]", between(0, 4), doc="random translation of training images, in pixels")
    repair: bool = param(
        False, "true or false", doc="pair the training digits afresh every epoch, the label from their classes"
    )
    rotate: float = param(
        0.0, "in [0, 45]", between(0.0, 45.0), doc="random rotation of training images, up to this many degrees"
    )
    scale: float = param(
        0.0, "in [0, 0.5]", between(0.0, 0.5), doc="random rescaling of training images, up to this fraction"
    )
    schedule: Schedule = param(
        "constant", "'constant' or 'cosine'", doc="learning rate over the run; cosine decays to 0"
    )


@dataclass(frozen=True)
class Labels:
    """Parameters that feed no config: labels a grid can vary."""

    repeat: int = param(
        0, "in [0, 1000]", between(0, 1000), doc="a grid label that repeats each cell (each trial has its own seeds)"
    )


@dataclass(frozen=True)
class Param:
    """One registry entry."""

    name: str
    type: type
    default: Any
    feeds: str  # "model", "train" or "label"
    rule: str
    check: Check
    doc: str
    choices: tuple[Any, ...] | None = None  # for Literal types

    def ok(self, value: Any) -> bool:
        return (self.choices is None or value in self.choices) and self.check(value)


def _registry() -> dict[str, Param]:
    found: dict[str, Param] = {}
    for cls, feeds in ((TwinConfig, "model"), (TrainConfig, "train"), (Labels, "label")):
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if "rule" not in f.metadata:
                continue
            hint, choices = hints[f.name], None
            if typing.get_origin(hint) is Literal:
                choices = typing.get_args(hint)
                hint = type(choices[0])
            found[f.name] = Param(
                f.name, hint, f.default, feeds, f.metadata["rule"], f.metadata["check"], f.metadata["doc"], choices
            )
    return found


PARAMS: Mapping[str, Param] = _registry()


def configs(params: Mapping[str, Any], epochs: int, batch_size: int) -> tuple[TwinConfig, TrainConfig]:
    """A full parameter set (sampled + fixed) as the model and training configs it names.

    `batch_size` is the study's setting, used unless the parameters name their own. A key the
    registry does not know is an error: dropping it would train the default without a word.
    """
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise HpoError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(PARAMS)}")
    model = {k: v for k, v in params.items() if PARAMS[k].feeds == "model"}
    train = {k: v for k, v in params.items() if PARAMS[k].feeds == "train"}
    return TwinConfig(**model), TrainConfig(**{"epochs": epochs, "batch_size": batch_size, **train})


def markdown_table() -> str:
    """The docs' parameter table, generated here so that it cannot drift from the code."""
    rows = [
        "| parameter | feeds | type | default | valid values | what it is |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in PARAMS.values():
        default = (
            str(p.default).lower()
            if isinstance(p.default, bool)
            else repr(p.default)
            if isinstance(p.default, str)
            else p.default
        )
        rows.append(f"| `{p.name}` | {p.feeds} | {p.type.__name__} | {default} | {p.rule} | {p.doc} |")
    return "\n".join(rows)
