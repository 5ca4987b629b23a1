"""A throwaway PostgreSQL cluster the test starts and stops itself (initdb and
pg_ctl from Debian's PostgreSQL, a temporary directory, a free port), so an
outage can be staged without touching the machine's server."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

BIN = next(
    (p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)),
    Path("/usr/lib/postgresql/15/bin"),
)


class PgCluster:
    """``start()``/``stop()`` a private cluster; ``url`` is its asyncpg URL."""

    def __init__(self) -> None:
        if not (BIN / "initdb").exists():
            pytest.skip(f"PostgreSQL binaries not found under {BIN}")
        # not under pytest's tmp_path: its parents are 0700 root, closed to `postgres`
        self.root = Path(tempfile.mkdtemp(prefix="townhall-pg-"))
        self.data = self.root / "pgdata"
        self.port = free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
        self.log = self.root / "postgres.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres and shutil.which("runuser") is None:
            pytest.skip("running as root and runuser is missing: initdb refuses root")

    def _run(self, *args: str, timeout_s: float = 60.0) -> None:
        command = [str(BIN / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, timeout=timeout_s, capture_output=True)

    def init(self) -> PgCluster:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        return self

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
            " -c fsync=off -c max_connections=40"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def cleanup(self) -> None:
        if self.running():
            try:
                self.stop()
            except subprocess.SubprocessError:
                time.sleep(0.5)
        shutil.rmtree(self.root, ignore_errors=True)
