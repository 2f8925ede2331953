"""The published hand-tuned configurations (docs/task.md) in our parameters.

They seed a new study (its first trials), so the search starts from the best hand-tuned
point and their CV scores sit beside ours. Values the reports do not give are our
assumptions and are marked as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpo.spec.space import Choice, Fixed, FloatRange, IntRange, Param
from hpo.spec.study_spec import StudySpec


@dataclass(frozen=True)
class Published:
    source: str  # which report; its results are in docs/task.md
    params: dict[str, Any]


REPORT_A = {
    "weight_sharing": True,
    "aux_weight": 1.0,  # assumed: the report uses an auxiliary loss but gives no weight
    "dropout": 0.5,
    "batch_norm": False,
    "lr": 6e-4,
    "beta1": 0.6,
    "weight_decay": 1e-6,  # the lowest our log range allows; report A used none
    "conv1_channels": 32,
    "conv2_channels": 64,
    "hidden": 200,
    "head": "mlp",
    "head_input": "logits",
    "shift": 0,
    "schedule": "constant",  # every report kept Adam's rate fixed
}

PUBLISHED: tuple[Published, ...] = (
    Published("report A", REPORT_A),  # 97.28 ± 0.42 (50 epochs, batch 5); aux weight assumed 1.0
    Published("report A + batch norm", {**REPORT_A, "batch_norm": True}),  # 96.04 ± 0.54
    Published(
        "report B",
        {
            **REPORT_A,
            "conv1_channels": 16,
            "conv2_channels": 32,
            "batch_norm": True,
            "dropout": 0.25,
            "lr": 1e-2,
            "beta1": 0.9,
        },
    ),  # 95.22 ± 0.62 (25 epochs, batch 25); Adam defaults assumed for beta1
)


def fit_to_space(params: dict[str, Any], space: dict[str, Param] | Any) -> dict[str, Any]:
    """The published values for the parameters this space samples, moved into its ranges.

    Fixed parameters and ones the space does not have are left to the spec; a value outside
    a range is clamped, one that is not among the choices is dropped (the sampler decides).
    """
    fitted: dict[str, Any] = {}
    for name, value in params.items():
        param = space.get(name)
        if param is None or isinstance(param, Fixed):
            continue
        if isinstance(param, Choice):
            if value in param.choices:
                fitted[name] = value
        elif isinstance(param, (FloatRange, IntRange)):
            fitted[name] = _snap(min(max(value, param.low), param.high), param)
    return fitted


def _snap(value: float, param: FloatRange | IntRange) -> Any:
    """The nearest value on the range's step grid, typed as the range is."""
    if param.step:
        value = param.low + round((value - param.low) / param.step) * param.step
        value = min(value, param.high)
    return type(param.low)(value)


def published_trials(spec: StudySpec) -> list[tuple[Published, dict[str, Any]]]:
    """Each published configuration as the parameters to enqueue in a study of `spec`."""
    return [(p, fit_to_space(p.params, spec.space)) for p in PUBLISHED]
