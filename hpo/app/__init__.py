"""What each command does, as typed functions over frozen option dataclasses.

The CLI parses flags into these options, calls one function and prints what it returns; the
benchmarks and tests call the same functions (hpo.pool runs several optimize workers, and
hpo.readers.listing holds the read-only commands).
"""

from hpo.app.evaluating import EpochEvents, EvaluateOptions, EvaluateResult, evaluate
from hpo.app.optimizing import (
    DEFAULT_SPEC,
    OptimizeEvents,
    OptimizeOptions,
    OptimizeResult,
    Silent,
    check_optimize,
    keep_targets,
    open_study,
    optimize,
    optimize_result,
    study_pairs,
    tell_plateau,
)

__all__ = [
    "DEFAULT_SPEC",
    "EpochEvents",
    "EvaluateOptions",
    "EvaluateResult",
    "OptimizeEvents",
    "OptimizeOptions",
    "OptimizeResult",
    "Silent",
    "check_optimize",
    "evaluate",
    "keep_targets",
    "open_study",
    "optimize",
    "optimize_result",
    "study_pairs",
    "tell_plateau",
]
