"""The MDMS store at scale on a real PostgreSQL server (tests/postgres.py): messages
partitioned by day with a retention, batched ingest, several consumers on one database, and a
database made before the partitioning.

The module makes a database of its own and drops it at the end; each test has a schema of its
own. A clock the test moves says what day it is.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from headend.store import MdmsStore, MeterMessage, PostgresMdmsStore, SQLiteMdmsStore, StoreError
from headend.store.partitions import DEFAULT_PARTITION, UPKEEP_LOCK, Upkeep, partition_name
from headend.store.records import DAY_S, CommandRecord
from tests.postgres import fresh_database

DAY = 20_454  # 2026-01-01, in days since 1970-01-01
T0 = DAY * DAY_S
WAIT = 30.0  # the longest a test waits for the server to reach a state


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_database("mdms_scale") as url:
        yield url


@dataclass
class Clock:
    now: float = T0 + 3600

    def __call__(self) -> float:
        return self.now


@dataclass
class Stores:
    """Opens stores (consumers) on one schema of the test database; closes them all."""

    url: str
    schema: str
    clock: Clock
    opened: list[PostgresMdmsStore]

    async def open(self, **options: Any) -> PostgresMdmsStore:
        store = PostgresMdmsStore(
            self.url, schema=self.schema, upkeep_interval=None, clock=self.clock, **options
        )
        await store.open()
        self.opened.append(store)
        return store

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        """A plain connection on the schema, for what the store does not show."""
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        return conn

    async def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        async with await self.connect() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def partition_of(self, key: str) -> list[str]:
        found = await self.rows("SELECT tableoid::regclass::text FROM messages WHERE key = %s", key)
        return [name for (name,) in found]

    async def partition_days(self) -> list[str]:
        found = await self.rows(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'messages'::regclass ORDER BY 1"
        )
        return [name for (name,) in found]


@pytest.fixture
async def stores(database: str) -> AsyncIterator[Stores]:
    made = Stores(database, f"mdms_{uuid.uuid4().hex[:12]}", Clock(), [])
    yield made
    for store in made.opened:
        await store.close()


def message(key: str, created_at: float, **changes: Any) -> MeterMessage:
    fields: dict[str, Any] = {
        "key": key, "dap": "dap1", "meter": "m1", "family": "reading",
        "flow": "mr-multi-interval", "ptype": "resp-data", "seq": 1, "meter_ts": created_at,
        "created_at": created_at, "received_at": created_at + 2, "size": 100,
        "budget_s": 3600.0, "priority": 3, "content": {"flow": "mr-multi-interval"},
    }  # fmt: skip
    fields.update(changes)
    return MeterMessage(**fields)


def names(*days: int) -> list[str]:
    return sorted(partition_name(day) for day in days)


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Until the server is in a state (asked again every few ms: the server has no event
    to wait on), or fail after WAIT seconds."""
    try:
        async with asyncio.timeout(WAIT):
            while not await condition():
                await asyncio.sleep(0.005)
    except TimeoutError:
        pytest.fail(f"gave up waiting: {what}")


# ---- partitions by day --------------------------------------------------------------------


async def test_a_message_lands_in_the_partition_of_its_creation_day_across_midnight(
    stores: Stores,
) -> None:
    stores.clock.now = T0 + DAY_S - 0.5  # half a second before the end of DAY
    store = await stores.open()
    assert await stores.partition_days() == sorted(
        [DEFAULT_PARTITION, *names(*range(DAY - 7, DAY + 3))]
    )
    before, after = T0 + DAY_S - 0.001, T0 + DAY_S  # either side of midnight
    assert await store.record_messages([message("a", before), message("b", after)]) == 2
    assert await stores.partition_of("a") == [partition_name(DAY)]
    assert await stores.partition_of("b") == [partition_name(DAY + 1)]

    # Five days ahead has no partition yet: the default one keeps the message meanwhile.
    later = T0 + 5 * DAY_S + 60
    assert await store.record_messages([message("c", later)]) == 1
    assert await stores.partition_of("c") == [DEFAULT_PARTITION]
    (waiting,) = await store.recent_messages(limit=1)

    stores.clock.now = T0 + 3 * DAY_S + 1  # three days on: upkeep makes DAY + 5's partition
    assert await store.upkeep() == Upkeep(created=(DAY + 3, DAY + 4, DAY + 5))
    assert await stores.partition_of("c") == [partition_name(DAY + 5)]
    (moved,) = await store.recent_messages(limit=1)
    assert moved == waiting  # the same row, id and all
    # A copy of it that comes now finds it in its new partition.
    assert await store.record_messages([message("c", later), message("a", before)]) == 0
    assert (await store.meter("m1") or {})["messages"] == 3
    assert await store.upkeep() == Upkeep()  # nothing left to do


