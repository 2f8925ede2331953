"""Who scores which leader: claims arbitrated by the database, so each is scored exactly once.

A claim is a row of `hpo_confirmations` keyed by (study, trial number): the INSERT of one
worker succeeds and every other worker's fails on the primary key, whatever the timing. A
claim whose worker died lapses; taking it over is one conditional UPDATE, which again only
one worker can win. Studies outside an RDB store (tests, notebooks) live in one process, where
a lock gives the same guarantee. No torch here.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

import sqlalchemy
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text

from hpo.store.connect import retry_init_race

_metadata = MetaData()
confirmations = Table(
    "hpo_confirmations",
    _metadata,
    Column("study_id", Integer, primary_key=True, autoincrement=False),
    Column("trial_number", Integer, primary_key=True, autoincrement=False),
    Column("worker", String(255), nullable=False),
    Column("claimed_at", Float, nullable=False),  # Unix time by the database's clock
    Column("accuracy", Float, nullable=True),
    Column("failed", Text, nullable=True),
)
Entry = dict[str, Any]  # {"worker", "claimed_at"} and, once scored, "accuracy" or "failed"


class Claims(Protocol):
    def claim(self, number: int, worker: str, lapse: float) -> bool:
        """Take leader `number` unless another worker holds a claim younger than `lapse` seconds."""

    def record(self, number: int, accuracy: float | None = None, failed: str | None = None) -> None: ...
    def entries(self) -> dict[int, Entry]: ...


class TableClaims:
    """Claims in the study's own database (SQLite or PostgreSQL)."""

    def __init__(self, storage: Any, study_name: str) -> None:
        self.engine: sqlalchemy.Engine = storage.engine
        self.call = storage.retrying  # waits out an outage like every other storage call
        self.study_id = storage.get_study_id_from_name(study_name)
        self.call(lambda: retry_init_race(lambda: _metadata.create_all(self.engine, checkfirst=True)))

    def _key(self, number: int) -> Any:
        return (confirmations.c.study_id == self.study_id) & (confirmations.c.trial_number == number)

    def claim(self, number: int, worker: str, lapse: float) -> bool:
        """Claims are stamped and lapse by the database's clock: workers' clocks may disagree."""
        now = _db_now(self.engine)

        def attempt() -> bool:
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        confirmations.insert().values(
                            study_id=self.study_id, trial_number=number, worker=worker, claimed_at=now
                        )
                    )
                return True
            except sqlalchemy.exc.IntegrityError:
                pass  # claimed before: take it over only if that claim lapsed and holds no score
            with self.engine.begin() as conn:
                taken = conn.execute(
                    confirmations.update()
                    .where(
                        self._key(number),
                        confirmations.c.accuracy.is_(None),
                        confirmations.c.failed.is_(None),
                        # ours already: an insert whose acknowledgement an outage swallowed
                        (confirmations.c.claimed_at < now - lapse) | (confirmations.c.worker == worker),
                    )
                    .values(worker=worker, claimed_at=now)
                )
                return taken.rowcount == 1

        return self.call(attempt)

    def record(self, number: int, accuracy: float | None = None, failed: str | None = None) -> None:
        def write() -> None:
            with self.engine.begin() as conn:
                conn.execute(confirmations.update().where(self._key(number)).values(accuracy=accuracy, failed=failed))

        self.call(write)

    def entries(self) -> dict[int, Entry]:
        def read() -> dict[int, Entry]:
            with self.engine.connect() as conn:
                rows = conn.execute(confirmations.select().where(confirmations.c.study_id == self.study_id)).mappings()
                return {r["trial_number"]: _entry(dict(r)) for r in rows}

        return self.call(read)


class LocalClaims:
    """Claims of a study that only this process can reach (an in-memory store)."""

    _lock = threading.Lock()

    def __init__(self) -> None:
        self._entries: dict[int, Entry] = {}

    def claim(self, number: int, worker: str, lapse: float) -> bool:
        with self._lock:
            entry = self._entries.get(number)
            now = time.time()
            if entry is not None and ("accuracy" in entry or "failed" in entry or entry["claimed_at"] >= now - lapse):
                return False
            self._entries[number] = {"worker": worker, "claimed_at": now}
            return True

    def record(self, number: int, accuracy: float | None = None, failed: str | None = None) -> None:
        with self._lock:
            self._entries[number] = _entry({**self._entries.get(number, {}), "accuracy": accuracy, "failed": failed})

    def entries(self) -> dict[int, Entry]:
        with self._lock:
            return dict(self._entries)


def _db_now(engine: sqlalchemy.Engine) -> Any:
    """The database server's time as Unix seconds, a SQL expression evaluated by the server.

    A SQLite file lives on one machine, whose clock every worker on it shares.
    """
    if engine.dialect.name == "postgresql":
        return sqlalchemy.literal_column("extract(epoch from clock_timestamp())", Float)
    return sqlalchemy.literal_column("((julianday('now') - 2440587.5) * 86400.0)", Float)


def _entry(row: dict[str, Any]) -> Entry:
    return {k: v for k, v in row.items() if k in ("worker", "claimed_at", "accuracy", "failed") and v is not None}


def claims_for(storage: Any, study_name: str) -> Claims:
    return (
        TableClaims(storage, study_name)
        if hasattr(storage, "engine") and hasattr(storage, "retrying")
        else LocalClaims()
    )
