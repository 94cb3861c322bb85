"""The MDMS store of the head-end: meter messages, commands and the gateways' status.

Two backends share one schema, one set of queries and all the bookkeeping in `MdmsStore`:
`SQLiteMdmsStore` (one file, WAL) for a single head-end host, `PostgresMdmsStore` for a
utility's database server. `open_store` picks one from the configuration.

  records.py    MeterMessage, CommandRecord, the errors, and the checks before any write
  bulk_reads.py CIS/Billing's bulk read requests and answers, as CIS and the MDMS saw them
  sql.py        the tables (with the summary tables) and the queries, written once
  summaries.py  how a batch of new messages updates the summary tables and completes commands
  base.py       MdmsStore: the interface, the writes, the dashboard's reads, live updates
  sqlite.py     SQLiteMdmsStore
  postgres.py   PostgresMdmsStore: batched ingest (COPY), shared by several consumers
  partitions.py the messages partitioned by day on PostgreSQL: upkeep, retention, upgrade
                (postgres.py and partitions.py import psycopg: loaded on first use)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headend.store.base import MdmsStore
from headend.store.bulk_reads import BulkReadAnswered, BulkReadReceived, CisAnswer, CisRequest
from headend.store.records import CommandRecord, InvalidRecord, MeterMessage, StoreError
from headend.store.sqlite import SQLiteMdmsStore

if TYPE_CHECKING:
    from headend.store.postgres import PostgresMdmsStore

__all__ = [
    "BulkReadAnswered",
    "BulkReadReceived",
    "CisAnswer",
    "CisRequest",
    "CommandRecord",
    "InvalidRecord",
    "MdmsStore",
    "MeterMessage",
    "PostgresMdmsStore",
    "SQLiteMdmsStore",
    "StoreError",
    "open_store",
]


def __getattr__(name: str) -> Any:
    # `from headend.store import PostgresMdmsStore` still works, without making every SQLite
    # user import psycopg and libpq.
    if name == "PostgresMdmsStore":
        from headend.store.postgres import PostgresMdmsStore

        return PostgresMdmsStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(
    sqlite_path: str, postgres_url: str | None = None, *, retention_days: int | None = None
) -> MdmsStore:
    """The store the head-end is configured for: PostgreSQL when a URL is given, else the
    SQLite file. Not opened yet: `async with open_store(...) as store:` or `await open()`.
    A retention (days) is a PostgreSQL feature: SQLite keeps every message."""
    if postgres_url:
        from headend.store.postgres import PostgresMdmsStore

        return PostgresMdmsStore(postgres_url, retention_days=retention_days)
    if retention_days is not None:
        raise ValueError("a retention of MDMS messages needs PostgreSQL (postgres_url)")
    return SQLiteMdmsStore(sqlite_path)
