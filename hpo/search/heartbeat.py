"""A running trial's heartbeat: recorded now and every interval until the trial is told.

Optuna's own heartbeat thread (optuna/storages/_heartbeat.py) ends at the first exception;
this one keeps beating through the store's outages, so a trial outlives a database restart,
and through any other failed beat (said once on stderr), so a trial is not failed as stale
while it still trains.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import optuna

from hpo.errors import first_line


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat now and every interval until it is told."""
    storage = study._storage  # Optuna offers no public handle on a study's storage
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        said = False
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial._trial_id)
            except Exception as exc:  # the next beat tries again; a store that is gone ends the trial's tell
                if not said:
                    print(
                        f"heartbeat of trial #{trial.number} failed ({type(exc).__name__}: {first_line(exc)}); "
                        f"trying again every {interval} s",
                        file=sys.stderr,
                        flush=True,
                    )
                    said = True

    storage.record_heartbeat(trial._trial_id)
    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