async def test_a_message_of_a_day_without_partition_is_kept_in_the_default_one(
    stores: Stores,
) -> None:
    store = await stores.open()
    old, future = 631_152_000.0, 4_102_444_800.0  # 1990 and 2100: a meter's broken clock
    batch = [message("old", old), message("future", future), message("today", T0 + 60)]
    assert await store.record_messages(batch) == 3
    assert await store.record_messages(batch) == 0
    assert await stores.partition_of("old") == [DEFAULT_PARTITION]
    assert await stores.partition_of("future") == [DEFAULT_PARTITION]
    assert await stores.partition_of("today") == [partition_name(DAY)]
    assert [m["key"] for m in await store.recent_messages()] == ["today", "future", "old"]
    assert (await store.latency_by_family())["reading"]["count"] == 3


async def test_retention_drops_the_partitions_of_old_days_only(stores: Stores) -> None:
    stores.clock.now = T0 - 4 * DAY_S + 60
    store = await stores.open(retention_days=2)
    batch = [message(f"d{back}", T0 - back * DAY_S + 60, received_at=T0 - back * DAY_S + 60 + back)
             for back in (4, 3, 2)]  # fmt: skip
    batch.append(message("ancient", T0 - 30 * DAY_S, received_at=T0 - 30 * DAY_S + 10))
    batch.append(message("ahead", T0 + 30 * DAY_S, received_at=T0 + 30 * DAY_S + 20))
    assert await store.record_messages(batch) == 5
    assert await stores.partition_of("d4") == [partition_name(DAY - 4)]

    stores.clock.now = T0 + 60  # four days later: keep days DAY - 2 and after
    done = await store.upkeep()
    assert done == Upkeep(created=(DAY - 1, DAY, DAY + 1, DAY + 2),
                          dropped=(DAY - 6, DAY - 5, DAY - 4, DAY - 3))  # fmt: skip
    assert await stores.partition_days() == sorted(
        [DEFAULT_PARTITION, *names(*range(DAY - 2, DAY + 3))]
    )
    assert sorted(m["key"] for m in await store.recent_messages()) == ["ahead", "d2"]
    assert await stores.rows("SELECT day, family, messages FROM message_days ORDER BY day") == [
        (DAY - 2, "reading", 1),
        (DAY + 30, "reading", 1),
    ]
    # The summaries still count every message received; the percentiles rank what is kept.
    assert (await store.meter("m1") or {})["messages"] == 5
    latency = (await store.latency_by_family())["reading"]
    assert (latency["count"], latency["max"]) == (5, 20.0)
    assert (latency["p50"], latency["p99"]) == (2.0, 20.0)
    # The store remembers a message as long as it keeps it: a copy of a dropped one that
    # arrives after its day was dropped is taken as new (docs/scale-out.md).
    assert await store.record_messages([message("d2", T0 - 2 * DAY_S + 60)]) == 0
    assert await store.record_messages([message("d4", T0 - 4 * DAY_S + 60)]) == 1


