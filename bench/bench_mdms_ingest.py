"""How fast the MDMS store takes meter messages on PostgreSQL: the batched ingest against
the per-row ingest it replaced, side by side in one run.

    python -m bench.bench_mdms_ingest [--url postgresql://postgres@127.0.0.1:5432/postgres]
                                      [--messages 20000] [--quick]
                                      [--no-strategies | --only-strategies]

Needs a PostgreSQL server; the bench creates a database of its own there and drops it at the
end. Each case runs on a fresh schema, so no case inherits another's table sizes.

1. The store, end to end (`record_messages`: validation, insert, summary tables, commit):
   "per-row" is the ingest of the release before (one INSERT ... ON CONFLICT DO NOTHING
   RETURNING per message, sent with psycopg's executemany, i.e. pipelined, then each summary
   upsert a row at a time; one call's batch per transaction), run here on today's partitioned
   tables; "COPY batch" is today's (from 30 rows the batch is COPied into a temporary table
   and moved in by one INSERT ... SELECT, below that an INSERT per row; calls waiting
   meanwhile share the transaction; each summary table one statement per batch). Calls of 1,
   10, 100 and 1000 messages one after the other (the IN-CSE hands the MDMS one notification
   at a time, a batch notification holding up to 100 instances), then 8 callers at once with
   10 each (several notifications at once: several connections or head-end workers of one
   process).
2. Unless --no-strategies, what chose COPY and its threshold: the messages table alone (no
   summaries), batches of 1 to 1000, per-row executemany, one multi-row VALUES, one INSERT
   ... SELECT FROM unnest(arrays), and COPY into a temporary table then INSERT ... SELECT
   (--only-strategies: this part alone).

Interval reads of 1,000 meters, content as a meter agent sends it (about 200 bytes). No
thresholds: the figures are for docs/scale-out.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

if __package__ in (None, ""):  # run as ``python bench/bench_mdms_ingest.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headend.store import MeterMessage, PostgresMdmsStore
from headend.store.postgres import _postgres_query
from headend.store.records import MessageRow, message_row
from headend.store.sql import INSERT_MESSAGE, INSERTED_MESSAGE_COLUMNS, Statement
from headend.store.summaries import summary_statements

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
METERS = 1000
T0 = time.time()


class PerRowStore(PostgresMdmsStore):
    """The store with the release before's ingest: each call its own transaction, one INSERT
    per message (executemany, pipelined), then each summary table's upsert a row at a time."""

    async def _insert_messages(self, rows: Sequence[MessageRow]) -> int:
        pool = self._ready()
        async with self._write_lock, pool.connection() as conn, conn.transaction():
            cur = conn.cursor()
            query = _postgres_query(INSERT_MESSAGE).replace(
                "ON CONFLICT (key)", "ON CONFLICT (key, created_at)"
            )
            await cur.executemany(query, [row.params for row in rows], returning=True)
            new: list[MessageRow] = []
            for row in rows:  # one result set per row: empty when the key was known
                if await cur.fetchone() is not None:
                    new.append(row)
                cur.nextset()
            await self._run_statements(conn, summary_statements(new))
        return len(new)

    @staticmethod
    async def _run_statements(
        conn: psycopg.AsyncConnection[Any], statements: Sequence[Statement]
    ) -> None:
        cur = conn.cursor()  # each statement its own executemany, a row at a time
        for query, params in statements:
            if params:
                await cur.executemany(_postgres_query(query), params)


class Messages:
    """Distinct interval reads, each call a new one."""

    def __init__(self) -> None:
        self.count = 0

    def take(self, n: int) -> list[MeterMessage]:
        out = []
        for _ in range(n):
            i = self.count
            self.count += 1
            meter = f"m{i % METERS:05d}"
            at = T0 + i * 0.01
            content = {
                "flow": "mr-multi-interval", "type": "resp-data", "seq": i, "ts": int(at),
                "t0": int(at) - 3600, "ip": 900, "n": 4,
                "ch": [{"rt": "0.0.2.4.1.1.12.0.0.0.0.0.0.0.0.0.72.0",
                        "v": [120, 131, 118, 140], "r0": 5_000_000 + i}],
            }  # fmt: skip
            out.append(
                MeterMessage(
                    key=f"dap{i % 20}/reading/{meter}_{i}",
                    dap=f"dap{i % 20}",
                    meter=meter,
                    family="reading",
                    flow="mr-multi-interval",
                    ptype="resp-data",
                    seq=i,
                    meter_ts=at,
                    created_at=at,
                    received_at=at + 0.2,
                    size=160,
                    budget_s=14_400.0,
                    priority=3,
                    content=content,
                )
            )
        return out


@asynccontextmanager
async def database(url: str) -> Any:
    name = f"gridm2m_mdms_ingest_{uuid.uuid4().hex[:10]}"
    print(f"database {name} (dropped at the end)", flush=True)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            await conn.execute(drop.format(sql.Identifier(name)))


def fresh_schema() -> str:
    return f"bench_{uuid.uuid4().hex[:10]}"


# ---- 1. the store, end to end ----------------------------------------------------------------


