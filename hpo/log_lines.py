"""What an unattended worker logs: one line per finished trial and a summary every minute.

A progress bar is drawn for a terminal; under docker compose, Kubernetes, CI or `> file` it
would print once, at the end. There a worker writes log lines instead, as text or as JSON
objects (`--log-format json`) for log collectors. Lines go to stderr, beside the notices;
the result table stays on stdout.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.readers.results import is_multi_objective

SUMMARY_SECONDS = 60.0
LOG_FORMATS = ("auto", "bar", "text", "json")


def wants_lines(log_format: str, stream: TextIO) -> bool:
    """Log lines rather than a progress bar: asked for, or (auto) when the bar's stream is no terminal."""
    return log_format in ("text", "json") or (log_format == "auto" and not stream.isatty())


class TrialLog:
    """app.OptimizeEvents as log lines (hpo.pool's parent reports its workers' trials the same way)."""

    def __init__(self, json_lines: bool = False, stream: TextIO | None = None, every: float = SUMMARY_SECONDS) -> None:
        self.json_lines, self.stream, self.every = json_lines, stream or sys.stderr, every
        self.study: optuna.Study | None = None
        self.target = 0
        self.logged: set[int] = set()
        self.workers: set[str] | None = None  # hpo.pool: only its own workers' trials
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def follow(self, workers: set[str]) -> None:
        self.workers = workers

    def notice(self, line: str) -> None:
        self._write("notice", line, {"message": line})

    def started(self, study: optuna.Study, target: int) -> None:
        self.study, self.target = study, target
        self.logged = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self.summary()
        self._thread = threading.Thread(target=self._summaries, name="summary-log", daemon=True)
        self._thread.start()

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial | None) -> None:
        if trial is not None:
            self._trial(trial)
            return
        for t in study.get_trials(deepcopy=False):
            worker = t.user_attrs.get("worker")
            if t.state.is_finished() and (self.workers is None or worker in self.workers):
                self._trial(t)

    def stopped(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self.summary()

    def summary(self) -> None:
        """Where the study stands: finished of the target, by state, and the best value."""
        if self.study is None:
            return
        trials = self.study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        done = counts["complete"] + counts["pruned"]
        best = _best(self.study)
        line = (
            f"study {self.study.study_name}: {done}/{self.target} finished ({counts['complete']} complete, "
            f"{counts['pruned']} pruned, {counts['fail']} failed, {counts['running']} running, "
            f"{counts['waiting']} waiting), best {'-' if best is None else f'{best:.4f}'}"
        )
        fields = {"study": self.study.study_name, "finished": done, "target": self.target, **counts, "best": best}
        self._write("summary", line, fields)

    def _trial(self, trial: FrozenTrial) -> None:
        if trial.number in self.logged or not trial.state.is_finished():
            return
        self.logged.add(trial.number)
        seconds = trial.duration.total_seconds() if trial.duration is not None else None
        value = trial.value if trial.values is not None and len(trial.values) == 1 else trial.values
        worker = trial.user_attrs.get("worker", "-")
        shown = "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
        took = "-" if seconds is None else _seconds(seconds)
        line = f"trial {trial.number} {trial.state.name} value {shown} seconds {took} worker {worker}"
        fields = {"trial": trial.number, "state": trial.state.name, "value": value, "seconds": seconds}
        self._write("trial", line, {**fields, "worker": worker})

    def _summaries(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.summary()
            except Exception as exc:  # a store outage: the next summary tries again
                self._write("notice", f"summary skipped: {type(exc).__name__}", {"message": str(exc)[:200]})

    def _write(self, event: str, line: str, fields: dict[str, Any]) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        text = json.dumps({"time": stamp, "event": event, **fields}) if self.json_lines else f"{stamp} {line}"
        with self._lock:
            print(text, file=self.stream, flush=True)


def _seconds(seconds: float) -> str:
    """Tenths for real trials; milliseconds for a trial under a second, which tenths would log as 0.0."""
    return f"{seconds:.1f}" if seconds >= 1 else f"{seconds:.3f}"


def _best(study: optuna.Study) -> float | None:
    if is_multi_objective(study):
        return None
    try:
        return study.best_value
    except ValueError:
        return None
