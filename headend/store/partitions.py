"""The MDMS's messages on PostgreSQL: one partition per UTC day of `created_at`.

Why `created_at` (when the DAP's MN-CSE stored the instance): it travels with the instance
(its `created:` label, else its `ct`), so every MDMS consumer that gets the instance, and every
redelivery of it, computes the same value, and the same instance always lands in the same
partition. That is what makes UNIQUE (key, created_at) as good as UNIQUE (key): PostgreSQL
requires a unique constraint of a partitioned table to contain the partition column.
`received_at` is each consumer's own clock, so two copies of an instance could fall on two
sides of midnight and both be stored; `meter_ts` is the meter's clock (accelerated in tests,
absent from some flows, wrong on a meter with a bad clock).

Partitions are created ahead (`AHEAD_DAYS`) and a little behind (`BEHIND_DAYS`, for a DAP's
backlog after an outage); a row of any other day goes to the default partition, so nothing
is refused. When the partition of a day that has rows in the default partition is created,
those rows move into it, in the same transaction, so a later copy of one of them still finds
it. Retention drops whole day partitions older than `retention_days` (a file unlink, not a
DELETE), deletes the default partition's rows of those days, and their `message_days` counts.

Upkeep (creating and dropping) runs in one consumer at a time: whoever gets the session
advisory lock; the others skip their turn. Each change takes the parent table's ACCESS
EXCLUSIVE lock for a moment, with a lock_timeout so it never queues writers behind a long read
for more than that; a change that times out is tried again at the next upkeep.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from headend.store.records import DAY_S
from headend.store.sql import INSERTED_MESSAGE_COLUMNS, KEY_BEFORE_CONTAINER, KEY_WITH_CONTAINER

AHEAD_DAYS = 2  # with hourly upkeep, a day's partition exists two days before it starts
BEHIND_DAYS = 7  # past days given a partition (never more than the retention keeps)
LOCK_TIMEOUT = "5s"  # the longest a partition change waits for the parent table's lock
DEFAULT_PARTITION = "messages_default"
_PARTITION = re.compile(r"^messages_p(\d{8})$")
_EPOCH = datetime.date(1970, 1, 1)

# Advisory lock keys (the first of two int4; the second is the hash of the store's schema).
SETUP_LOCK = 0x6D646D73  # "mdms": creating or upgrading the tables, one consumer at a time
UPKEEP_LOCK = SETUP_LOCK + 1  # partition upkeep, one consumer at a time

# records.day_of in SQL: the day whose bounds hold created_at, whatever the division rounds to.
DAY_SQL = (
    "(floor(created_at / 86400) - CASE WHEN floor(created_at / 86400) * 86400 > created_at "
    "THEN 1 WHEN (floor(created_at / 86400) + 1) * 86400 <= created_at THEN -1 ELSE 0 END)"
    "::bigint"
)


@dataclass(frozen=True, slots=True)
class Upkeep:
    """What one upkeep changed: the days (records.day_of) whose partitions it created and
    dropped."""

    created: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()


def partition_name(day: int) -> str:
    return f"messages_p{(_EPOCH + datetime.timedelta(days=day)):%Y%m%d}"


def _day_of_name(name: str) -> int | None:
    found = _PARTITION.match(name)
    if found is None:
        return None
    return (datetime.datetime.strptime(found.group(1), "%Y%m%d").date() - _EPOCH).days


async def partition_days(conn: psycopg.AsyncConnection[Any]) -> set[int]:
    """The days that have a partition."""
    cur = await conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'messages'::regclass"
    )
    days = (_day_of_name(name) for (name,) in await cur.fetchall())
    return {day for day in days if day is not None}


async def _lock_messages(conn: psycopg.AsyncConnection[Any]) -> None:
    # Parent first, as every INSERT does (parent, then the partition it routes to): no
    # deadlock with writers, only a short wait.
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    await conn.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")


def _in_day(day: int) -> sql.Composed:
    return sql.SQL("created_at >= {} AND created_at < {}").format(
        sql.Literal(day * DAY_S), sql.Literal((day + 1) * DAY_S)
    )


async def _create_partition(conn: psycopg.AsyncConnection[Any], day: int) -> None:
    """Create a day's partition; rows of that day waiting in the default partition move in."""
    name = sql.Identifier(partition_name(day))
    in_day = _in_day(day)
    default = sql.Identifier(DEFAULT_PARTITION)
    waiting = await conn.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(default, in_day)
    )
    row = await waiting.fetchone()
    move = bool(row and row[0])
    if move:  # PostgreSQL refuses a partition whose rows sit in the default one
        await conn.execute(
            sql.SQL("CREATE TEMP TABLE moving_messages ON COMMIT DROP AS "
                    "SELECT * FROM {} WHERE {}").format(default, in_day)
        )  # fmt: skip
        await conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(default, in_day))
    await conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF messages FOR VALUES FROM ({}) TO ({})").format(
            name, sql.Literal(day * DAY_S), sql.Literal((day + 1) * DAY_S)
        )
    )
    if move:  # with their ids, so feeds and command answers see the same rows
        await conn.execute(
            "INSERT INTO messages OVERRIDING SYSTEM VALUE SELECT * FROM moving_messages"
        )
        await conn.execute("DROP TABLE moving_messages")