async def test_one_consumer_at_a_time_does_the_upkeep(stores: Stores) -> None:
    first = await stores.open(retention_days=3)
    second = await stores.open(retention_days=3)
    stores.clock.now += DAY_S
    async with await stores.connect() as holder:  # as a consumer busy with its upkeep
        await holder.execute(
            "SELECT pg_advisory_lock(%s, hashtext(%s))", (UPKEEP_LOCK, stores.schema)
        )
        assert await first.upkeep() is None
        assert await second.upkeep() is None
        await holder.execute(
            "SELECT pg_advisory_unlock(%s, hashtext(%s))", (UPKEEP_LOCK, stores.schema)
        )
    assert await second.upkeep() == Upkeep(created=(DAY + 3,), dropped=(DAY - 3,))
    assert await first.upkeep() == Upkeep()


# ---- several consumers ----------------------------------------------------------------------


async def waiting_for_locks(stores: Stores, count: int) -> bool:
    found = await stores.rows(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return bool(found[0][0] >= count)


async def test_two_transactions_inserting_one_instance_at_once_store_and_count_it_once(
    stores: Stores,
) -> None:
    first, second = await stores.open(), await stores.open()
    await first.record_messages([message("seen", T0)])
    async with await stores.connect() as blocker:
        # Hold meter m1's summary row: the first consumer's transaction inserts the message,
        # then waits here, uncommitted.
        await blocker.execute("BEGIN")
        await blocker.execute("SELECT * FROM meters WHERE meter = 'm1' FOR UPDATE")
        one = asyncio.create_task(first.record_messages([message("twice", T0 + 1)]))
        await until(lambda: waiting_for_locks(stores, 1), "the first consumer's insert waits")
        # The second consumer gets the same instance meanwhile: it waits on the first's key.
        two = asyncio.create_task(second.record_messages([message("twice", T0 + 1)]))
        await until(lambda: waiting_for_locks(stores, 2), "the second consumer's insert waits")
        await blocker.execute("ROLLBACK")
    assert (await one, await two) == (1, 0)
    assert await stores.partition_of("twice") == [partition_name(DAY)]
    assert (await second.meter("m1") or {})["messages"] == 2
    assert await second.counts_by_flow() == {"mr-multi-interval": 2}


async def test_when_the_first_transaction_fails_the_second_stores_the_instance(
    stores: Stores,
) -> None:
    first, second = await stores.open(), await stores.open()
    await first.record_messages([message("seen", T0)])
    async with await stores.connect() as blocker:
        await blocker.execute("BEGIN")
        await blocker.execute("SELECT * FROM meters WHERE meter = 'm1' FOR UPDATE")
        one = asyncio.create_task(first.record_messages([message("twice", T0 + 1)]))
        await until(lambda: waiting_for_locks(stores, 1), "the first consumer's insert waits")
        two = asyncio.create_task(second.record_messages([message("twice", T0 + 1)]))
        await until(lambda: waiting_for_locks(stores, 2), "the second consumer's insert waits")
        # The first consumer's transaction dies (its backend cancelled, as a lost connection).
        await blocker.execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE datname = "
            "current_database() AND wait_event_type = 'Lock' AND query LIKE '%meters%'"
        )
        with pytest.raises(StoreError, match="canceling statement"):
            await one
        await blocker.execute("ROLLBACK")
    assert await two == 1
    assert (await first.meter("m1") or {})["messages"] == 2


async def test_consumers_that_deadlock_on_each_others_instances_both_get_through(
    stores: Stores,
) -> None:
    first, second = await stores.open(), await stores.open()
    x, y, z, w = (message(key, T0 + n) for n, key in enumerate("xyzw"))
    async with await stores.connect() as blocker:
        # Another writer holds z and w for a moment, so that the first consumer has inserted
        # x and the second y when each goes on to the other's: a deadlock, which PostgreSQL
        # breaks by failing one of them; that one is run again.
        await blocker.execute("BEGIN")
        for held in (z, w):
            await blocker.execute(
                "INSERT INTO messages (key, dap, meter, family, flow, ptype, created_at, "
                "received_at, latency, size, priority, content) VALUES "
                "(%s, 'dap1', 'm1', 'reading', 'f', 'x', %s, %s, 0, 1, 2, '{}')",
                (held.key, held.created_at, held.created_at),
            )
        one = asyncio.create_task(first.record_messages([x, z, y]))
        two = asyncio.create_task(second.record_messages([y, w, x]))
        await until(lambda: waiting_for_locks(stores, 2), "both consumers wait on the writer")
        await blocker.execute("ROLLBACK")
    counted = await asyncio.gather(one, two)
    assert sum(counted) == 4
    assert sorted(m["key"] for m in await first.recent_messages()) == ["w", "x", "y", "z"]
    assert (await first.meter("m1") or {})["messages"] == 4


