"""The uplink outbox: meter messages waiting to be mirrored to the head-end, by priority.

Priorities (lower goes first): 0 alarms and alerts, 1 command errors, acks and comm errors,
2 on-demand and other response data, 3 bulk interval data. Within a priority the oldest goes
first.

Durability comes from two places. The gateway's CSE database is the record of what meters
were told was stored; this outbox keeps a high-water mark, the highest CSE sequence number
it has taken in, in the same transaction as the items. After a crash the uplink re-reads
every instance above the mark, so nothing acknowledged to a meter is missed, and a power cut
that rolls this file back only causes re-sends, which the head-end answers with "already
exists". That is why the outbox can run with `synchronous=NORMAL` (no fsync per commit),
which spares the SD card.

The disk budget bounds the bytes of queued payloads. When a new item does not fit, queued
items are shed from the least urgent priority (oldest first), never priority 0; if that is
not enough the new item itself is shed unless it is an alarm. Every shed item is counted by
priority, persistently.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

PRIORITIES = (0, 1, 2, 3)
NEVER_SHED = 0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id        INTEGER PRIMARY KEY,
    priority  INTEGER NOT NULL,
    seq       INTEGER NOT NULL UNIQUE,
    container TEXT NOT NULL,
    name      TEXT NOT NULL,
    body      BLOB NOT NULL,
    size      INTEGER NOT NULL,
    created   REAL NOT NULL,
    attempts  INTEGER NOT NULL DEFAULT 0,
    due       REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS items_in_order ON items (priority, id);
CREATE INDEX IF NOT EXISTS items_by_due ON items (due);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class NewItem:
    """A meter message to mirror: a contentInstance for `container` on the upstream CSE."""

    priority: int
    seq: int  # the instance's sequence number in the gateway's CSE database
    container: str  # SP-relative target, e.g. /id-in/cse-in/id-dap1/event
    name: str  # resource name of the mirrored instance (idempotent retries)
    attributes: dict[str, Any]  # the m2m:cin attributes to send
    created: float  # when the gateway's CSE stored the original (epoch seconds)


@dataclass(frozen=True, slots=True)
class QueuedItem:
    id: int
    priority: int
    seq: int
    container: str
    name: str
    attributes: dict[str, Any]
    size: int
    created: float
    attempts: int


class Outbox:
    def __init__(self, path: str | Path, *, budget_bytes: int) -> None:
        self.path = str(path)
        self.budget_bytes = budget_bytes
        self._conn: sqlite3.Connection | None = None
        self.depth = dict.fromkeys(PRIORITIES, 0)
        self.bytes_used = 0
        self.high_water_seq = 0
        self.shed = dict.fromkeys(PRIORITIES, 0)
        self.rejected = 0

    # ---- life cycle --------------------------------------------------------------------

    def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        self._conn = conn
        for priority, count, size in conn.execute(
            "SELECT priority, count(*), coalesce(sum(size), 0) FROM items GROUP BY priority"
        ):
            self.depth[int(priority)] = int(count)
            self.bytes_used += int(size)
        counters = dict(conn.execute("SELECT name, value FROM counters"))
        self.high_water_seq = int(counters.get("high_water_seq", 0))
        self.rejected = int(counters.get("rejected", 0))
        for priority in PRIORITIES:
            self.shed[priority] = int(counters.get(f"shed_{priority}", 0))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the outbox is not open")
        return self._conn

    @property
    def total(self) -> int:
        return sum(self.depth.values())

    # ---- writing -----------------------------------------------------------------------

    def add(self, items: Sequence[NewItem], high_water_seq: int) -> list[NewItem]:
        """Queue items and move the high-water mark, in one transaction; returns what was shed
        of the new items (queued items shed to make room are only counted)."""
        db = self._db
        shed_new: list[NewItem] = []
        shed_counts = dict.fromkeys(PRIORITIES, 0)
        db.execute("BEGIN")
        try:
            for item in items:
                body = orjson.dumps(item.attributes)
                size = len(body)
                if self.bytes_used + size > self.budget_bytes:
                    self._make_room(size, item.priority, shed_counts)
                if self.bytes_used + size > self.budget_bytes and item.priority != NEVER_SHED:
                    shed_new.append(item)
                    shed_counts[item.priority] += 1
                    continue
                cursor = db.execute(
                    "INSERT OR IGNORE INTO items (priority, seq, container, name, body, size, "
                    "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (item.priority, item.seq, item.container, item.name, body, size, item.created),
                )
                if cursor.rowcount:
                    self.depth[item.priority] += 1
                    self.bytes_used += size
            high_water_seq = max(high_water_seq, self.high_water_seq)
            self._set_counter("high_water_seq", high_water_seq)
            for priority, count in shed_counts.items():
                if count:
                    self._set_counter(f"shed_{priority}", self.shed[priority] + count)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._reload_counts()
            raise
        self.high_water_seq = high_water_seq
        for priority, count in shed_counts.items():
            self.shed[priority] += count
        return shed_new

    def _make_room(self, size: int, incoming_priority: int, shed_counts: dict[int, int]) -> None:
        """Shed queued items, least urgent and oldest first, that are less urgent than the
        incoming one (an alarm may push out anything but alarms)."""
        db = self._db
        for priority in sorted(PRIORITIES, reverse=True):
            if priority == NEVER_SHED or (incoming_priority and priority <= incoming_priority):
                break
            while self.bytes_used + size > self.budget_bytes and self.depth[priority]:
                rows = db.execute(
                    "SELECT id, size FROM items WHERE priority = ? ORDER BY id LIMIT 64",
                    (priority,),
                ).fetchall()
                for item_id, item_size in rows:
                    if self.bytes_used + size <= self.budget_bytes:
                        break
                    db.execute("DELETE FROM items WHERE id = ?", (item_id,))
                    self.depth[priority] -= 1
                    self.bytes_used -= int(item_size)
                    shed_counts[priority] += 1
            if self.bytes_used + size <= self.budget_bytes:
                return

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def _reload_counts(self) -> None:
        self.depth = dict.fromkeys(PRIORITIES, 0)
        self.bytes_used = 0
        for priority, count, size in self._db.execute(
            "SELECT priority, count(*), coalesce(sum(size), 0) FROM items GROUP BY priority"
        ):
            self.depth[int(priority)] = int(count)
            self.bytes_used += int(size)

    def delivered(self, items: Iterable[QueuedItem], *, rejected: int = 0) -> None:
        """Remove items that reached the upstream CSE (or that it refused for good)."""
        db = self._db
        items = list(items)
        db.execute("BEGIN")
        try:
            for item in items:
                cursor = db.execute("DELETE FROM items WHERE id = ?", (item.id,))
                if cursor.rowcount:
                    self.depth[item.priority] -= 1
                    self.bytes_used -= item.size
            if rejected:
                self._set_counter("rejected", self.rejected + rejected)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._reload_counts()
            raise
        self.rejected += rejected

    def postpone(self, item: QueuedItem, due: float) -> None:
        """A failed attempt: try again at `due` (epoch seconds)."""
        self._db.execute(
            "UPDATE items SET attempts = attempts + 1, due = ? WHERE id = ?", (due, item.id)
        )

    # ---- reading -----------------------------------------------------------------------

    def due(
        self, now: float, limit: int, skip: Iterable[int] = (), ceiling: int = PRIORITIES[-1]
    ) -> list[QueuedItem]:
        """Due items of the most urgent priority that has any (none less urgent than
        `ceiling`), oldest first, leaving out those in `skip`."""
        skipped = set(skip)
        found: list[QueuedItem] = []
        for priority in PRIORITIES:
            if priority > ceiling:
                break
            if not self.depth[priority]:
                continue
            rows = self._db.execute(
                "SELECT id, priority, seq, container, name, body, size, created, attempts "
                "FROM items WHERE priority = ? AND due <= ? ORDER BY id LIMIT ?",
                (priority, now, limit + len(skipped)),
            )
            for row in rows:
                if row[0] in skipped:
                    continue
                found.append(
                    QueuedItem(
                        id=row[0],
                        priority=row[1],
                        seq=row[2],
                        container=row[3],
                        name=row[4],
                        attributes=orjson.loads(row[5]),
                        size=row[6],
                        created=row[7],
                        attempts=row[8],
                    )
                )
                if len(found) >= limit:
                    return found
            if found:
                # One priority per call: the next one waits until these are delivered.
                return found
        return found

    def next_due(self) -> float | None:
        """The earliest time an item becomes due, or None when the outbox is empty."""
        row = self._db.execute("SELECT min(due) FROM items").fetchone()
        return None if row is None or row[0] is None else float(row[0])
