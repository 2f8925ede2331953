"""A study's trials as CSV (one flat row per trial) or JSON (nested, nothing lost).

Parameters are the full configuration: sampled values plus the spec's fixed ones.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from hpo.readers.results import full_params

FORMATS = ("csv", "json")


def trial_record(trial: FrozenTrial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": trial.state.name,
        "values": trial.values,
        "params": full_params(trial),
        "user_attrs": trial.user_attrs,
        "intermediate_values": {str(step): v for step, v in sorted(trial.intermediate_values.items())},
        "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
    }


def to_json(study: optuna.Study) -> str:
    document = {
        "study": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "user_attrs": study.user_attrs,
        "trials": [trial_record(t) for t in study.get_trials(deepcopy=False)],
    }
    return json.dumps(document, indent=2) + "\n"


def to_csv(study: optuna.Study) -> str:
    """Columns: number, state, value (or value_0, value_1, ...), param_*, attr_*, start, complete.

    List and dict attributes (fold accuracies, fixed params) are JSON text in their cell.
    """
    records = [trial_record(t) for t in study.get_trials(deepcopy=False)]
    n_values = len(study.directions)
    value_cols = ["value"] if n_values == 1 else [f"value_{i}" for i in range(n_values)]
    params = sorted({p for r in records for p in r["params"]})
    attrs = sorted({a for r in records for a in r["user_attrs"]})
    columns = [
        "number",
        "state",
        *value_cols,
        *(f"param_{p}" for p in params),
        *(f"attr_{a}" for a in attrs),
        "datetime_start",
        "datetime_complete",
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for r in records:
        values = r["values"] or [None] * n_values
        writer.writerow(
            [
                r["number"],
                r["state"],
                *values,
                *(r["params"].get(p) for p in params),
                *(_cell(r["user_attrs"].get(a)) for a in attrs),
                r["datetime_start"],
                r["datetime_complete"],
            ]
        )
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def export(study: optuna.Study, fmt: str) -> str:
    return to_csv(study) if fmt == "csv" else to_json(study)