def stream(count: int) -> list[MeterMessage]:
    """Interval reads of 30 meters on two DAPs, a few seconds apart."""
    return [
        message(f"dap{i % 2}/reading/m{i % 30}_{i}", T0 + 5 * i, meter=f"m{i % 30}",
                dap=f"dap{i % 2}", seq=i, received_at=T0 + 5 * i + (i % 7),
                content={"flow": "mr-multi-interval", "ch": [{"v": [i], "r0": 1000 * i}]})
        for i in range(count)
    ]  # fmt: skip


async def test_two_consumers_with_overlapping_streams_store_and_count_each_instance_once(
    stores: Stores,
) -> None:
    first, second = await stores.open(), await stores.open()
    messages = stream(600)
    # The first gets the stream in batches of 50; the second gets it again, overlapping the
    # first's batch boundaries, every other batch in reverse order.
    to_first = [messages[i : i + 50] for i in range(0, 600, 50)]
    to_second = [messages[i : i + 40] for i in range(20, 600, 40)] + [messages[:20]]
    to_second = [batch[::-1] if n % 2 else batch for n, batch in enumerate(to_second)]

    async def consume(store: MdmsStore, batches: Sequence[Sequence[MeterMessage]]) -> list[int]:
        # Three notifications at a time, as several connections of one head-end would.
        async def one(start: int) -> list[int]:
            return [await store.record_messages(b) for b in batches[start::3]]

        return [n for counts in await asyncio.gather(*(one(s) for s in range(3))) for n in counts]

    counted = await asyncio.gather(consume(first, to_first), consume(second, to_second))
    assert sum(sum(counts) for counts in counted) == 600  # each counted new exactly once
    keys = [m["key"] for m in await first.recent_messages(limit=1000)]
    assert sorted(keys) == sorted(m.key for m in messages)
    meters = await second.meters()
    assert {m["meter"]: m["messages"] for m in meters} == {f"m{i}": 20 for i in range(30)}
    assert {m["meter"]: m["registers"]["1.8.0"] for m in meters} == {
        f"m{i}": 1000 * (570 + i) + 570 + i for i in range(30)
    }  # the latest read of each meter: i = 570 + meter number
    assert await second.counts_by_flow() == {"mr-multi-interval": 600}
    assert (await second.latency_by_family())["reading"]["count"] == 600
    assert await stores.rows("SELECT sum(messages)::int FROM message_days") == [(600,)]


# ---- batched ingest gives what per-row ingest gave --------------------------------------------


