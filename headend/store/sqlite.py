"""The MDMS store in one SQLite file: for a head-end on a single host."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from headend.store.base import MdmsStore
from headend.store.records import MessageRow, StoreError, day_of
from headend.store.sql import (
    ADDED_COLUMNS,
    INSERT_MESSAGE,
    KEY_BEFORE_CONTAINER,
    KEY_WITH_CONTAINER,
    SCHEMA,
    Query,
    Statement,
)
from headend.store.summaries import summary_statements

_T = TypeVar("_T")

_SQLITE_TYPES = {"int": "INTEGER", "real": "REAL", "json": "TEXT"}
_SQLITE_SCHEMA = SCHEMA.format(
    **_SQLITE_TYPES,
    id="INTEGER PRIMARY KEY AUTOINCREMENT",  # an increasing key of a table of its own
    message_id="INTEGER PRIMARY KEY AUTOINCREMENT",
    message_key="TEXT NOT NULL UNIQUE",
    message_keys="",
    message_partitioning="",
)
# PRAGMA user_version of a database this release made. 0: made before it, with message keys
# without the container and no message_days table.
_SCHEMA_VERSION = 1


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Columns a database made by an earlier release lacks (SQLite has no ADD COLUMN IF NOT
    EXISTS)."""
    for table, column, kind in ADDED_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {_SQLITE_TYPES[kind]}")


def _upgrade_from_unversioned(conn: sqlite3.Connection) -> None:
    """Bring a database made before _SCHEMA_VERSION 1 up to it: keys with the container, and
    message_days counted from the messages (one pass over the table, once)."""
    conn.create_function("day_of", 1, day_of, deterministic=True)
    conn.execute(f"UPDATE messages SET key = {KEY_WITH_CONTAINER} WHERE {KEY_BEFORE_CONTAINER}")
    conn.execute(
        "INSERT INTO message_days (day, family, messages) "
        "SELECT day_of(created_at), family, COUNT(*) FROM messages GROUP BY 1, 2"
    )


class SQLiteMdmsStore(MdmsStore):
    """One SQLite file in WAL mode, with synchronous=FULL (a recorded message survives a
    power cut, so the MDMS may acknowledge its notification).

    The standard sqlite3 module on two worker threads (one connection each), not aiosqlite:
    a whole write transaction - the batch's inserts, the summary updates that depend on which
    rows were new, the commit - runs as one function on the writer thread, one hand-off per
    batch where aiosqlite would take one per statement. Reads have their own connection and
    thread, so a dashboard query never waits behind a commit (WAL lets them run side by
    side) and never blocks the event loop that the IN-CSE shares. ":memory:" uses a single
    connection for both.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = str(path)
        self._writer: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        # Each connection is used only on its own thread.
        self._write_conn: sqlite3.Connection | None = None
        self._read_conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        if self._writer is not None:
            return
        in_memory = self.path == ":memory:"
        if not in_memory:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot open the MDMS database {self.path}: {exc}") from exc
        writer = ThreadPoolExecutor(1, thread_name_prefix="mdms-sqlite-writer")
        reader = (
            writer if in_memory else ThreadPoolExecutor(1, thread_name_prefix="mdms-sqlite-reader")
        )
        self._writer, self._reader = writer, reader
        try:
            self._write_conn = await self._run(writer, self._connect_writer)
            if in_memory:
                self._read_conn = self._write_conn
            else:
                self._read_conn = await self._run(reader, self._connect_reader)
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise StoreError(f"cannot open the MDMS database {self.path}: {exc}") from exc

    def _connect_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        made_before = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'"
        ).fetchone()
        conn.executescript(_SQLITE_SCHEMA)
        _add_missing_columns(conn)
        if version < _SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if made_before:
                    _upgrade_from_unversioned(conn)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA query_only=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    async def close(self) -> None:
        writer, reader = self._writer, self._reader
        write_conn, read_conn = self._write_conn, self._read_conn
        # Calls from now on fail with StoreError; calls already queued on a thread still run,
        # with the connection they captured, before that thread closes it.
        self._writer = self._reader = None
        self._write_conn = self._read_conn = None
        loop = asyncio.get_running_loop()
        if reader is not None and reader is not writer:
            if read_conn is not None:
                await loop.run_in_executor(reader, read_conn.close)
            reader.shutdown()
        if writer is not None:
            if write_conn is not None:
                await loop.run_in_executor(writer, write_conn.close)
            writer.shutdown()

    @staticmethod
    async def _run(pool: ThreadPoolExecutor, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    async def _write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        conn, pool = self._write_conn, self._writer
        if conn is None or pool is None:
            raise StoreError("the MDMS store is not open")

        def transaction() -> _T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return result

        try:
            return await self._run(pool, transaction)
        except sqlite3.Error as exc:
            raise StoreError(f"MDMS database error: {exc}") from exc

    async def _insert_messages(self, rows: Sequence[MessageRow]) -> int:
        def work(conn: sqlite3.Connection) -> int:
            new = [row for row in rows if conn.execute(INSERT_MESSAGE, row.params).fetchall()]
            for query, params in summary_statements(new):
                conn.executemany(query, params)
            return len(new)

        return await self._write(work)

    async def _execute(self, statements: Sequence[Statement]) -> None:
        def work(conn: sqlite3.Connection) -> None:
            for query, params in statements:
                conn.executemany(query, params)

        await self._write(work)

    async def _read(self, queries: Sequence[Query]) -> list[list[tuple[Any, ...]]]:
        conn, pool = self._read_conn, self._reader
        if conn is None or pool is None:
            raise StoreError("the MDMS store is not open")

        def snapshot() -> list[list[tuple[Any, ...]]]:
            conn.execute("BEGIN")  # one snapshot for all the queries
            try:
                return [conn.execute(query, params).fetchall() for query, params in queries]
            finally:
                conn.execute("COMMIT")

        try:
            return await self._run(pool, snapshot)
        except sqlite3.Error as exc:
            raise StoreError(f"MDMS database error: {exc}") from exc
