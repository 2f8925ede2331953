"""One place that silences Optuna's ExperimentalWarning.

Heartbeats, their retry callback, stale-trial failing and metric names have been "experimental"
for years and are the documented way to do these things; a user should not see the warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from optuna.exceptions import ExperimentalWarning


@contextmanager
def experimental() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield
