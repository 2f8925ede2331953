"""Debian's pgbouncer in front of the local PostgreSQL, started and stopped by storage_load.py --pgbouncer.

Transaction pooling: a worker holds a server connection only for the length of a transaction,
so many workers share a small pool of server connections (default_pool_size). Needs the
`pgbouncer` binary (apt-get install pgbouncer); runs as the `postgres` user when started as
root, as pgbouncer refuses root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy

CONFIG = """\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/users.txt
pool_mode = {mode}
default_pool_size = {pool}
max_client_conn = 5000
{prepared}ignore_startup_parameters = extra_float_digits,options
logfile = {folder}/pgbouncer.log
"""


def version() -> str | None:
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        return None
    return subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split("\n", 1)[0].strip()


@contextmanager
def pgbouncer(
    server: sqlalchemy.URL, mode: str = "transaction", pool: int = 20, prepared: int = 0
) -> Iterator[sqlalchemy.URL]:
    """Yield `server`'s URL through a fresh pgbouncer; its log is appended to the exception when it dies."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise RuntimeError("pgbouncer is not installed (apt-get install pgbouncer)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        listen = s.getsockname()[1]
    folder = Path(tempfile.mkdtemp(prefix="hpo-pgbouncer-"))
    folder.chmod(0o755)
    (folder / "users.txt").write_text(f'"{server.username}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        CONFIG.format(
            host=server.host or "127.0.0.1",
            port=server.port or 5432,
            listen=listen,
            folder=folder,
            mode=mode,
            pool=pool,
            prepared=f"max_prepared_statements = {prepared}\n" if prepared else "",
        )
    )
    user = ["-u", "postgres"] if os.geteuid() == 0 else []
    if user:
        shutil.chown(folder, "postgres")
    proc = subprocess.Popen(
        [binary, *user, str(folder / "pgbouncer.ini")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 10
        while not _listening(listen):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"pgbouncer did not start: {proc.stderr.read() if proc.poll() is not None else 'timeout'}"
                )
            time.sleep(0.1)
        yield server.set(host="127.0.0.1", port=listen)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
