"""One simulated worker for storage_load.py: hpo's own storage and worker loop, sleep instead of training.

    python benchmarks/load_worker.py CONFIG_JSON

Opens the store with hpo.store.connect.open_storage (real heartbeats), loads the study, prints
"ready" and waits for a line on stdin (so that every worker starts together, after the slow
imports), then runs hpo.search.loop.run_until with an objective that suggests three parameters and
reports once per sleeping "epoch". Optuna's ask, tell, report and should_prune are wrapped at
class level to time every call, and the store's methods to total the time spent in the
database by each of those calls, by the loop itself and by the heartbeat thread. Writes what
it measured to CONFIG["result"] as JSON. Never imports torch:
the point is dozens of light processes on one machine.
"""

from __future__ import annotations

import functools
import json
import random
import resource
import sys
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from hpo.search.loop import run_until
from hpo.store.connect import open_storage
from hpo.store.outages import WRAPPED, ResilientRDBStorage

TIMED = {
    "ask": (optuna.study.Study, "ask"),
    "tell": (optuna.study.Study, "tell"),
    "suggest": (optuna.trial.Trial, "suggest_float"),
    "report": (optuna.trial.Trial, "report"),
    "should_prune": (optuna.trial.Trial, "should_prune"),
}


class Meter:
    """Latencies of Optuna's calls, and seconds spent in the store by the Optuna call that made them.

    A storage call on the main thread is charged to the enclosing ask, suggest, report,
    should_prune or tell ("loop" when none: the worker loop's own reads and writes); one on
    another thread to "heartbeat".
    """

    def __init__(self) -> None:
        self.latency_ms: dict[str, list[float]] = defaultdict(list)
        self.asked: list[int] = []
        self.storage_s: dict[str, float] = defaultdict(float)
        self.storage_calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._local = threading.local()

    def time_optuna(self, name: str, owner: type, attr: str) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._local.op = name
            start = time.perf_counter()
            try:
                result = original(*args, **kwargs)
            finally:
                self._local.op = None
            self.latency_ms[name].append((time.perf_counter() - start) * 1e3)
            if name == "ask":
                self.asked.append(result.number)
            return result

        setattr(owner, attr, timed)

    def time_store(self, attr: str) -> None:
        original = getattr(ResilientRDBStorage, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if getattr(self._local, "in_store", False):
                return original(*args, **kwargs)  # count the outermost call only
            self._local.in_store = True
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._local.in_store = False
                main = threading.current_thread() is threading.main_thread()
                kind = (getattr(self._local, "op", None) or "loop") if main else "heartbeat"
                with self._lock:
                    self.storage_s[kind] += time.perf_counter() - start
                    self.storage_calls[kind] += 1

        setattr(ResilientRDBStorage, attr, timed)


def make_objective(epochs: int, epoch_seconds: float) -> Callable[[optuna.Trial], float]:
    """A few parameters, one report and pruning check per epoch, sleeping instead of training."""

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5.0, 5.0)
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        dropout = trial.suggest_float("dropout", 0.0, 0.6)
        final = 1.0 - (x / 5.0) ** 2 * 0.3 - abs(lr - 1e-2) - dropout * 0.1
        for step in range(1, epochs + 1):
            time.sleep(epoch_seconds * random.uniform(0.8, 1.2))
            trial.report(final * step / epochs, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return final

    return objective


def main(config: dict[str, Any]) -> int:
    meter = Meter()
    for name, (owner, attr) in TIMED.items():
        meter.time_optuna(name, owner, attr)
    for attr in WRAPPED:
        meter.time_store(attr)
    result: dict[str, Any] = {"error": None}
    try:
        storage = open_storage(
            config["url"],
            heartbeat_interval=config["heartbeat_interval"],
            retries=2,
            connect_timeout=config["connect_timeout"],
        )
        sampler = optuna.samplers.TPESampler(n_startup_trials=20)  # as hpo's studies: TPE, median pruner
        pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=min(3, config["epochs"] - 1))
        study = optuna.load_study(study_name=config["study"], storage=storage, sampler=sampler, pruner=pruner)
        print("ready", flush=True)
        sys.stdin.readline()
        # Workers of a real study are out of step (they started and were pruned at different
        # times): a random start within one trial's length, not a herd of asks at one instant.
        time.sleep(random.uniform(0.0, config["epochs"] * config["epoch_seconds"]))
        start = time.perf_counter()
        run_until(study, make_objective(config["epochs"], config["epoch_seconds"]), config["target"], retries=2)
        result["loop_s"] = time.perf_counter() - start
    except BaseException as exc:
        result["error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        traceback.print_exc()
    result.update(
        asked=meter.asked,
        latency_ms=meter.latency_ms,
        storage_s=meter.storage_s,
        storage_calls=meter.storage_calls,
        torch_imported="torch" in sys.modules,
        max_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    Path(config["result"]).write_text(json.dumps(result))
    assert "torch" not in sys.modules, "a simulated worker must stay light"
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
