"""The MDMS store on a PostgreSQL server: for a utility's database, shared by any number of
MDMS consumers (head-end processes).

Messages go in by batches: the rows of every `record_messages` call waiting for the writer
(up to MAX_GROUP_ROWS) go in one transaction. From COPY_FROM_ROWS rows they are COPied into a
temporary table and moved into `messages` by one INSERT ... SELECT ... ON CONFLICT DO NOTHING
RETURNING, which says which were new; fewer go in by an INSERT each, pipelined. The summary
tables are updated for the new ones only, in the same transaction, one statement per table.
COPY measured fastest with psycopg 3 from about 30 rows, against a per-row INSERT (executemany,
pipelined), a multi-row VALUES and an unnest of arrays; below that one round trip wins
(bench/bench_mdms_ingest.py, docs/scale-out.md).

Several consumers receiving the same instance store and count it once: the unique key makes
the second insert wait for the first transaction, then skip the row if that one committed.

The only module of the head-end that imports psycopg (with partitions.py): `open_store`
imports it when a PostgreSQL URL is configured, so a head-end on SQLite needs neither psycopg
nor libpq loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import psycopg_pool
from psycopg import errors, sql
from psycopg.types.string import TextLoader

from headend.store import partitions
from headend.store.base import MdmsStore
from headend.store.partitions import Upkeep
from headend.store.records import MessageRow, StoreError, checked_text, day_of
from headend.store.sql import (
    ADDED_COLUMNS,
    INSERTED_MESSAGE_COLUMNS,
    SCHEMA,
    UPSERT_COLUMN_TYPES,
    Query,
    Statement,
)
from headend.store.summaries import summary_statements

logger = logging.getLogger(__name__)

# JSON columns are `json` in PostgreSQL: kept as sent, and queryable with ->>.
_POSTGRES_TYPES = {"int": "BIGINT", "real": "DOUBLE PRECISION", "json": "JSON"}
_POSTGRES_SCHEMA = (
    SCHEMA.format(
        **_POSTGRES_TYPES,
        id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",  # a table of its own's key
        message_id="BIGINT GENERATED ALWAYS AS IDENTITY",
        message_key="TEXT NOT NULL",
        message_keys=",\n    PRIMARY KEY (id, created_at),\n    UNIQUE (key, created_at)",
        message_partitioning=" PARTITION BY RANGE (created_at)",
    )
    + f"CREATE TABLE IF NOT EXISTS {partitions.DEFAULT_PARTITION} PARTITION OF messages DEFAULT;\n"
    + "".join(
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {_POSTGRES_TYPES[kind]};\n"
        for table, column, kind in ADDED_COLUMNS
    )
)

_COLUMN_TYPES = {
    "seq": "BIGINT", "size": "BIGINT", "priority": "BIGINT", "content": "JSON",
    **dict.fromkeys(("meter_ts", "created_at", "received_at", "latency", "budget_s"),
                    "DOUBLE PRECISION"),
}  # fmt: skip
_COLUMNS = ", ".join(INSERTED_MESSAGE_COLUMNS)
# One per connection; emptied at each commit. `ord` keeps the batch's order for the ids.
_STAGING = "CREATE TEMP TABLE IF NOT EXISTS incoming_messages (ord INTEGER NOT NULL, {}) ON " \
    "COMMIT DELETE ROWS".format(
        ", ".join(f"{c} {_COLUMN_TYPES.get(c, 'TEXT')}" for c in INSERTED_MESSAGE_COLUMNS)
    )  # fmt: skip
_COPY_IN = f"COPY incoming_messages (ord, {_COLUMNS}) FROM STDIN"
_MOVE_IN = f"""
INSERT INTO messages ({_COLUMNS}) SELECT {_COLUMNS} FROM incoming_messages ORDER BY ord
ON CONFLICT (key, created_at) DO NOTHING
RETURNING key
"""
_INSERT_ONE = f"""
INSERT INTO messages ({_COLUMNS}) VALUES ({", ".join(["%s"] * len(INSERTED_MESSAGE_COLUMNS))})
ON CONFLICT (key, created_at) DO NOTHING
RETURNING key
"""

MAX_GROUP_ROWS = 1000  # the most messages one transaction takes from waiting callers
# From this many rows a batch goes in by COPY; a smaller one by an INSERT per row, all in one
# round trip. COPY costs two more round trips and the emptying of its temporary table at
# commit (about 1.5 ms here); the two cross between 10 and 30 rows (bench/bench_mdms_ingest.py).
COPY_FROM_ROWS = 30
_RETRIES = 3  # a transaction chosen as a deadlock's victim is run again up to this often
UPKEEP_INTERVAL = 3600.0  # seconds between two partition upkeeps of a consumer


def _postgres_query(query: str) -> str:
    return query.replace("?", "%s")


_TYPE_NAMES = {"text": "text", **_POSTGRES_TYPES}
_VALUES = re.compile(r"VALUES \(\?(?:, \?)*\)")


def _unnest(query: str, kinds: Sequence[str]) -> str:
    """The upsert with its VALUES row replaced by rows from one array per column."""
    arrays = ", ".join(f"%s::{_TYPE_NAMES[kind]}[]" for kind in kinds)
    unnested, replaced = _VALUES.subn(f"SELECT * FROM unnest({arrays})", query)
    if replaced != 1:
        raise ValueError(f"not an INSERT ... VALUES (?, ...): {query}")
    return unnested


# Set-based forms of the summary upserts: one statement whatever the batch.
_SET_BASED = {query: _unnest(query, kinds) for query, kinds in UPSERT_COLUMN_TYPES.items()}


@dataclass(eq=False)
class _Waiting:
    """A `record_messages` call's rows, waiting for the writer to take them."""

    rows: Sequence[MessageRow]
    new: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class PostgresMdmsStore(MdmsStore):
    """PostgreSQL through psycopg 3 (async) and its connection pool.

    `schema` puts the tables in their own schema (created if missing), e.g. one per head-end
    sharing a database. Writes of this process go one at a time: message ids are then
    committed in increasing order by this process (with several consumers, only per
    consumer). `retention_days`: messages created longer ago than that many whole days are
    dropped, a day at a time (None keeps them all); `upkeep_interval` seconds between two
    partition upkeeps (None: only at open and when `upkeep()` is called); `clock` says what
    day it is.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
        retention_days: int | None = None,
        upkeep_interval: float | None = UPKEEP_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        if retention_days is not None and (
            isinstance(retention_days, bool)
            or not isinstance(retention_days, int)
            or retention_days < 1
        ):
            raise ValueError(f"retention_days must be a whole number >= 1, got {retention_days!r}")
        self.url = url
        self.schema = schema
        self.retention_days = retention_days
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._upkeep_interval = upkeep_interval
        self._clock = clock
        self._pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._write_lock = asyncio.Lock()
        self._waiting: list[_Waiting] = []
        self._upkeep_task: asyncio.Task[None] | None = None

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.set_autocommit(True)
        # JSON columns come back as text, as from SQLite: one decoding path for both.
        conn.adapters.register_loader("json", TextLoader)
        if self.schema is not None:
            await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        await conn.execute(_STAGING)

    def _lock_args(self, lock: int) -> tuple[int, str]:
        return lock, self.schema or ""

    async def open(self) -> None:
        if self._pool is not None:
            return
        if self.schema is not None:
            checked_text("PostgreSQL", "schema", self.schema)
        pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]]
        pool = psycopg_pool.AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self._pool_size,
            open=False,
            configure=self._configure,
            kwargs={"connect_timeout": max(1, int(self._connect_timeout))},
            name="mdms",
        )
        try:
            await pool.open(wait=True, timeout=self._connect_timeout)
            async with pool.connection() as conn:
                await self._make_tables(conn)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            await pool.close()
            raise StoreError(f"cannot open the MDMS database on PostgreSQL: {exc}") from exc
        self._pool = pool
        try:
            await self.upkeep()
        except StoreError as exc:  # rows of days without a partition wait in the default one
            logger.warning("%s", exc)
        if self._upkeep_interval is not None:
            self._upkeep_task = asyncio.create_task(self._upkeep_forever(self._upkeep_interval))

    async def _make_tables(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Create the tables, or bring a database made before the partitioning up to date, in
        one transaction; one consumer at a time (two CREATE TABLE IF NOT EXISTS at once can
        fail on PostgreSQL's catalog)."""
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                self._lock_args(partitions.SETUP_LOCK),
            )
            if self.schema is not None:
                create = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}")
                await conn.execute(create.format(sql.Identifier(self.schema)))
            cur = await conn.execute(
                "SELECT relkind FROM pg_class WHERE oid = to_regclass('messages')"
            )
            found = await cur.fetchone()
            unpartitioned = found is not None and found[0] == "r"
            if unpartitioned:
                await partitions.set_aside_unpartitioned(conn)
            await conn.execute(_POSTGRES_SCHEMA)
            if unpartitioned:
                moved = await partitions.move_in_unpartitioned(conn)
                logger.warning(
                    "the MDMS's messages table was made before the partitioning by day: "
                    "%d messages moved into the partitioned table",
                    moved,
                )

    async def close(self) -> None:
        task, self._upkeep_task = self._upkeep_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _ready(self) -> psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise StoreError("the MDMS store is not open")
        return self._pool

    # ---- partition upkeep ---------------------------------------------------------------------

    async def upkeep(self) -> Upkeep | None:
        """Create the coming days' partitions and apply the retention; None when another
        consumer is doing it (it holds the advisory lock)."""
        pool = self._ready()
        today = day_of(self._clock())
        lock = self._lock_args(partitions.UPKEEP_LOCK)
        try:
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", lock)
                got = await cur.fetchone()
                if not (got and got[0]):
                    return None
                try:
                    return await partitions.upkeep(conn, today, self.retention_days)
                finally:
                    # A broken connection releases it by closing (the pool drops it).
                    if not conn.closed:
                        await conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", lock)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StoreError(f"MDMS partition upkeep failed: {exc}") from exc

    async def _upkeep_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                done = await self.upkeep()
            except StoreError as exc:  # the next turn tries again; rows wait in the default
                logger.warning("%s", exc)
                continue
            if done and (done.created or done.dropped):
                logger.info(
                    "MDMS partitions: created days %s, dropped days %s", done.created, done.dropped
                )

    # ---- writes -------------------------------------------------------------------------------

    async def _insert_messages(self, rows: Sequence[MessageRow]) -> int:
        waiting = _Waiting(rows)
        self._waiting.append(waiting)
        # Whoever holds the lock writes for everybody waiting: calls that arrive while a
        # transaction runs share the next one (group commit).
        async with self._write_lock:
            while not waiting.new.done() and self._waiting:
                await self._write_group(self._take_group())
        return waiting.new.result()

    def _take_group(self) -> list[_Waiting]:
        group: list[_Waiting] = []
        count = 0
        while self._waiting and (not group or count + len(self._waiting[0].rows) <= MAX_GROUP_ROWS):
            taken = self._waiting.pop(0)
            group.append(taken)
            count += len(taken.rows)
        return group

    async def _write_group(self, group: list[_Waiting]) -> None:
        try:
            counts = await self._insert_with_retries(group)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            if len(group) > 1 and not isinstance(
                exc, psycopg.OperationalError | psycopg_pool.PoolTimeout
            ):
                # Something in one call's rows: each call on its own, so the others get in.
                for waiting in group:
                    await self._write_group([waiting])
                return
            failure = StoreError(f"MDMS database error: {exc}")
            for waiting in group:
                if not waiting.new.done():
                    waiting.new.set_exception(failure)
            return
        except BaseException:
            for waiting in group:  # cancelled halfway: the callers hear it, nobody hangs
                if not waiting.new.done():
                    waiting.new.set_exception(StoreError("the MDMS write was interrupted"))
            raise
        for waiting, count in zip(group, counts, strict=True):
            waiting.new.set_result(count)

    async def _insert_with_retries(self, group: list[_Waiting]) -> list[int]:
        for attempt in range(_RETRIES + 1):
            try:
                return await self._insert_group(group)
            except (errors.DeadlockDetected, errors.SerializationFailure):
                # Two consumers got overlapping batches in different orders.
                if attempt == _RETRIES:
                    raise
        raise AssertionError("unreachable")

    async def _insert_group(self, group: list[_Waiting]) -> list[int]:
        """One transaction: every new row of the group, its summaries; new rows per call."""
        owners: dict[str, int] = {}  # key -> the call that brought it first
        unique: list[MessageRow] = []
        for index, waiting in enumerate(group):
            for row in waiting.rows:
                if row.message.key not in owners:
                    owners[row.message.key] = index
                    unique.append(row)
        pool = self._ready()
        async with pool.connection() as conn, conn.transaction():
            if len(unique) >= COPY_FROM_ROWS:
                inserted = await self._copy_in(conn, unique)
            else:
                inserted = await self._insert_each(conn, unique)
            new = [row for row in unique if row.message.key in inserted]
            await self._run_statements(conn, summary_statements(new))
        counts = [0] * len(group)
        for key in inserted:
            counts[owners[key]] += 1
        return counts

    @staticmethod
    async def _copy_in(conn: psycopg.AsyncConnection[Any], rows: Sequence[MessageRow]) -> set[str]:
        """COPY the rows into the temporary table, then insert them; the keys inserted."""
        cur = conn.cursor()
        async with cur.copy(_COPY_IN) as copy:
            for ord_, row in enumerate(rows):
                await copy.write_row((ord_, *row.params))
        await cur.execute(_MOVE_IN)
        return {key for (key,) in await cur.fetchall()}

    @staticmethod
    async def _insert_each(
        conn: psycopg.AsyncConnection[Any], rows: Sequence[MessageRow]
    ) -> set[str]:
        """An INSERT per row, pipelined; the keys inserted."""
        cur = conn.cursor()
        await cur.executemany(_INSERT_ONE, [row.params for row in rows], returning=True)
        inserted = set()
        for _ in rows:  # one result set per row: empty when the key was known
            found = await cur.fetchone()
            if found is not None:
                inserted.add(found[0])
            cur.nextset()
        return inserted

    @staticmethod
    async def _run_statements(
        conn: psycopg.AsyncConnection[Any], statements: Sequence[Statement]
    ) -> None:
        # One round trip for all of them; a summary upsert as one statement for its rows.
        async with conn.pipeline():
            cur = conn.cursor()
            for query, params in statements:
                if not params:
                    continue
                set_based = _SET_BASED.get(query)
                if set_based is not None and len(params) > 1:
                    columns = [list(column) for column in zip(*params, strict=True)]
                    await cur.execute(set_based, columns)
                else:
                    await cur.executemany(_postgres_query(query), params)

    async def _execute(self, statements: Sequence[Statement]) -> None:
        pool = self._ready()
        async with self._write_lock, pool.connection() as conn, conn.transaction():
            await self._run_statements(conn, statements)

    async def _read(self, queries: Sequence[Query]) -> list[list[tuple[Any, ...]]]:
        pool = self._ready()
        async with pool.connection() as conn, conn.transaction():
            if len(queries) > 1:  # one snapshot for all the queries
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            out = []
            for query, params in queries:
                cur = await conn.execute(_postgres_query(query), params)
                out.append(await cur.fetchall())
            return out
