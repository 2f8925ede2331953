"""A study is pinned to its spec: trials trained with other settings are not comparable.

At creation a study stores what its trials depend on (objectives and directions, seed, fixed
training settings, fixed parameter values, the searched space), a hash of that, and the spec
as written. Continuing it with a spec or flags that change any of those fails before anything
is written; only the searched space may change, and only when the user says so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

from hpo.errors import HpoError
from hpo.spec.study_spec import StudySpec

PIN_KEY = "spec"  # study user attribute (optuna-dashboard shows it)
# What a trial's value depends on, in the order a difference is reported.
PINNED = ("objectives", "directions", "seed", "train", "fixed")


def pin_of(spec: StudySpec) -> dict[str, Any]:
    facts = {
        "objectives": list(spec.objectives),
        "directions": list(spec.directions),
        "seed": spec.seed,
        # final_epochs is left out: it changes how the recommendation is tested, not a trial's value
        "train": {k: v for k, v in asdict(spec.train).items() if k != "final_epochs"},
        "fixed": spec.fixed_params(),
        "space": {
            name: {"kind": type(p).__name__, **asdict(p)}
            for name, p in spec.space.items()
            if name not in spec.fixed_params()
        },
    }
    facts = json.loads(json.dumps(facts))  # as the store gives it back: tuples become lists
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
    return {**facts, "hash": digest, "source": spec.source, "text": spec.text}


def first_difference(stored: dict[str, Any], wanted: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first pinned fact that differs, as "what: stored vs wanted"."""
    for key in keys:
        old, new = stored.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    return f"{key} {name}: the study has {_show(old.get(name))}, this run {_show(new.get(name))}"
        elif old != new:
            return f"{key}: the study has {_show(old)}, this run {_show(new)}"
    return None


def _show(value: Any) -> str:
    return "none" if value is None else json.dumps(value, sort_keys=True)


def check_pin(study_name: str, stored: dict[str, Any], spec: StudySpec, allow_space_change: bool) -> bool:
    """Raise if `spec` would train trials that do not compare with the study's; True if the space changed."""
    wanted = pin_of(spec)
    difference = first_difference(stored, wanted, PINNED)
    if difference is not None:
        raise HpoError(
            f"study '{study_name}' was created with another spec ({difference}); "
            f"its trials would not be comparable: use --study NEW for a new study"
        )
    difference = first_difference(stored, wanted, ("space",))
    if difference is None:
        return False
    if not allow_space_change:
        raise HpoError(
            f"study '{study_name}' searched another space ({difference}); pass --allow-space-change "
            f"if you mean to change it, or use --study NEW"
        )
    return True