async def create_partitions(conn: psycopg.AsyncConnection[Any], days: Iterable[int]) -> list[int]:
    """Create the partitions of the days that lack one; the days created."""
    wanted = set(days)
    if not wanted - await partition_days(conn):
        return []
    async with conn.transaction():
        await _lock_messages(conn)
        missing = sorted(wanted - await partition_days(conn))  # again, under the lock
        for day in missing:
            await _create_partition(conn, day)
    return missing


async def drop_days_before(conn: psycopg.AsyncConnection[Any], cutoff: int) -> list[int]:
    """Remove every message created before day `cutoff` and its count in message_days;
    the days whose partitions were dropped."""
    async with conn.transaction():
        await _lock_messages(conn)
        old = sorted(day for day in await partition_days(conn) if day < cutoff)
        for day in old:
            await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(partition_name(day))))
        await conn.execute(
            sql.SQL("DELETE FROM {} WHERE created_at < {}").format(
                sql.Identifier(DEFAULT_PARTITION), sql.Literal(cutoff * DAY_S)
            )
        )
        await conn.execute("DELETE FROM message_days WHERE day < %s", (cutoff,))
    return old


async def upkeep(
    conn: psycopg.AsyncConnection[Any], today: int, retention_days: int | None
) -> Upkeep:
    """Partitions from BEHIND_DAYS before `today` to AHEAD_DAYS after it, and with a
    retention, nothing created before day `today - retention_days`. The caller holds
    UPKEEP_LOCK."""
    behind = BEHIND_DAYS if retention_days is None else min(BEHIND_DAYS, retention_days)
    created = await create_partitions(conn, range(today - behind, today + AHEAD_DAYS + 1))
    dropped: list[int] = []
    if retention_days is not None:
        dropped = await drop_days_before(conn, today - retention_days)
    return Upkeep(tuple(created), tuple(dropped))


# ---- a database made before the partitioning -------------------------------------------------

OLD_TABLE = "messages_unpartitioned"
_OLD_INDEXES = ("messages_by_meter", "messages_by_family", "messages_by_latency", "messages_by_ref")


async def set_aside_unpartitioned(conn: psycopg.AsyncConnection[Any]) -> None:
    """Rename a pre-partitioning messages table out of the way, with the names its indexes,
    constraints and id sequence hold (the new table takes them). In the caller's
    transaction, before the new tables are made."""
    await conn.execute(f"ALTER TABLE messages RENAME TO {OLD_TABLE}")
    for index in _OLD_INDEXES:
        await conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(index)))
    await conn.execute(f"ALTER TABLE {OLD_TABLE} DROP CONSTRAINT IF EXISTS messages_pkey")
    await conn.execute(f"ALTER TABLE {OLD_TABLE} DROP CONSTRAINT IF EXISTS messages_key_key")
    await conn.execute(f"ALTER TABLE {OLD_TABLE} ALTER COLUMN id DROP IDENTITY IF EXISTS")


async def move_in_unpartitioned(conn: psycopg.AsyncConnection[Any]) -> int:
    """Copy the set-aside table into the partitioned one (a partition per day it has, keys
    with their container, ids kept), count message_days, drop it; how many rows moved. In
    the caller's transaction, after the new tables are made."""
    cur = await conn.execute(f"SELECT DISTINCT {DAY_SQL} FROM {OLD_TABLE}")
    days = [int(day) for (day,) in await cur.fetchall()]
    for day in sorted(set(days) - await partition_days(conn)):
        await _create_partition(conn, day)
    columns = ", ".join(INSERTED_MESSAGE_COLUMNS)
    selected = ", ".join(
        f"CASE WHEN {KEY_BEFORE_CONTAINER} THEN {KEY_WITH_CONTAINER} ELSE key END"
        if column == "key"
        else column
        for column in INSERTED_MESSAGE_COLUMNS
    )
    # No parameters in these statements: the % of LIKE stays as it is.
    moved = await conn.execute(
        f"INSERT INTO messages (id, {columns}) OVERRIDING SYSTEM VALUE "
        f"SELECT id, {selected} FROM {OLD_TABLE} ORDER BY id"
    )
    await conn.execute(
        "SELECT setval(pg_get_serial_sequence('messages', 'id'), max(id)) FROM messages "
        "HAVING max(id) IS NOT NULL"
    )
    await conn.execute(
        f"INSERT INTO message_days (day, family, messages) "
        f"SELECT {DAY_SQL}, family, count(*) FROM messages GROUP BY 1, 2"
    )
    await conn.execute(f"DROP TABLE {OLD_TABLE}")
    return moved.rowcount
