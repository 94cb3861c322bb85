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
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

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
