"""Stopping on SIGTERM and SIGINT without leaving a trial half told."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import FrameType
from typing import Any


class Interrupted(KeyboardInterrupt):
    """A worker was told to stop (SIGTERM from `docker compose stop`, or Ctrl-C).

    A KeyboardInterrupt, so Optuna marks the trial in hand FAIL the way it does for Ctrl-C.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.trial_number: int | None = None
        self.retry: int | None = None
        self.trials: list[tuple[int, int | None]] = []  # --jobs: each worker's (trial in hand, its retry)


# Code a stop must not break into: an exception raised half-way through a database driver's
# call leaves its connection mid-protocol, and the driver's error that follows hides the stop;
# one raised inside numba's compiler leaves llvmlite objects half-built, whose finalisers then
# print tracebacks (CI saw one when Ctrl-C landed while a kernel compiled).
_UNINTERRUPTIBLE = ("sqlalchemy", "psycopg", "psycopg2", "sqlite3", "optuna.storages", "numba", "llvmlite")
RESEND_SECONDS = 0.01


def in_uninterruptible(frame: FrameType | None) -> bool:
    """Whether the innermost code of ours or of a library above that `frame` runs is the library's."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module == "hpo" or module.startswith("hpo."):
            return False
        if any(module == d or module.startswith(d + ".") for d in _UNINTERRUPTIBLE):
            return True
        frame = frame.f_back
    return False


def send_again(signum: int) -> None:
    """Deliver `signum` to this process again in 10 ms, when the main thread is elsewhere."""
    threading.Timer(RESEND_SECONDS, os.kill, (os.getpid(), signum)).start()


def raise_when_safe(signum: int, frame: FrameType | None) -> None:
    """Raise Interrupted now, or, inside a driver's or compiler's call, send the signal again 10 ms later."""
    if in_uninterruptible(frame):
        send_again(signum)
        return
    raise Interrupted(signum)


def interrupted_in(exc: BaseException) -> Interrupted | None:
    """The stop an exception was raised while handling (a library's error can wrap and hide it)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, Interrupted):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """SIGTERM, like SIGINT, raises Interrupted (for work before any trial is in flight)."""
    with _handling_stop_signals(raise_when_safe):
        yield


@contextmanager
def _handling_stop_signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """`handler` for SIGINT and SIGTERM, and a stop it raises inside a finaliser sent again.

    Python prints and drops an exception raised in a weakref callback or __del__, and a signal
    lands in one now and then (numba's type caches run such callbacks on every call): the
    stop is then raised again wherever the main thread is 10 ms later, and nothing is printed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only delivered to the main thread
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    previous_hook = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, Interrupted):
            send_again(unraisable.exc_value.signum)
        else:
            previous_hook(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for s, old in previous.items():
            signal.signal(s, old)


class SignalGuard:
    """Stop promptly without corrupting the study.

    Inside the objective a signal raises at once (the loop then fails the trial and queues its
    retry). Elsewhere (asking for or telling a trial, running callbacks) raising could leave a
    trial RUNNING with no heartbeat, so the stop waits: the loop ends after the current step,
    and a trial that was just asked for fails before it trains.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.in_objective = False

    @property
    def stopping(self) -> bool:
        return self.signum is not None

    @contextmanager
    def objective_running(self) -> Iterator[None]:
        self.in_objective = True
        try:
            yield
        finally:
            self.in_objective = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if self.in_objective:
            raise_when_safe(signum, frame)

    def installed(self) -> AbstractContextManager[None]:
        return _handling_stop_signals(self._handle)
