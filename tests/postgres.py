"""The PostgreSQL server tests use, and the databases they make on it (dropped afterwards).

The server is the local one (127.0.0.1:5432, trust authentication, as user postgres or
root), or the server of the `GRIDM2M_TEST_POSTGRES` URL (without a database name). A test
that asks for it is skipped, saying why (what each connection attempt said), when no server
answers: PostgreSQL is not part of every machine that runs the suite. Other test runs may
share the server, so everything happens in databases made for the purpose:

    with fresh_database("mdms") as url:   # a database of the block's own
        ...

or, for the CSE's storage, the fixtures below: `postgres_schema` (a schema of the test's own
in this session's database) and `postgres_private` (a database of the test's own, for faults
that reach a whole database).

Faults that reach the whole server (a restart, a crash) must not touch the shared one: they
get a cluster of their own, made by `initdb` in a fresh folder and run by `pg_ctl` on a free
port, and removed afterwards (`private_cluster`; skipped, saying why, when the PostgreSQL
server programs are not installed).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from gridm2m.broker import free_port

HOST = "127.0.0.1"
PORT = 5432
USERS = ("postgres", "root")  # the server's superuser, by the name packages give it
CHOSEN = os.environ.get("GRIDM2M_TEST_POSTGRES")

_server: tuple[str | None, str] | None = None


def _find_server() -> tuple[str | None, str]:
    bases = [CHOSEN] if CHOSEN else [f"postgresql://{user}@{HOST}:{PORT}" for user in USERS]
    errors = []
    for base in bases:
        url = f"{base.rstrip('/')}/postgres"
        try:
            with psycopg.connect(url, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            return url, ""
        except psycopg.Error as exc:
            errors.append(f"{base}: {str(exc).strip()}")
    return None, "no PostgreSQL answers: " + "; ".join(errors)


def server_url() -> str:
    """A URL of the server's maintenance database (to create and drop others), or skip the
    calling test saying why there is none. Asked once per test run."""
    global _server
    if _server is None:
        _server = _find_server()
    url, reason = _server
    if url is None:
        pytest.skip(reason)
    return url


def require_server() -> None:
    """Skip the calling test, with the reason, when the server does not answer."""
    server_url()


def database_url(server: str, name: str) -> str:
    return server.rsplit("/", 1)[0] + "/" + name


def admin() -> psycopg.Connection[tuple[object, ...]]:
    """A connection to the server's maintenance database (for CREATE/DROP DATABASE)."""
    return psycopg.connect(server_url(), autocommit=True, connect_timeout=5)


def _create(name: str) -> None:
    with admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _drop(name: str) -> None:
    """Drop a database, closing whatever still uses it."""
    with admin() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextmanager
def fresh_database(purpose: str = "test") -> Iterator[str]:
    """Create an empty database named after `purpose` and a random suffix; its URL; drop it
    when the block ends."""
    name = f"gridm2m_{purpose}_{uuid.uuid4().hex[:12]}"
    _create(name)
    try:
        yield database_url(server_url(), name)
    finally:
        _drop(name)


@dataclass(frozen=True)
class PostgresSchema:
    """Where one test's CSE tables go: the session's database, a schema of the test's own."""

    url: str
    schema: str
    database: str


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """This session's database, made empty and dropped (with any connection left) after."""
    name = f"gridm2m_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    _create(name)
    try:
        yield name
    finally:
        _drop(name)


