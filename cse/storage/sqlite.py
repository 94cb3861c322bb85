"""The real backend: one SQLite file in WAL mode, with group commit.

Writes run on the event loop inside one open transaction, so every read sees them at once.
A committer task closes that transaction once the loop has run every request that was ready,
so all requests that wrote in the meantime are acknowledged by the same COMMIT and fsync.

The COMMIT runs on the event-loop thread. Handing it to a worker thread looks better but is
much slower: the finished worker waits for the GIL, which the busy loop thread releases only
every switch interval (5 ms), so each group commit took milliseconds longer than its fsync
(measured: 1,770 vs 4,355 creations/s; see docs/performance.md). On slow flash the loop is
blocked for the fsync itself, which group commit amortises over the whole batch.
Non-instance resources are kept in a bounded LRU cache; contentInstances are read by index.

Faults (docs/reliability.md): a second process on the same file is refused (an exclusive
lock on `<db>.lock`, held while the storage is open and released by the OS when the process
dies); a file SQLite cannot read is refused with what to do about it; a failed COMMIT (a
full disk) fails the requests of that group commit, which were not answered yet, and is
reported once per run of failures (`health`); the next group tries again, so writes resume by
themselves when space returns. Sequence numbers are never handed out twice, even when the
newest resources are deleted (the uplink reads new instances by sequence number).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, Concatenate, ParamSpec, TypeVar

import orjson

from cse.storage.base import (
    Change,
    DatabaseDamaged,
    DatabaseInUse,
    DeleteTree,
    Dequeue,
    Enqueue,
    ForgetRequests,
    Put,
    QueuedNotification,
    RecordRequest,
    ReserveSequence,
    Resource,
    Storage,
    StorageError,
    StorageHealth,
)
from cse.supervision import Supervisor

logger = logging.getLogger(__name__)

_CONTENT_INSTANCE = 4
# Instances (contentInstances, timeSeriesInstances) are many and read once: not cached.
_INSTANCE_TYPES = frozenset({4, 30})
_ATTRIBUTE_NAME = re.compile(r"^[a-zA-Z]+$")
_MAX_GATHER_PASSES = 8

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    seq   INTEGER PRIMARY KEY,
    ri    TEXT NOT NULL UNIQUE,
    pi    TEXT NOT NULL,
    path  TEXT NOT NULL UNIQUE,
    ty    INTEGER NOT NULL,
    depth INTEGER NOT NULL,
    et    TEXT,
    owner TEXT NOT NULL,
    body  BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS resources_by_parent ON resources (pi, ty, seq);
CREATE INDEX IF NOT EXISTS resources_by_expiry ON resources (et) WHERE et IS NOT NULL;
-- A timeSeries refuses a second instance of one dgt (find_child): a lookup, not a scan.
CREATE INDEX IF NOT EXISTS instances_by_dgt
    ON resources (pi, json_extract(CAST(body AS TEXT), '$.dgt')) WHERE ty = 30;
CREATE TABLE IF NOT EXISTS request_log (
    key TEXT PRIMARY KEY,
    ri  TEXT NOT NULL,
    at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS request_log_by_age ON request_log (at);
CREATE TABLE IF NOT EXISTS outbox (
    id           INTEGER PRIMARY KEY,
    target       TEXT NOT NULL,
    subscription TEXT NOT NULL,
    created      REAL NOT NULL,
    body         BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_COLUMNS = "seq, path, owner, body"
# SQLite's primary result codes for a file that is not (or no longer) a database.
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26

_P = ParamSpec("_P")
_T = TypeVar("_T")


def damage_advice(path: str, error: object) -> str:
    """The one paragraph an operator gets for a database SQLite cannot read."""
    return (
        f"the database {path} is damaged ({error}) and was left as it is. To recover, stop "
        f"every process that uses it and move {path} (with its -wal and -shm files, if any) "
        "aside to keep it for analysis; then put back the last good backup, or start without "
        "a database: the CSE starts empty and meters register again on their next contact. "
        "A gateway's outbox keeps what it had not yet sent and queues the new database's "
        "messages as well. See docs/reliability.md."
    )


def _is_damage(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _storage_errors(
    method: Callable[Concatenate[SQLiteStorage, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[SQLiteStorage, _P], Coroutine[Any, Any, _T]]:
    """A read that SQLite fails becomes a StorageError (5000), counted in `health`, instead
    of an unexpected exception with a traceback per request."""

    async def reading(self: SQLiteStorage, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await method(self, *args, **kwargs)
        except sqlite3.Error as error:
            raise self._failure(error) from error

    reading.__name__, reading.__doc__ = method.__name__, method.__doc__
    return reading


def _subtree_bounds(path: str) -> tuple[str, str]:
    # Every descendant path starts with "path/"; '0' is the character after '/'.
    return path + "/", path + "0"


class SQLiteStorage(Storage):
    def __init__(
        self,
        path: str | Path,
        *,
        cache_size: int = 8192,
        synchronous: str = "FULL",
        page_cache_kib: int = 16384,
    ) -> None:
        self._path = str(path)
        self._cache_size = cache_size
        self._synchronous = synchronous
        self._page_cache_kib = page_cache_kib
        self._conn: sqlite3.Connection | None = None
        self._cache: OrderedDict[str, Resource] = OrderedDict()
        self._path_cache: OrderedDict[str, str] = OrderedDict()
        self._in_transaction = False
        self._applied = 0  # generation of the newest applied change batch
        self._durable = 0  # generation covered by the last COMMIT
        self._dirty = asyncio.Event()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._lock_file: IO[str] | None = None
        self._database_id = ""
        self._last_seq = 0  # the highest sequence number handed out
        self._floor_dirty = False  # _last_seq must be written to meta with the next commit
        self.health = StorageHealth(f"database {self._path}")
        self.commits = 0  # counters for benchmarks and metrics
        self.batches = 0

    async def open(self, supervisor: Supervisor | None = None) -> None:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            self._lock()
        try:
            conn = self._connect()
        except BaseException:
            self._unlock()
            raise
        self._conn = conn
        supervisor = supervisor or Supervisor()
        self._committer = supervisor.start("sqlite committer", self._commit_loop)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA temp_store=MEMORY")
            # SQLite's own page cache (negative = KiB): the hot index pages stay in memory.
            conn.execute(f"PRAGMA cache_size=-{self._page_cache_kib}")
            conn.executescript(_SCHEMA)
            self._load_meta(conn)
        except sqlite3.Error as error:
            conn.close()
            if _is_damage(error):
                raise DatabaseDamaged(damage_advice(self._path, error)) from None
            raise StorageError(f"cannot open the database {self._path}: {error}") from None
        return conn

    def _load_meta(self, conn: sqlite3.Connection) -> None:
        meta = dict(conn.execute("SELECT name, value FROM meta"))
        if "database_id" not in meta:
            # Made with the database (or on the first start of one made before this existed).
            meta["database_id"] = os.urandom(8).hex()
            conn.execute(
                "INSERT INTO meta (name, value) VALUES ('database_id', ?)", (meta["database_id"],)
            )
        self._database_id = meta["database_id"]
        top = conn.execute("SELECT max(seq) FROM resources").fetchone()[0] or 0
        self._last_seq = max(int(meta.get("seq_floor", 0)), int(top))

    def _lock(self) -> None:
        """Hold `<db>.lock` exclusively for the life of this storage (see the module doc)."""
        lock_path = self._path + ".lock"
        handle = open(lock_path, "a+")  # noqa: SIM115 - held open until close()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise DatabaseInUse(
                f"the database {self._path} is in use by another process (pid {holder}, which "
                f"holds {lock_path}); stop that one first, or give this one its own database"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the lock
            self._lock_file = None

    def _failure(self, error: sqlite3.Error) -> StorageError:
        self.health.failed(error)
        if _is_damage(error):
            return DatabaseDamaged(damage_advice(self._path, error))
        return StorageError(str(error))

    async def close(self) -> None:
        if self._conn is None:
            return
        with contextlib.suppress(StorageError):  # not stored: its requests were told so
            await self.sync()
        if self._committer is not None:
            self._committer.cancel()
            await asyncio.gather(self._committer, return_exceptions=True)
        self._conn.close()
        self._conn = None
        self._unlock()

    async def database_id(self) -> str:
        await self._ready()
        return self._database_id

    # ---- reads -------------------------------------------------------------------------

    async def _ready(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError("storage is closed")
        return self._conn

    def _row_to_resource(self, row: tuple[Any, ...]) -> Resource:
        seq, path, owner, body = row
        return Resource(orjson.loads(body), path, owner, seq)

    def _remember(self, resource: Resource) -> None:
        if resource.ty in _INSTANCE_TYPES:
            return
        self._cache[resource.ri] = resource
        self._cache.move_to_end(resource.ri)
        self._path_cache[resource.path] = resource.ri
        self._path_cache.move_to_end(resource.path)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        while len(self._path_cache) > self._cache_size:
            self._path_cache.popitem(last=False)

    def _forget(self, resource: Resource) -> None:
        self._cache.pop(resource.ri, None)
        self._path_cache.pop(resource.path, None)

    @_storage_errors
    async def get(self, ri: str) -> Resource | None:
        cached = self._cache.get(ri)
        if cached is not None:
            return cached
        conn = await self._ready()
        row = conn.execute(f"SELECT {_COLUMNS} FROM resources WHERE ri = ?", (ri,)).fetchone()
        if row is None:
            return None
        resource = self._row_to_resource(row)
        self._remember(resource)
        return resource

    @_storage_errors
    async def get_by_path(self, path: str) -> Resource | None:
        ri = self._path_cache.get(path)
        if ri is not None:
            cached = self._cache.get(ri)
            if cached is not None:
                return cached
        conn = await self._ready()
        row = conn.execute(f"SELECT {_COLUMNS} FROM resources WHERE path = ?", (path,)).fetchone()
        if row is None:
            return None
        resource = self._row_to_resource(row)
        self._remember(resource)
        return resource

    @_storage_errors
    async def children(
        self, pi: str, types: Iterable[int] | None = None, limit: int | None = None
    ) -> list[Resource]:
        conn = await self._ready()
        sql = f"SELECT {_COLUMNS} FROM resources WHERE pi = ?"
        params: list[Any] = [pi]
        if types is not None:
            wanted = list(types)
            sql += f" AND ty IN ({','.join('?' * len(wanted))})"
            params.extend(wanted)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [self._row_to_resource(row) for row in conn.execute(sql, params)]

    @_storage_errors
    async def children_page(
        self,
        pi: str,
        *,
        types: Iterable[int] | None = None,
        after: tuple[int, int] | None = None,
        limit: int,
    ) -> list[Resource]:
        # One type at a time, each an ordered range of the (pi, ty, seq) index that starts at
        # the cursor: no sort, and nothing before the cursor is read again (a row value
        # "(ty, seq) > (?, ?)" is searched on ty alone and rescans the cursor's type).
        conn = await self._ready()
        after_type, after_seq = after or (0, 0)
        wanted = None if types is None else sorted(set(types))
        found: list[Resource] = []
        floor = after_type  # the lowest type still to read
        while len(found) < limit:
            if wanted is None:
                row = conn.execute(
                    "SELECT ty FROM resources WHERE pi = ? AND ty >= ? ORDER BY ty LIMIT 1",
                    (pi, floor),
                ).fetchone()
                if row is None:
                    break
                resource_type = int(row[0])
            else:
                remaining = [t for t in wanted if t >= floor]
                if not remaining:
                    break
                resource_type = remaining[0]
            start = after_seq if resource_type == after_type else 0
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM resources WHERE pi = ? AND ty = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (pi, resource_type, start, limit - len(found)),
            )
            found.extend(self._row_to_resource(row) for row in rows)
            floor = resource_type + 1
        return found

    @_storage_errors
    async def count_children(self, pi: str, resource_type: int) -> int:
        conn = await self._ready()
        row = conn.execute(
            "SELECT count(*) FROM resources WHERE pi = ? AND ty = ?", (pi, resource_type)
        ).fetchone()
        return int(row[0])

    @_storage_errors
    async def descendants(
        self, path: str, types: Iterable[int] | None = None, max_depth: int | None = None
    ) -> list[Resource]:
        conn = await self._ready()
        low, high = _subtree_bounds(path)
        sql = f"SELECT {_COLUMNS} FROM resources WHERE path > ? AND path < ?"
        params: list[Any] = [low, high]
        if types is not None:
            wanted = list(types)
            sql += f" AND ty IN ({','.join('?' * len(wanted))})"
            params.extend(wanted)
        if max_depth is not None:
            sql += " AND depth <= ?"
            params.append(path.count("/") + max_depth)
        sql += " ORDER BY seq"
        return [self._row_to_resource(row) for row in conn.execute(sql, params)]

    @_storage_errors
    async def instances(
        self, pi: str, *, newest: bool, limit: int, resource_type: int = _CONTENT_INSTANCE
    ) -> list[Resource]:
        conn = await self._ready()
        order = "DESC" if newest else "ASC"
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM resources WHERE pi = ? AND ty = ? "
            f"ORDER BY seq {order} LIMIT ?",
            (pi, resource_type, limit),
        )
        return [self._row_to_resource(row) for row in rows]

    @_storage_errors
    async def find_child(
        self, pi: str, resource_type: int, attribute: str, value: str
    ) -> Resource | None:
        if not _ATTRIBUTE_NAME.match(attribute):
            raise ValueError(f"not an attribute name: {attribute!r}")
        conn = await self._ready()
        # Written as the instances_by_dgt index is, so that the dgt of timeSeriesInstances
        # is looked up; any other attribute is read out of each sibling's body by SQLite.
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM resources WHERE pi = ? AND ty = {int(resource_type)} "
            f"AND json_extract(CAST(body AS TEXT), '$.{attribute}') = ? LIMIT 1",
            (pi, value),
        ).fetchone()
        return None if row is None else self._row_to_resource(row)

    @_storage_errors
    async def created_since(self, seq: int, resource_type: int, limit: int) -> list[Resource]:
        conn = await self._ready()
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM resources WHERE seq > ? AND ty = ? ORDER BY seq LIMIT ?",
            (seq, resource_type, limit),
        )
        return [self._row_to_resource(row) for row in rows]

    async def last_seq(self) -> int:
        await self._ready()
        return self._last_seq

    @_storage_errors
    async def expired(self, now: str, limit: int) -> list[Resource]:
        conn = await self._ready()
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM resources WHERE et IS NOT NULL AND et < ? ORDER BY et LIMIT ?",
            (now, limit),
        )
        return [self._row_to_resource(row) for row in rows]

    @_storage_errors
    async def queued_notifications(self, limit: int) -> list[QueuedNotification]:
        conn = await self._ready()
        rows = conn.execute(
            "SELECT id, target, subscription, created, body FROM outbox ORDER BY id LIMIT ?",
            (limit,),
        )
        return [
            QueuedNotification(number, target, sub, created, orjson.loads(body))
            for number, target, sub, created, body in rows
        ]

    @_storage_errors
    async def recorded_request(self, key: str) -> str | None:
        conn = await self._ready()
        row = conn.execute("SELECT ri FROM request_log WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # ---- writes ------------------------------------------------------------------------

    async def apply(self, changes: Sequence[Change]) -> None:
        conn = await self._ready()
        if self._in_transaction and not conn.in_transaction:
            # SQLite rolled the open transaction back by itself (an I/O error or a full disk
            # in an earlier statement): the batches in it are lost, and their requests hear so.
            self._abandon(sqlite3.OperationalError("the transaction was rolled back by SQLite"))
        try:
            if not self._in_transaction:
                conn.execute("BEGIN")
                self._in_transaction = True
            conn.execute("SAVEPOINT batch")
        except sqlite3.Error as error:
            self._abandon(error)
            raise self._failure(error) from error
        touched: list[tuple[Resource, bool]] = []
        try:
            for change in changes:
                self._apply_one(conn, change, touched)
            conn.execute("RELEASE batch")
        except (sqlite3.Error, TypeError, ValueError) as error:
            # TypeError/ValueError: a value the encoder refused; undo the batch either way.
            self._undo_batch(conn, error)
            if isinstance(error, sqlite3.Error):
                raise self._failure(error) from error
            raise StorageError(str(error)) from error
        for resource, present in touched:
            if present:
                self._remember(resource)
            else:
                self._forget_tree(resource)
        self._applied += 1
        self.batches += 1
        self._dirty.set()

    def _apply_one(
        self, conn: sqlite3.Connection, change: Change, touched: list[tuple[Resource, bool]]
    ) -> None:
        if isinstance(change, Put):
            self._put(conn, change.resource)
            touched.append((change.resource, True))
        elif isinstance(change, DeleteTree):
            self._delete_tree(conn, change.resource)
            touched.append((change.resource, False))
        elif isinstance(change, Enqueue):
            item = change.notification
            conn.execute(
                "INSERT INTO outbox (id, target, subscription, created, body) "
                "VALUES (?, ?, ?, ?, ?)",
                (item.id, item.target, item.subscription, item.created, orjson.dumps(item.body)),
            )
        elif isinstance(change, Dequeue):
            conn.executemany("DELETE FROM outbox WHERE id = ?", [(n,) for n in change.ids])
        elif isinstance(change, RecordRequest):
            conn.execute(
                "INSERT OR REPLACE INTO request_log (key, ri, at) VALUES (?, ?, ?)",
                (change.key, change.resource_id, change.at),
            )
        elif isinstance(change, ForgetRequests):
            conn.execute("DELETE FROM request_log WHERE at < ?", (change.before,))
        elif isinstance(change, ReserveSequence) and change.floor > self._last_seq:
            self._last_seq = change.floor
            self._floor_dirty = True

    def _undo_batch(self, conn: sqlite3.Connection, error: BaseException) -> None:
        """Take back one failed batch; if SQLite took back the whole transaction, say so."""
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK TO batch")
                conn.execute("RELEASE batch")
                return
            except sqlite3.Error:
                pass
        self._abandon(error)

    def _put(self, conn: sqlite3.Connection, resource: Resource) -> None:
        body = orjson.dumps(resource.attributes)
        if resource.seq:
            conn.execute(
                "UPDATE resources SET et = ?, body = ? WHERE seq = ?",
                (resource.et, body, resource.seq),
            )
            return
        seq = self._last_seq + 1
        conn.execute(
            "INSERT INTO resources (seq, ri, pi, path, ty, depth, et, owner, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                resource.ri,
                resource.pi,
                resource.path,
                resource.ty,
                resource.depth,
                resource.et,
                resource.owner,
                body,
            ),
        )
        self._last_seq = resource.seq = seq

    def _delete_tree(self, conn: sqlite3.Connection, resource: Resource) -> None:
        low, high = _subtree_bounds(resource.path)
        conn.execute(
            "DELETE FROM resources WHERE path = ? OR (path > ? AND path < ?)",
            (resource.path, low, high),
        )
        # If the newest resources went, the highest number handed out must be kept apart
        # from them, or a restart would hand their numbers out again.
        top = conn.execute("SELECT max(seq) FROM resources").fetchone()[0] or 0
        if top < self._last_seq:
            self._floor_dirty = True

    def _forget_tree(self, resource: Resource) -> None:
        low, high = _subtree_bounds(resource.path)
        for path in [p for p in self._path_cache if p == resource.path or low < p < high]:
            ri = self._path_cache.pop(path)
            self._cache.pop(ri, None)
        self._cache.pop(resource.ri, None)

    async def sync(self) -> None:
        target = self._applied
        if self._durable >= target:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        await waiter

    async def _commit_loop(self) -> None:
        while True:
            if self._applied > self._durable:
                self._dirty.set()  # restarted by the supervisor with writes waiting
            await self._dirty.wait()
            # Let every request that is ready to run add its writes to this transaction: keep
            # yielding while new writes arrive (requests decoded in the last pass reach their
            # apply() a pass or two later), up to a bound that caps the added latency.
            seen = self._applied
            for _ in range(_MAX_GATHER_PASSES):
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                if self._applied == seen:
                    break
                seen = self._applied
            self._dirty.clear()
            generation = self._applied
            error = self._commit()
            self._durable = max(self._durable, generation)
            self._wake_waiters(generation, error)

    def _commit(self) -> sqlite3.Error | None:
        """COMMIT the open transaction; on failure it is rolled back and the error returned."""
        conn = self._conn
        if conn is None or not self._in_transaction:
            return None
        try:
            if not conn.in_transaction:
                raise sqlite3.OperationalError("the transaction was rolled back by SQLite")
            if self._floor_dirty:
                conn.execute(
                    "INSERT INTO meta (name, value) VALUES ('seq_floor', ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (str(self._last_seq),),
                )
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            self.health.failed(error)
            self._roll_back()
            return error
        self._in_transaction = False
        self._floor_dirty = False
        self.commits += 1
        self.health.succeeded()
        return None

    def _abandon(self, error: BaseException) -> None:
        """The open transaction is lost: fail every request still waiting for it."""
        self._roll_back()
        self._durable = self._applied
        self._wake_waiters(self._applied, error)

    def _roll_back(self) -> None:
        assert self._conn is not None
        if self._conn.in_transaction:  # SQLite may have rolled back already (full disk)
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error as error:
                logger.warning("rollback failed: %s", error)
        self._in_transaction = False
        # The cache may hold changes that never reached the disk.
        self._cache.clear()
        self._path_cache.clear()

    def _wake_waiters(self, generation: int, error: BaseException | None) -> None:
        still_waiting: list[tuple[int, asyncio.Future[None]]] = []
        for target, waiter in self._waiters:
            if target > generation:
                still_waiting.append((target, waiter))
            elif not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(StorageError(f"commit failed: {error}"))
        self._waiters = still_waiting