def varied_stream() -> list[MeterMessage]:
    """A bit of everything the summaries follow: reads with registers, alarms, switch acks,
    answers to commands (one an error, one a group member's), and copies of earlier ones."""
    out: list[MeterMessage] = []
    for i in range(240):
        meter = f"m{i % 12}"
        at = T0 + 37 * i
        kind = i % 6
        common: dict[str, Any] = {"meter": meter, "seq": i, "received_at": at + (i % 11) * 0.5}
        if kind == 0:
            content = {"flow": "mr-ondemand", "obis": {"1.8.0": 500 + i, "32.7.0": 2300 + i}}
            out.append(
                message(
                    f"dap1/ondemand/{meter}_{i}",
                    at,
                    family="ondemand",
                    flow="mr-ondemand",
                    budget_s=5.0,
                    content=content,
                    **common,
                )
            )
        elif kind == 1:
            content = {"flow": "ev-fault", "type": "alarm"}
            out.append(
                message(
                    f"dap1/event/{meter}_{i}",
                    at,
                    family="event",
                    flow="ev-fault",
                    ptype="alarm",
                    budget_s=None,
                    content=content,
                    **common,
                )
            )
        elif kind == 2:
            content = {"flow": "pp-switch-ack", "sw": i % 2, "ref": f"c{i}"}
            out.append(
                message(
                    f"dap1/prepay/{meter}_{i}",
                    at,
                    family="prepay",
                    flow="pp-switch-ack",
                    ptype="ack",
                    content=content,
                    **common,
                )
            )
        elif kind == 3:
            content = {"flow": "mr-ondemand-err", "ref": f"c{i}", "e": "n"}
            out.append(
                message(
                    f"dap1/ondemand/{meter}_{i}",
                    at,
                    family="ondemand",
                    flow="mr-ondemand-err",
                    ptype="cmd-err",
                    content=content,
                    **common,
                )
            )
        elif kind == 4:
            content = {"flow": "mr-ondemand", "ref": "group", "obis": {"1.8.0": 900 + i}}
            out.append(
                message(
                    f"dap1/ondemand/{meter}_{i}",
                    at,
                    family="ondemand",
                    flow="mr-ondemand",
                    meter_ts=at - 900,
                    content=content,
                    **common,
                )
            )
        else:
            out.append(out[i - 3])  # a copy of an earlier message
    return out  # fmt: skip


def commands() -> list[CommandRecord]:
    found = [CommandRecord(f"c{i}", "dap1", f"m{i % 12}", "switch", {}, T0, "ops")
             for i in sorted([*range(2, 240, 6), *range(3, 240, 6)])]  # fmt: skip
    found += [
        CommandRecord(f"group@m{i}", "dap1", f"m{i}", "read", {}, T0, "ops") for i in range(12)
    ]
    return found


async def everything(store: MdmsStore) -> dict[str, Any]:
    """All a reader can see, without the ids (which each database numbers its own way)."""
    messages = await store.recent_messages(limit=1000)
    every_command = {c.id: await store.command(c.id) for c in commands()}
    for found in every_command.values():
        for answer in (found or {}).get("answers", []):
            answer.pop("id")
    return {
        "messages": sorted(({k: v for k, v in m.items() if k != "id"} for m in messages),
                           key=lambda m: m["key"]),
        "meters": await store.meters(),
        "flows": await store.counts_by_flow(),
        "latency": await store.latency_by_family(),
        "overview": await store.overview(online_since=T0 + 4000),
        "commands": every_command,
    }  # fmt: skip


async def test_batched_ingest_gives_what_per_row_ingest_gave(
    stores: Stores, tmp_path: Path
) -> None:
    messages = varied_stream()
    # Before: SQLite, one INSERT per message, one message per call.
    async with SQLiteMdmsStore(tmp_path / "mdms.db") as per_row:
        for command in commands()[:50]:
            await per_row.record_command(command)
        for one in messages:
            await per_row.record_messages([one])
        for command in commands()[50:]:  # recorded after their answers arrived
            await per_row.record_command(command)
        expected = await everything(per_row)
    # Now: PostgreSQL, batches of 1 to 37 messages and some of 80 (COPied), eight calls at a
    # time (grouped).
    batched = await stores.open()
    for command in commands()[:50]:
        await batched.record_command(command)
    sizes = [80 if n % 5 == 4 else 1 + (n * 7) % 37 for n in range(len(messages))]
    batches, start = [], 0
    for size in sizes:
        if start < len(messages):
            batches.append(messages[start : start + size])
            start += size
    for i in range(0, len(batches), 8):
        await asyncio.gather(*(batched.record_messages(b) for b in batches[i : i + 8]))
    for command in commands()[50:]:
        await batched.record_command(command)
    assert await everything(batched) == expected
    assert expected["flows"] == {"ev-fault": 40, "mr-ondemand": 80, "mr-ondemand-err": 40,
                                 "pp-switch-ack": 40}  # fmt: skip
    # Only meters m4 and m10 answer the group command.
    assert expected["overview"]["commands"] == {
        "pending": 10,
        "answered": 42,
        "failed": 40,
        "timed-out": 0,
    }


