"""Open a study store from its URL: SQLite preparation, waiting for a server, init races.

Workers start in any order (containers, cluster pods), so opening a PostgreSQL store waits for
a server that is not up yet, and two workers creating the schema at the same instant both
succeed. A SQLite file is switched to WAL so that readers never block the workers.
"""

from __future__ import annotations

import random
import re
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TypeVar

import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback

from hpo.errors import HpoError, first_line
from hpo.store.experimental_api import experimental
from hpo.store.outages import Notify, Outage, ResilientRDBStorage, stderr_line

DEFAULT_STORAGE = "sqlite:///storage/hpo.db"
DEFAULT_RETRIES = 2
GRACE_INTERVALS = 3  # a running trial whose heartbeat is this many intervals late is stale
SQLITE_BUSY_TIMEOUT = 60.0
T = TypeVar("T")
# One connection kept per worker; a second (the heartbeat thread's, when it overlaps the main
# thread's) is opened as overflow and closed when returned, so a worker holds 1 to 2
# connections: 64 workers fit PostgreSQL's default max_connections of 100. pre_ping replaces
# a connection a database restart broke while it sat in the pool.
SERVER_POOL = {"pool_size": 1, "max_overflow": 1, "pool_pre_ping": True}
# Refusals that waiting will not mend. libpq reports connection-time errors as text only
# (psycopg gives no SQLSTATE for them), so they are recognised by the server's message.
_AUTH_FAILED = re.compile(
    r"authentication failed|role \".*\" does not exist|no password supplied|no pg_hba\.conf entry"
)
_UNKNOWN_DATABASE = re.compile(r"database \".*\" does not exist")


_PASSWORD = re.compile(r"(://[^/@]*?:)[^/@]*@")


def shown_url(url: str) -> str:
    """`url` as it may be printed or logged: its password masked, even when the URL does not parse.

    Every line, table title, report and log that names a store goes through this, so a
    database password never reaches a terminal or a log collector.
    """
    try:
        return sqlalchemy.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return _PASSWORD.sub(r"\1***@", url)


def check_storage_url(url: str) -> sqlalchemy.URL:
    """Parse a SQLAlchemy URL without connecting, so bad URLs fail before anything is written."""
    try:
        parsed = sqlalchemy.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise HpoError(
            f"cannot parse storage URL '{shown_url(url)}'; use a SQLAlchemy URL such as "
            f"{DEFAULT_STORAGE} or postgresql+psycopg://user:pass@host/db"
        ) from None
    try:
        parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise HpoError(f"unknown database driver '{parsed.drivername}' in storage URL '{shown_url(url)}'") from None
    return parsed


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    retries: int = DEFAULT_RETRIES,
    connect_timeout: float = 0.0,
    notify: Notify | None = None,
) -> ResilientRDBStorage:
    """An RDB storage for `url`; a SQLite file's folder is created when missing.

    With `heartbeat_interval`, running trials send heartbeats; a trial silent for three
    intervals (its worker died) is failed by the next worker that starts a trial, and re-queued
    with the same parameters up to `retries` times. A server that is not up yet is retried for
    `connect_timeout` seconds (containers start in any order); refused credentials and unknown
    databases fail at once. Once open, a lost connection is waited for just as long, with a
    line to `notify` (default: stderr) when it goes and when it comes back (hpo.store.outages).
    """
    parsed = check_storage_url(url)
    shown = parsed.render_as_string(hide_password=True)
    engine_kwargs: dict = {}
    try:
        if parsed.get_backend_name() == "sqlite":
            engine_kwargs = _prepare_sqlite(parsed)
        else:
            _wait_for_server(parsed, connect_timeout)
            engine_kwargs = SERVER_POOL
        with experimental():
            heartbeat: dict = {}
            if heartbeat_interval is not None:
                heartbeat = {
                    "heartbeat_interval": heartbeat_interval,
                    "grace_period": GRACE_INTERVALS * heartbeat_interval,
                    "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=retries),
                }
            sqlite = parsed.get_backend_name() == "sqlite"
            outage = Outage(shown, connect_timeout, sqlite, notify or stderr_line)

            def create() -> ResilientRDBStorage:
                return retry_init_race(lambda: ResilientRDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat))

            # A server that goes away while the schema is checked is waited for like any other
            # call (SQLite's errors here are about the file, and say so below).
            storage = create() if sqlite else outage.call(create)
        return storage.watch(outage)
    except OSError as exc:
        raise HpoError(f"cannot open storage '{shown}': {exc.strerror or exc}") from None
    except sqlalchemy.exc.OperationalError as exc:
        raise HpoError(f"cannot open storage '{shown}': {first_line(exc.orig)}") from None
    except sqlite3.Error as exc:
        raise HpoError(f"cannot open storage '{shown}': {first_line(exc)}") from None