@pytest.fixture
def postgres_schema(postgres_database: str) -> Iterator[PostgresSchema]:
    """A fresh schema in the session's database, dropped after the test."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    url = database_url(server_url(), postgres_database)
    yield PostgresSchema(url, schema, postgres_database)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def postgres_private() -> Iterator[str]:
    """A database of the test's own (its URL), for faults that reach a whole database
    (refusing connections to it); dropped after the test."""
    with fresh_database("test") as url:
        yield url


# ---- a cluster of the test's own ----------------------------------------------------------

_CLUSTER_TIMEOUT = 60  # seconds pg_ctl waits for the server to start or stop


def server_programs() -> Path | None:
    """The folder of `initdb` and `pg_ctl`: $GRIDM2M_TEST_PG_BIN, else the newest
    /usr/lib/postgresql/<version>/bin (Debian's layout), else the one on PATH."""
    chosen = os.environ.get("GRIDM2M_TEST_PG_BIN")
    candidates = [Path(chosen)] if chosen else []
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(
        (Path(found) for found in versions),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


class PrivateCluster:
    """A PostgreSQL server of one test's own: its data and unix sockets in `folder`, TCP on
    127.0.0.1:`port`, trust authentication, superuser `postgres`. Run as the `postgres`
    system user when the tests run as root (initdb refuses root)."""

    def __init__(self, programs: Path, folder: Path, port: int, user: str | None) -> None:
        self.programs = programs
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "server.log"
        self.port = port
        self._user = user

    @property
    def url(self) -> str:
        """The maintenance database's URL (to create others)."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def _command(self, program: str, *args: str) -> list[str]:
        return [str(self.programs / program), *args]

    def run(self, program: str, *args: str) -> None:
        """Run a server program to its end (as the cluster's owner); fail with its output."""
        done = subprocess.run(
            self._command(program, *args),
            capture_output=True,
            text=True,
            user=self._user,
            timeout=_CLUSTER_TIMEOUT + 30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            # Durability against a crash of the server (what the tests do) needs no fsync:
            # the kernel keeps what was written.
            "-c fsync=off -c full_page_writes=off -c max_connections=100"
        )
        self.run(
            "pg_ctl", "start", "-w", "-t", str(_CLUSTER_TIMEOUT), "-D", str(self.data),
            "-l", str(self.log), "-o", options,
        )  # fmt: skip

    async def restart(self, mode: str = "fast") -> None:
        """`pg_ctl restart -m <mode>` without blocking the event loop: fast ends every
        session and checkpoints; immediate is a crash (recovery from the WAL at start)."""
        process = await asyncio.create_subprocess_exec(
            *self._command(
                "pg_ctl", "restart", "-w", "-t", str(_CLUSTER_TIMEOUT), "-m", mode,
                "-D", str(self.data), "-l", str(self.log),
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            user=self._user,
        )  # fmt: skip
        async with asyncio.timeout(_CLUSTER_TIMEOUT + 30):
            output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"pg_ctl restart -m {mode} failed: {output.decode()}")

    def stop(self) -> None:
        """Stop the server at once (nothing of it is kept); SIGQUIT to the postmaster (what
        an immediate stop sends) if pg_ctl cannot."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            self.run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.data))
        except (RuntimeError, subprocess.TimeoutExpired):
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A fresh PostgreSQL cluster, started; stopped (immediately) and removed afterwards,
    whatever happened. Skips the calling test when the server programs are missing."""
    programs = server_programs()
    if programs is None:
        pytest.skip(
            "no PostgreSQL server programs (initdb, pg_ctl) in /usr/lib/postgresql/*/bin or "
            "on PATH; set GRIDM2M_TEST_PG_BIN to their folder"
        )
    user = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and initdb needs another user: no `postgres` user")
        user = "postgres"
    folder = Path(tempfile.mkdtemp(prefix="gridm2m-pg-"))
    try:
        if user is not None:
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        cluster = PrivateCluster(programs, folder, free_port(), user)
        cluster.run(
            "initdb", "-D", str(cluster.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        try:
            for attempt in range(3):
                try:
                    cluster.start()
                    break
                except RuntimeError:
                    # The port picked as free was taken before the server bound it.
                    if attempt == 2 or "Address already in use" not in cluster.log.read_text():
                        raise
                    cluster.port = free_port()
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_cluster() -> Iterator[PrivateCluster]:
    """A PostgreSQL cluster of the test's own (see `private_cluster`)."""
    with private_cluster() as cluster:
        yield cluster