# ---- a database made before the partitioning ------------------------------------------------

# The messages table as the release before the partitioning made it on PostgreSQL.
UNPARTITIONED = """
CREATE TABLE messages (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    dap         TEXT NOT NULL,
    meter       TEXT NOT NULL,
    family      TEXT NOT NULL,
    flow        TEXT NOT NULL,
    ptype       TEXT NOT NULL,
    seq         BIGINT,
    meter_ts    DOUBLE PRECISION,
    created_at  DOUBLE PRECISION NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    latency     DOUBLE PRECISION NOT NULL,
    size        BIGINT NOT NULL,
    budget_s    DOUBLE PRECISION,
    priority    BIGINT NOT NULL,
    ref         TEXT,
    content     JSON NOT NULL
);
CREATE INDEX messages_by_meter ON messages (meter, id);
CREATE INDEX messages_by_family ON messages (family, id);
CREATE INDEX messages_by_latency ON messages (family, latency);
CREATE INDEX messages_by_ref ON messages (ref) WHERE ref IS NOT NULL;
"""


async def test_a_database_made_before_the_partitioning_is_moved_into_it(stores: Stores) -> None:
    async with await stores.connect() as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(stores.schema)))
        await conn.execute(UNPARTITIONED)
        for i, (back, family) in enumerate(((40, "reading"), (1, "event"), (0, "reading"))):
            at = T0 - back * DAY_S + 100
            await conn.execute(
                "INSERT INTO messages (key, dap, meter, family, flow, ptype, created_at, "
                "received_at, latency, size, priority, content) VALUES "
                "(%s, 'dap1', 'm1', %s, 'f', 'resp-data', %s, %s, %s, 10, 2, '{}')",
                (f"dap1/m1_{i}", family, at, at + i + 1, i + 1.0),
            )
        await conn.execute("INSERT INTO messages (key, dap, meter, family, flow, ptype, "
                           "created_at, received_at, latency, size, priority, content) VALUES "
                           "('not-made-by-the-mdms', 'dap1', 'm2', 'reading', 'f', 'x', %s, %s,"
                           " 0, 1, 2, '{}')", (T0, T0))  # fmt: skip
        before = await (await conn.execute("SELECT id, key FROM messages ORDER BY id")).fetchall()

    store = await stores.open()
    kinds = await stores.rows("SELECT relkind::text FROM pg_class WHERE oid = 'messages'::regclass")
    assert kinds == [("p",)]
    after = await stores.rows("SELECT id, key FROM messages ORDER BY id")
    assert after == [
        (before[0][0], "dap1/reading/m1_0"),
        (before[1][0], "dap1/event/m1_1"),
        (before[2][0], "dap1/reading/m1_2"),
        (before[3][0], "not-made-by-the-mdms"),
    ]
    assert await stores.partition_of("dap1/reading/m1_0") == [partition_name(DAY - 40)]
    assert await stores.rows("SELECT day, family, messages FROM message_days ORDER BY 1, 2") == [
        (DAY - 40, "reading", 1),
        (DAY - 1, "event", 1),
        (DAY, "reading", 2),
    ]
    # A copy of an old message, keyed as the MDMS keys it now, is known; a new one gets the
    # next id.
    old = message("dap1/event/m1_1", T0 - DAY_S + 100, family="event")
    assert await store.record_messages([old, message("new", T0 + 5)]) == 1
    (newest,) = await store.recent_messages(limit=1)
    assert (newest["key"], newest["id"] > before[-1][0]) == ("new", True)
    await store.close()
    # Opening it again changes nothing.
    again = await stores.open()
    assert len(await again.recent_messages()) == 5
