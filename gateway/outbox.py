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

The mark only means something for the database it was taken from. The outbox records that
database's ID (`Storage.database_id`) and `follow()` compares both at start: a database
recreated from scratch (a new ID) has its instances queued from the start, and the items
still queued from the old one are kept; a database restored from an older copy (same ID,
fewer sequence numbers than the mark) keeps the mark, and the CSE is told never to hand out
the numbers up to it again, so its new instances land above the mark.

The disk budget bounds the bytes of queued payloads. When a new item does not fit, queued
items are shed from the least urgent priority (oldest first), never priority 0; if that is
not enough the new item itself is shed unless it is an alarm. Every shed item is counted by
priority, persistently.

When an item is due again after a failed attempt is kept in memory, in monotonic time (the
event loop's clock): a step of the wall clock does not hold retries back, a full disk does
not stop retries from being scheduled, and after a restart every item is due at once. (The
`due` column of older outboxes is no longer used.) A write that fails (a full disk) raises
sqlite3.Error and is reported once per run of failures in `health`.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from cse.storage.base import DatabaseDamaged, StorageHealth

logger = logging.getLogger(__name__)

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
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class Alignment(enum.Enum):
    """How the outbox's high-water mark relates to the database it is fed from."""

    IN_STEP = "in step"
    RESTORED = "the database was restored from an older copy"
    REPLACED = "the database was recreated or replaced"


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
        self.database_id: str | None = None  # of the CSE database the mark belongs to
        self.health = StorageHealth(f"uplink outbox {self.path}")
        self._due: dict[int, float] = {}  # item id -> when it may be tried again

    # ---- life cycle --------------------------------------------------------------------

    def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            self._load(conn)
        except sqlite3.DatabaseError as error:
            conn.close()
            raise DatabaseDamaged(
                f"the uplink outbox {self.path} cannot be read ({error}) and was left as it "
                "is. Stop the gateway and move it aside (with its -wal and -shm files, if "
                "any); on its next start the gateway queues every message in its database "
                "again, and the head-end answers those it already has with 'already exists'. "
                "See docs/reliability.md."
            ) from None
        self._conn = conn

    def _load(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
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
        meta = dict(conn.execute("SELECT name, value FROM meta"))
        self.database_id = meta.get("database_id")

    def follow(self, database_id: str, last_seq: int) -> Alignment:
        """Bring the mark in line with the CSE database (see the module doc); the caller
        reserves the sequence numbers up to the mark when the answer is RESTORED."""
        behind = self.high_water_seq > last_seq
        if database_id == self.database_id and not behind:
            return Alignment.IN_STEP
        if self.database_id is None and not behind:
            self._set_database(database_id, retire=False)  # a new outbox, or one from before IDs
            return Alignment.IN_STEP
        if database_id == self.database_id:
            logger.warning(
                "the gateway's database holds sequence numbers up to %d, but the outbox has "
                "queued up to %d: it was restored from an older copy; new messages are "
                "numbered above %d",
                last_seq,
                self.high_water_seq,
                self.high_water_seq,
            )
            return Alignment.RESTORED
        logger.warning(
            "the gateway's database is not the one the outbox was fed from (recreated or "
            "replaced): every message in it is queued again, and the %d items still queued "
            "from the old one are kept",
            self.total,
        )
        self._set_database(database_id, retire=True)
        return Alignment.REPLACED

    def _set_database(self, database_id: str, *, retire: bool) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            if retire:
                # The old database's numbers mean nothing now; new items may reuse them.
                db.execute("UPDATE items SET seq = -id WHERE seq > 0")
                self._set_counter("high_water_seq", 0)
            db.execute(
                "INSERT INTO meta (name, value) VALUES ('database_id', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (database_id,),
            )
            db.execute("COMMIT")
        except BaseException:
            self._roll_back()
            raise
        self.database_id = database_id
        if retire:
            self.high_water_seq = 0

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
        except BaseException as error:
            self._roll_back(error)
            raise
        self.health.succeeded()
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
        except BaseException as error:
            self._roll_back(error)
            raise
        self.health.succeeded()
        self.rejected += rejected
        for item in items:
            self._due.pop(item.id, None)

    def postpone(self, item: QueuedItem, due: float) -> None:
        """A failed attempt: try again at `due` (monotonic seconds, see the module doc). The
        attempt is counted on disk; if that write fails, the item is still held back."""
        self._due[item.id] = due
        try:
            self._db.execute(
                "UPDATE items SET attempts = attempts + 1, due = ? WHERE id = ?", (due, item.id)
            )
        except sqlite3.Error as error:
            self.health.failed(error)
            raise
        self.health.succeeded()

    def _roll_back(self, error: BaseException | None = None) -> None:
        """Undo a failed transaction (SQLite may have done so itself on a full disk)."""
        if isinstance(error, sqlite3.Error):
            self.health.failed(error)
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as failure:
                logger.warning("outbox rollback failed: %s", failure)
        self._reload_counts()

    # ---- reading -----------------------------------------------------------------------

    def due(
        self, now: float, limit: int, skip: Iterable[int] = (), ceiling: int = PRIORITIES[-1]
    ) -> list[QueuedItem]:
        """Due items of the most urgent priority that has any (none less urgent than
        `ceiling`), oldest first, leaving out those in `skip`."""
        skipped = set(skip)
        skipped.update(item_id for item_id, due in self._due.items() if due > now)
        found: list[QueuedItem] = []
        for priority in PRIORITIES:
            if priority > ceiling:
                break
            if not self.depth[priority]:
                continue
            rows = self._db.execute(
                "SELECT id, priority, seq, container, name, body, size, created, attempts "
                "FROM items WHERE priority = ? ORDER BY id LIMIT ?",
                (priority, limit + len(skipped)),
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

    def next_due(self, now: float) -> float | None:
        """The earliest time an item becomes due (`now` if one is due now), or None when the
        outbox is empty."""
        if not self.total:
            self._due.clear()
            return None
        waiting = {item_id: due for item_id, due in self._due.items() if due > now}
        self._due = waiting
        if len(waiting) < self.total:
            return now
        return min(waiting.values())
