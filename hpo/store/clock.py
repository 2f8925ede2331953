"""A test hook for the chaos benchmark: HPO_TEST_CLOCK_SKEW=S runs this worker's wall clock S seconds off.

Workers on machines whose clocks disagree must still agree on which trial is stale; hpo
compares times by the database's clock or by durations one host measured, so a worker whose
clock runs ahead changes nothing but the start and end times Optuna writes.
The hook shifts time.time() and the clock Optuna's RDB storage stamps trials with.
"""

from __future__ import annotations

import datetime as _dt
import os
import time

SKEW_ENV = "HPO_TEST_CLOCK_SKEW"
_applied = False


def apply_test_skew() -> None:
    """Shift this process's wall clock by $HPO_TEST_CLOCK_SKEW seconds (once; unset: nothing)."""
    global _applied
    skew = float(os.environ.get(SKEW_ENV, "0") or 0)
    if _applied or skew == 0:
        return
    import optuna.storages._rdb.storage as rdb

    real_time = time.time
    time.time = lambda: real_time() + skew

    class SkewedDatetime(_dt.datetime):
        @classmethod
        def now(cls, tz: _dt.tzinfo | None = None) -> _dt.datetime:
            return _dt.datetime.now(tz) + _dt.timedelta(seconds=skew)

    rdb.datetime = SkewedDatetime
    _applied = True
