"""What the benchmark scripts share: the PostgreSQL server they use, throwaway databases on it, timing."""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import sqlalchemy

T = TypeVar("T")
# The same server and variable as the test suite, so one setting serves both.
POSTGRES = os.environ.get("HPO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@contextmanager
def fresh_database(server: str | sqlalchemy.URL = POSTGRES, prefix: str = "hpo_bench") -> Iterator[str]:
    """A new, empty database on `server` for the block, dropped afterwards (connections and all); yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    base = sqlalchemy.make_url(server)
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.NullPool)
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def timed(work: Callable[[], T]) -> tuple[T, float]:
    """work()'s result and its wall time in seconds."""
    start = time.perf_counter()
    result = work()
    return result, time.perf_counter() - start


def median_time(work: Callable[[], object], repeats: int) -> float:
    """The median wall time of `repeats` calls: shared machines are noisy, a median is what we report."""
    return statistics.median(timed(work)[1] for _ in range(repeats))