def _prepare_sqlite(parsed: sqlalchemy.URL) -> dict:
    """Let several local processes share one SQLite file.

    The file is switched to WAL mode (a property of the file, kept from then on), so readers
    such as the dashboard or a report never block the workers' writes or their heartbeats; a
    writer behind another process's write waits up to a minute instead of sqlite3's 5 s before
    "database is locked". SQLite folds the side file back into the .db when the last process
    closes it. (SQLite on a network file system remains unsafe; use PostgreSQL for several
    machines.)
    """
    if parsed.database in (None, "", ":memory:"):
        return {}
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    _switch_to_wal(parsed.database)
    return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}


def _switch_to_wal(database: str) -> None:
    """PRAGMA journal_mode=WAL, tried again while another process holds the file.

    Workers started together on a new file switch it at the same instant; each holds a shared
    lock and wants an exclusive one, and SQLite answers one of them "database is locked" at
    once, without its busy timeout, rather than let both wait on each other (4 processes
    opening one new file together: 14 of 60 starts failed so before this retry).
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    while True:
        try:
            with closing(sqlite3.connect(database, timeout=SQLITE_BUSY_TIMEOUT)) as connection:
                connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.02, 0.2))


def _wait_for_server(parsed: sqlalchemy.URL, timeout: float) -> None:
    """Connect once, retrying with backoff while the server is unreachable or starting up."""
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    connect_args = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args = {"connect_timeout": 10}
    engine = sqlalchemy.create_engine(parsed, connect_args=connect_args, poolclass=sqlalchemy.NullPool)
    deadline = time.monotonic() + timeout
    delay = 0.25
    try:
        while True:
            try:
                with engine.connect():
                    return
            except sqlalchemy.exc.OperationalError as exc:
                reason = first_line(exc.orig).split("FATAL:")[-1].strip()
                if _AUTH_FAILED.search(reason):
                    raise HpoError(
                        f"database server {where} refused user '{parsed.username}': {reason}; check the user and "
                        "password in the storage URL"
                    ) from None
                if _UNKNOWN_DATABASE.search(reason):
                    raise HpoError(
                        f"database '{parsed.database}' does not exist on {where}; create it (createdb "
                        f"{parsed.database}) or fix the storage URL"
                    ) from None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HpoError(
                        f"cannot reach database server {where} (gave up after {timeout:g} s, see "
                        f"--connect-timeout): {reason}"
                    ) from None
                time.sleep(min(delay, left))
                delay = min(delay * 2, 5.0)
    finally:
        engine.dispose()


def retry_init_race(create: Callable[[], T], attempts: int = 8) -> T:
    """Run `create` again when another worker created the same tables or study at the same instant.

    Optuna creates its schema with CREATE TABLE after a check, so two processes starting
    together on an empty database collide (duplicate type/table/key); the loser finds the
    winner's schema on the next attempt. On SQLite in WAL mode the loser may instead hear
    "database is locked" at once, whatever the busy timeout: its transaction read before the
    winner committed, and SQLite refuses it the write rather than let it act on a stale read.
    That is the same collision, and the next attempt reads afresh.
    """
    for attempt in range(attempts):
        try:
            return create()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as exc:
            message = str(exc.orig)
            collided = (
                isinstance(exc, sqlalchemy.exc.IntegrityError)
                or "already exists" in message
                or "database is locked" in message
            )
            if not collided or attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))
    raise AssertionError("unreachable")


def open_existing_storage(url: str) -> ResilientRDBStorage:
    """The store at `url`; a SQLite file that does not exist is an error, not a new database."""
    parsed = check_storage_url(url)
    on_disk = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
    if on_disk and not Path(parsed.database).is_file():
        raise HpoError(
            f"no study store at '{shown_url(url)}' (file not found); pass --storage with the URL `hpo optimize` used"
        )
    return open_storage(url)