async def store_rate(
    db: str, kind: type[PostgresMdmsStore], batch: int, callers: int, total: int
) -> float:
    """Messages per second through record_messages: `callers` at once, each `batch` a call."""
    source = Messages()
    calls = max(1, total // (batch * callers))
    async with kind(db, schema=fresh_schema(), upkeep_interval=None) as store:
        await store.record_messages(source.take(batch))  # warm: connection, plans

        async def caller() -> None:
            for _ in range(calls):
                await store.record_messages(source.take(batch))

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - start
    return calls * batch * callers / elapsed


# ---- 2. insert strategies, the messages table alone -------------------------------------------

COLUMNS = ", ".join(INSERTED_MESSAGE_COLUMNS)
CONFLICT = "ON CONFLICT (key, created_at) DO NOTHING RETURNING key"
TYPES = {"seq": "bigint", "size": "bigint", "priority": "bigint", "content": "json",
         **dict.fromkeys(("meter_ts", "created_at", "received_at", "latency", "budget_s"),
                         "float8")}  # fmt: skip
Strategy = Callable[[psycopg.AsyncConnection[Any], list[tuple[Any, ...]]], Awaitable[int]]


async def per_row(conn: psycopg.AsyncConnection[Any], rows: list[tuple[Any, ...]]) -> int:
    cur = conn.cursor()
    marks = ", ".join(["%s"] * len(INSERTED_MESSAGE_COLUMNS))
    query = f"INSERT INTO messages ({COLUMNS}) VALUES ({marks}) {CONFLICT}"
    await cur.executemany(query, rows, returning=True)
    new = 0
    while True:
        new += await cur.fetchone() is not None
        if not cur.nextset():
            return new


async def values(conn: psycopg.AsyncConnection[Any], rows: list[tuple[Any, ...]]) -> int:
    one = "(" + ", ".join(["%s"] * len(INSERTED_MESSAGE_COLUMNS)) + ")"
    query = f"INSERT INTO messages ({COLUMNS}) VALUES {', '.join([one] * len(rows))} {CONFLICT}"
    cur = await conn.execute(query, [value for row in rows for value in row])
    return len(await cur.fetchall())


UNNEST = (
    f"INSERT INTO messages ({COLUMNS}) SELECT * FROM unnest("
    + ", ".join(f"%s::{TYPES.get(c, 'text')}[]" for c in INSERTED_MESSAGE_COLUMNS)
    + f") {CONFLICT}"
)


async def unnest(conn: psycopg.AsyncConnection[Any], rows: list[tuple[Any, ...]]) -> int:
    cur = await conn.execute(UNNEST, [list(column) for column in zip(*rows, strict=True)])
    return len(await cur.fetchall())


async def copy(conn: psycopg.AsyncConnection[Any], rows: list[tuple[Any, ...]]) -> int:
    cur = conn.cursor()  # the store's temporary table (made by its connection setup)
    async with cur.copy(f"COPY incoming_messages (ord, {COLUMNS}) FROM STDIN") as out:
        for number, row in enumerate(rows):
            await out.write_row((number, *row))
    await cur.execute(
        f"INSERT INTO messages ({COLUMNS}) SELECT {COLUMNS} FROM incoming_messages "
        f"ORDER BY ord {CONFLICT}"
    )
    return len(await cur.fetchall())


STRATEGIES: dict[str, Strategy] = {
    "per-row executemany": per_row,
    "multi-row VALUES": values,
    "unnest(arrays)": unnest,
    "COPY + INSERT SELECT": copy,
}


async def strategy_rate(db: str, strategy: Strategy, batch: int, total: int) -> float:
    source = Messages()
    store = PostgresMdmsStore(db, schema=fresh_schema(), upkeep_interval=None)
    # The store's tables, and its connection setup (the temporary table COPY fills).
    async with store, store._ready().connection() as conn:
        elapsed = 0.0
        for _ in range(max(1, total // batch)):
            rows = [message_row(m).params for m in source.take(batch)]
            start = time.perf_counter()
            async with conn.transaction():
                assert await strategy(conn, rows) == batch
            elapsed += time.perf_counter() - start
    return max(1, total // batch) * batch / elapsed


# ---- the run ----------------------------------------------------------------------------------


async def main_async(url: str, total: int, strategies: bool, only_strategies: bool) -> None:
    async with database(url) as db:
        print(f"MDMS ingest on PostgreSQL, {total} messages a case (messages/s)\n")
        print(f"{'case':34} {'per-row':>10} {'COPY batch':>11} {'ratio':>6}")
        cases = [] if only_strategies else [(1, 1), (10, 1), (100, 1), (1000, 1), (10, 8)]
        for batch, callers in cases:
            size = total // 10 if batch == 1 else total  # one message a call is slow
            before = await store_rate(db, PerRowStore, batch, callers, size)
            now = await store_rate(db, PostgresMdmsStore, batch, callers, size)
            what = f"{callers} caller{'s' if callers > 1 else ''}, {batch} a call"
            print(f"{what:34} {before:10.0f} {now:11.0f} {now / before:5.2f}x", flush=True)
        if strategies:
            print("\nInsert strategies, the messages table alone (rows/s)\n")
            sizes = (1, 10, 30, 100, 1000)
            print(f"{'strategy':24}" + "".join(f"{f'batch {b}':>11}" for b in sizes))
            for name, strategy in STRATEGIES.items():
                rates = [
                    await strategy_rate(db, strategy, b, total // 10 if b == 1 else total)
                    for b in sizes
                ]
                print(f"{name:24}" + "".join(f"{rate:11.0f}" for rate in rates), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="a database to create ours from")
    parser.add_argument("--messages", type=int, default=20_000, help="messages per case")
    parser.add_argument("--quick", action="store_true", help="2,000 messages per case")
    parser.add_argument("--no-strategies", action="store_true", help="skip part 2")
    parser.add_argument("--only-strategies", action="store_true", help="skip part 1")
    args = parser.parse_args()
    total = 2_000 if args.quick else args.messages
    asyncio.run(main_async(args.url, total, not args.no_strategies, args.only_strategies))


if __name__ == "__main__":
    main()
