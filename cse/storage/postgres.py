"""The CSE's storage on a PostgreSQL server, which several CSE processes (workers) share.

The only module of the CSE that imports psycopg: `cse.app.open_storage` imports it when `db`
is a postgresql:// URL, so a gateway on SQLite never loads psycopg or libpq.

One worker, as on SQLite: writes and reads go through one connection, inside one open
transaction per group, so every read sees every applied change, and one COMMIT acknowledges
every request of the group (group commit). A batch is one call of the server function
`gridm2m_apply` (cse/storage/postgres_sql.py), in a subtransaction of its own: one that fails
is taken back whole and leaves the others of its group alone. As a decision here waits for
the network, the group stays open while batches keep coming (`_GROUP_LINGER`, at most
`_GROUP_WINDOW`, `_MAX_GROUP_BATCHES`).

Several workers, which each answer any request:
- The database enforces what one process's write lock used to: a name under a parent and a
  resource ID are unique, a request record's key is unique (constraints); a child is stored
  only under a parent that is there and stays so (a share lock on it, or the batch's own
  change of it), a deleted subtree is empty at the end (checked after the DELETE); and a
  resource is changed only over the version the worker read (`version`); notifications are
  decided on a resource's subscriptions as they are (the batch checks the ones the task read,
  under a share lock that a change of them, which locks the resource, waits for).
  A batch that breaks one of these, or that would wait for rows another worker's open group
  holds (`lock_timeout`), is taken back whole and raised as `WriteConflict`; the core then
  decides the request again on fresh data (cse/core/handler.py) and answers, for instance,
  4105 to the loser of a race for one name. A group lost at COMMIT by such a conflict is
  decided again the same way, each of its requests; the COMMIT itself waits for the lock on
  PostgreSQL's notification queue (see _commit). sync() speaks of the calling task's own
  batches only.
- Sequence numbers come from a database sequence; resource-ID stems and outbox IDs from this
  worker's number (the `worker_numbers` sequence), so no two workers hand out the same.
- The cache of non-instance resources is told of other workers' commits by LISTEN/NOTIFY
  (each commit sends the IDs it changed); while that channel is down the cache is not used.
- Outbox entries belong to the worker that wrote them while it renews its lease
  (`workers.alive_until`); the entries of a worker whose lease ran out are claimed by another
  (FOR UPDATE SKIP LOCKED: one claimer each).
- `lead(role)` is a session advisory lock: one worker at a time sweeps expired resources.
docs/scale-out.md ("Storage on PostgreSQL") says what each costs and what stays per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import re
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg import errors, sql
from psycopg.types.string import TextLoader

from cse.storage import postgres_sql as q
from cse.storage.base import (
    Change,
    ChangedElsewhere,
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
    WriteConflict,
)
from cse.storage.cache import INSTANCE_TYPES, SUBSCRIPTION, ResourceCache, subtree_bounds
from cse.supervision import Supervisor

logger = logging.getLogger(__name__)

Connection = psycopg.AsyncConnection[tuple[Any, ...]]
_T = TypeVar("_T")

_CONTENT_INSTANCE = 4
_ATTRIBUTE_NAME = re.compile(r"^[a-zA-Z]+$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
# A group commits once no batch has joined it for _GROUP_LINGER, or _GROUP_WINDOW after its
# first batch (see _commit_loop).
_GROUP_LINGER = 0.002
_IDLE_LINGER = 0.0002
_GROUP_WINDOW = 0.010
# PostgreSQL keeps the subtransactions (savepoints) of 64 per session in shared memory; a
# transaction with more makes every other session's snapshots look them up on disk.
_MAX_GROUP_BATCHES = 60
_NOTICE_BYTES = 7000  # a NOTIFY payload must stay under 8000 bytes
# Errors that mean "decided on data another worker changed, or is changing": decide again.
_CONFLICTS = (
    errors.UniqueViolation,
    errors.ForeignKeyViolation,
    errors.LockNotAvailable,
    errors.SerializationFailure,
    errors.DeadlockDetected,
)
_LOCKED = (errors.LockNotAvailable, errors.DeadlockDetected)
# The same, as SQLSTATEs reported by gridm2m_apply.
_CONFLICT_CODES = frozenset({"23505", "23503", "55P03", "40001", "40P01"})
_LOCKED_CODES = frozenset({"55P03", "40P01"})
_LOCK_RETRY_AFTER = 0.002  # a worker's group commits within milliseconds
_SETTLE_WAIT = 2.0  # the longest wait for rows another worker holds, before deciding again
_LISTEN_PAUSE = 1.0  # between attempts to follow other workers' notices again
_LOST_GROUPS_KEPT = 1000
_SUBSCRIPTION_LISTS_KEPT = 16  # per task, between two apply() calls

# The subscriptions of one resource as a decision read them: (ri, version) by ri.
SubscriptionList = tuple[tuple[str, int], ...]


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _shielded(work: Coroutine[Any, Any, _T]) -> _T:
    """Run `work` to its end even if the caller is cancelled: a statement cut off half-way
    would abort the group's transaction (or commit half a batch)."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_consume)
        raise


@dataclass(slots=True)
class _Batch:
    """One apply(): its changes for gridm2m_apply, and what to do with each one's result."""

    changes: list[dict[str, Any]] = field(default_factory=list)
    results: list[Callable[[Any], None]] = field(default_factory=list)
    remembered: list[Resource] = field(default_factory=list)
    forgotten: list[Resource] = field(default_factory=list)
    notices_put: list[tuple[str, int]] = field(default_factory=list)
    notices_subscribed: list[str] = field(default_factory=list)  # parents of subscriptions
    notices_deleted: list[str] = field(default_factory=list)
    deleted_paths: list[str] = field(default_factory=list)
    versions: dict[int, int] = field(default_factory=dict)  # seq -> version after this batch
    held: list[str] = field(default_factory=list)  # rows another worker may hold (by ri)
    present: set[str] = field(default_factory=set)  # resources this batch creates or changes
    watched: list[str] = field(default_factory=list)  # whose subscriptions it was decided on

    def add(
        self,
        change: dict[str, Any],
        result: Callable[[Any], None] | None = None,
        body: str | None = None,
    ) -> None:
        if body is not None:
            change["body"] = body
        self.changes.append(change)
        self.results.append(result or _ignore)

    def inside_deleted(self, path: str) -> bool:
        return any(path == gone or path.startswith(gone + "/") for gone in self.deleted_paths)


def _ignore(result: Any) -> None:
    return None


def describe(url: str) -> str:
    """The database a URL names, without its password (for logs and health)."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "PostgreSQL (an unreadable URL)"
    host = parts.get("host") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"


class PostgresStorage(Storage):
    """`url`: a libpq URL (its password better comes from ~/.pgpass or PGPASSWORD, see
    docs/security.md). `schema` puts the tables in their own schema (made if missing), e.g.
    one per CSE sharing a database. `lease`: seconds after its last renewal that a worker's
    outbox entries go to another worker."""

    shared = True

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        cache_size: int = 8192,
        lease: float = 15.0,
        connect_timeout: float = 10.0,
        lock_wait_ms: int = 2,
        statement_timeout: float = 30.0,
        reconnect_pause: float = 1.0,
    ) -> None:
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise StorageError(
                f"PostgreSQL schema {schema!r}: use lower-case letters, digits and '_' "
                "(at most 48, not starting with a digit)"
            )
        self._url = url
        self._schema = schema
        self._channel = f"gridm2m_cse_{schema or 'public'}"
        self._lease = lease
        self.claim_interval = lease / 3
        self._connect_timeout = connect_timeout
        self._lock_wait_ms = lock_wait_ms
        self._statement_timeout = statement_timeout
        self._cache = ResourceCache(cache_size)
        self._conn: Connection | None = None  # the writer: reads and the group transaction
        self._side: Connection | None = None  # worker lease, claims, advisory locks
        self._lock = asyncio.Lock()  # one user of the writer connection at a time
        self._users = 0  # requests using, or waiting for, the writer connection
        self._idle = asyncio.Event()  # set while _users is 0
        self._idle.set()
        self._side_lock = asyncio.Lock()
        self._retry_connect_at = 0.0
        self._reconnect_pause = reconnect_pause  # after a failed connect, fail fast this long
        self._in_transaction = False
        self._needs_rollback = False  # a lost group's transaction is still open on the server
        self._group_batches = 0
        self._group_put: list[tuple[str, int]] = []
        self._group_subscribed: list[str] = []
        self._group_deleted: list[str] = []
        self._applied = 0  # generation of the newest applied change batch
        self._durable = 0  # generation covered by the last COMMIT
        self._dirty = asyncio.Event()
        self._batch_added = asyncio.Event()
        self._last_group = 0  # batches in the last group committed
        self._waited_for_commit = False  # requests queued for the connection during it
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        # The generations of groups that were not committed (first, last, why), the most
        # recent ones: sync() tells a request whether its own batches were among them.
        self._lost: deque[tuple[int, int, BaseException]] = deque(maxlen=_LOST_GROUPS_KEPT)
        # The first and last generation the current task (request) applied since its last
        # sync(): what it waits for, and whose loss it must hear of.
        self._own_batches: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
            f"postgres_own_batches_{id(self)}", default=None
        )
        # The subscription lists the current task read since its last apply(), by the
        # resource they are of: its next batch was decided on them (see _plan_subscribers).
        self._subscriptions_read: contextvars.ContextVar[dict[str, SubscriptionList] | None] = (
            contextvars.ContextVar(f"postgres_subscriptions_read_{id(self)}", default=None)
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._worker = 0
        self._database_id = ""
        self._listening = False  # the cache is used only while other workers' notices arrive
        self._notices_seen = 0
        self._listeners: list[Callable[[ChangedElsewhere], None]] = []
        self._leading: set[str] = set()
        self.health = StorageHealth(f"database {describe(url)}")
        self.commits = 0  # counters for benchmarks and metrics
        self.batches = 0
        self.conflicts = 0
        self.notices_received = 0

    # ---- connections -------------------------------------------------------------------

    async def _connect(self, role: str, statement_timeout: float | None = None) -> Connection:
        conn = await psycopg.AsyncConnection.connect(
            self._url,
            autocommit=True,
            connect_timeout=max(1, round(self._connect_timeout)),
            application_name=f"gridm2m-cse-{role}",
            # A server that vanished without closing the connection is noticed in ~20 s.
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=3,
            keepalives_count=3,
        )
        try:
            conn.adapters.register_loader("json", TextLoader)  # decoded by orjson, as on SQLite
            timeout = self._statement_timeout if statement_timeout is None else statement_timeout
            settings: list[sql.Composed | sql.SQL] = [
                sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{self._lock_wait_ms}ms")),
                sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{timeout:g}s")),
                # A worker that stalls (SIGSTOP) with its group open would hold its rows.
                sql.SQL("SET idle_in_transaction_session_timeout = '60s'"),
            ]
            if self._schema is not None:
                settings.append(
                    sql.SQL("SET search_path TO {}").format(sql.Identifier(self._schema))
                )
            for setting in settings:
                await conn.execute(setting)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _writer(self) -> Connection:
        """The writer connection, connected again if it was lost (the caller holds _lock)."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            if not self._needs_rollback:
                return conn
            self._needs_rollback = False
            try:
                await conn.execute("ROLLBACK")
                return conn
            except psycopg.Error as error:
                logger.warning("could not roll back a lost group: %s", error)
        if conn is not None:
            self._conn = None
            await conn.close()
            if self._in_transaction:
                self._abandon(StorageError("the connection to PostgreSQL was lost"))
        if time.monotonic() < self._retry_connect_at:
            raise StorageError(f"PostgreSQL is unreachable: {self.health.last_error}")
        try:
            self._conn = await self._connect("writer")
        except psycopg.Error as error:
            self._retry_connect_at = time.monotonic() + self._reconnect_pause
            self.health.failed(error)
            raise StorageError(f"cannot connect to PostgreSQL: {error}") from None
        return self._conn

    async def _side_connection(self) -> Connection:
        """The connection for leases, claims and advisory locks (the caller holds
        _side_lock). Its advisory locks go with it, so a new one leads nothing yet."""
        conn = self._side
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._leading.clear()
        if conn is not None:
            await conn.close()
        try:
            self._side = await self._connect("lease")
        except psycopg.Error as error:
            raise StorageError(f"cannot connect to PostgreSQL: {error}") from None
        return self._side

    def _failure(self, error: psycopg.Error) -> StorageError:
        if isinstance(error, _CONFLICTS):
            self.conflicts += 1
            retry_after = _LOCK_RETRY_AFTER if isinstance(error, _LOCKED) else 0.0
            detail = str(error).splitlines()[0] if str(error) else type(error).__name__
            return WriteConflict(f"another worker changed the same data ({detail})", retry_after)
        self.health.failed(error)
        return StorageError(str(error).strip() or type(error).__name__)

    # ---- opening and closing -------------------------------------------------------------

    async def open(self, supervisor: Supervisor | None = None) -> None:
        try:
            async with self._lock:
                conn = await self._writer()
                await self._prepare_schema(conn)
            async with self._side_lock:
                side = await self._side_connection()
                cur = await side.execute(
                    q.REGISTER_WORKER, (socket.gethostname(), os.getpid(), self._lease)
                )
                row = await cur.fetchone()
                assert row is not None
                self._worker = int(row[0])
        except (psycopg.Error, StorageError) as error:
            await self._close_connections()
            raise StorageError(f"cannot open the CSE database on PostgreSQL: {error}") from None
        supervisor = supervisor or Supervisor()
        self._tasks = [
            supervisor.start("postgres committer", self._commit_loop),
            supervisor.start("postgres worker lease", self._lease_loop),
            supervisor.start("postgres change notices", self._listen_loop),
        ]
        logger.info("worker %d on %s", self._worker, describe(self._url))

    async def _prepare_schema(self, conn: Connection) -> None:
        async with conn.transaction():
            # Workers starting together make the schema one after the other.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (self._channel,)
            )
            if self._schema is not None:
                await conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema))
                )
            cur = await conn.execute("SELECT to_regclass('meta') IS NOT NULL")
            row = await cur.fetchone()
            version = None
            if row is not None and row[0]:
                cur = await conn.execute("SELECT value FROM meta WHERE name = 'schema_version'")
                found = await cur.fetchone()
                version = None if found is None else found[0]
            if version != q.SCHEMA_VERSION:
                await conn.execute(q.SCHEMA)
                await conn.execute(q.APPLY_FUNCTION)
                await conn.execute(
                    "INSERT INTO meta (name, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (q.SCHEMA_VERSION,),
                )
            await conn.execute(
                "INSERT INTO meta (name, value) VALUES ('database_id', %s) "
                "ON CONFLICT (name) DO NOTHING",
                (os.urandom(8).hex(),),
            )
            cur = await conn.execute("SELECT value FROM meta WHERE name = 'database_id'")
            found = await cur.fetchone()
            assert found is not None
            self._database_id = str(found[0])

    async def close(self) -> None:
        if self._conn is None and not self._tasks:
            return
        with contextlib.suppress(StorageError):  # not stored: its requests were told so
            await self.sync()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._worker:
            # What this worker still had to deliver goes to the others at once.
            with contextlib.suppress(psycopg.Error, StorageError):
                async with self._side_lock:
                    side = await self._side_connection()
                    await side.execute(q.RETIRE_WORKER, (self._worker,))
                    # Another worker may lead at once (a closed session's locks go only
                    # once the server has ended it).
                    await side.execute("SELECT pg_advisory_unlock_all()")
        await self._close_connections()
        self._database_id = ""

    async def _close_connections(self) -> None:
        for conn in (self._conn, self._side):
            if conn is not None:
                await conn.close()
        self._conn = self._side = None
        self._listening = False

    async def database_id(self) -> str:
        if not self._database_id:
            raise StorageError("storage is closed")
        return self._database_id

    # ---- several workers ---------------------------------------------------------------

    async def id_stem(self) -> str:
        return f"{self._worker % (1 << 32):08x}"

    async def notification_id_floor(self) -> int:
        # 2^40 IDs per worker (years of notifications) below 2^63 for 8 million workers.
        return (self._worker % (1 << 23)) << 40

    def watch_others(self, listener: Callable[[ChangedElsewhere], None]) -> None:
        self._listeners.append(listener)

    async def lead(self, role: str) -> bool:
        async def attempt() -> bool:
            async with self._side_lock:
                side = await self._side_connection()
                if role in self._leading:
                    await side.execute("SELECT 1")  # the session, and so its lock, lives
                    return True
                cur = await side.execute(
                    "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                    (f"{self._channel}:{role}",),
                )
                row = await cur.fetchone()
                if row is not None and row[0]:
                    self._leading.add(role)
                    logger.info("worker %d now does %s", self._worker, role)
                return role in self._leading

        try:
            return await _shielded(attempt())
        except psycopg.Error as error:
            raise StorageError(f"cannot reach PostgreSQL: {error}") from None

    async def claim_notifications(self, limit: int) -> list[QueuedNotification]:
        async def claim() -> list[QueuedNotification]:
            async with self._side_lock:
                side = await self._side_connection()
                cur = await side.execute(q.CLAIM_ORPHANS, {"me": self._worker, "limit": limit})
                claimed = [_queued(row) for row in await cur.fetchall()]
            if claimed:
                logger.warning(
                    "worker %d took over %d notifications of a worker that stopped",
                    self._worker,
                    len(claimed),
                )
            return sorted(claimed, key=lambda item: (item.created, item.id))

        try:
            return await _shielded(claim())
        except psycopg.Error as error:
            raise StorageError(f"cannot claim notifications: {error}") from None

    async def claim_handed_off(
        self, schemes: Sequence[str], limit: int
    ) -> list[QueuedNotification]:
        async def claim() -> list[QueuedNotification]:
            async with self._side_lock:
                side = await self._side_connection()
                params = {"me": self._worker, "schemes": list(schemes), "limit": limit}
                cur = await side.execute(q.CLAIM_HANDED_OFF, params)
                claimed = [_queued(row) for row in await cur.fetchall()]
            return sorted(claimed, key=lambda item: (item.created, item.id))

        try:
            return await _shielded(claim())
        except psycopg.Error as error:
            raise StorageError(f"cannot claim handed-off notifications: {error}") from None

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                await _shielded(self._renew())
            except (psycopg.Error, StorageError) as error:
                logger.warning("worker %d could not renew its lease: %s", self._worker, error)

    async def _renew(self) -> None:
        async with self._side_lock:
            side = await self._side_connection()
            cur = await side.execute(q.RENEW_WORKER, {"me": self._worker, "lease": self._lease})
            row = await cur.fetchone()
            if row is None:  # forgotten as long dead: come back under the same number
                await side.execute(
                    "INSERT INTO workers (id, host, pid, alive_until) "
                    "VALUES (%s, %s, %s, now() + make_interval(secs => %s))",
                    (self._worker, socket.gethostname(), os.getpid(), self._lease),
                )
            if row is None or row[0]:
                logger.warning(
                    "worker %d renewed its lease after it had run out: another worker may "
                    "have taken over its notifications, and a target may hear one twice",
                    self._worker,
                )
            await side.execute(q.FORGET_DEAD_WORKERS)

    async def _listen_loop(self) -> None:
        """Follow other workers' commits; the cache is used only while this runs."""
        first = True
        failures = 0  # in a row: the first is a warning, the rest (an outage) debug lines
        while True:
            conn: Connection | None = None
            try:
                conn = await self._connect("notices", statement_timeout=0)
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                # Whatever was cached may have changed while nobody listened.
                self._cache.clear()
                self._notices_seen += 1
                self._listening = True
                if not first:
                    self._tell(ChangedElsewhere(unknown=True))
                first = False
                failures = 0
                async for notice in conn.notifies():
                    self._on_notice(notice.payload)
            except psycopg.Error as error:
                failures += 1
                level = logging.WARNING if failures == 1 else logging.DEBUG
                logger.log(level, "change notices of other workers lost (%s); reconnecting", error)
            finally:
                self._listening = False
                self._cache.clear()
                if conn is not None:
                    await conn.close()
            await asyncio.sleep(_LISTEN_PAUSE)

    def _on_notice(self, payload: str) -> None:
        try:
            notice = orjson.loads(payload)
            if notice.get("w") == self._worker:
                return
            put = tuple((str(ri), int(ty)) for ri, ty in notice.get("p", ()))
            subscribed = [str(pi) for pi in notice.get("s", ())]
            deleted = tuple(str(path) for path in notice.get("d", ()))
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
            logger.warning("unreadable change notice ignored: %.80s", payload)
            return
        self.notices_received += 1
        self._notices_seen += 1
        for ri, _ in put:
            self._cache.forget(ri)
        for pi in subscribed:
            self._cache.forget_subscriptions(pi)
        for path in deleted:
            self._cache.forget_tree(path)
        if deleted:
            self._cache.forget_subscriptions()  # of anything in those subtrees
        self._tell(ChangedElsewhere(put, deleted))

    def _tell(self, changed: ChangedElsewhere) -> None:
        for listener in self._listeners:
            try:
                listener(changed)
            except Exception:
                logger.exception("a listener of other workers' changes failed")

    # ---- reads ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _using(self) -> AsyncIterator[None]:
        """Hold the writer connection for a request's read or batch (counted: the committer
        waits for them, see _commit_loop)."""
        self._users += 1
        self._idle.clear()
        try:
            async with self._lock:
                yield
        finally:
            self._users -= 1
            if not self._users:
                self._idle.set()

    async def _fetch(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async def run() -> list[tuple[Any, ...]]:
            async with self._using():
                conn = await self._writer()
                try:
                    cur = await conn.execute(query, params)
                    return await cur.fetchall()
                except psycopg.Error as error:
                    if self._in_transaction:  # a failed statement aborts the group with it
                        self._abandon(error)
                    raise self._failure(error) from error

        return await _shielded(run())

    def _resources(self, rows: Iterable[tuple[Any, ...]]) -> list[Resource]:
        return [
            Resource(orjson.loads(body), path, owner, seq, version)
            for seq, path, owner, version, body in rows
        ]

    async def _one(self, query: str, key: str) -> Resource | None:
        seen = self._notices_seen
        found = self._resources(await self._fetch(query, (key,)))
        if not found:
            return None
        # Not kept if another worker's notice arrived meanwhile: it may be about this one.
        if self._listening and seen == self._notices_seen:
            self._cache.remember(found[0])
        return found[0]

    async def get(self, ri: str) -> Resource | None:
        if self._listening:
            cached = self._cache.get(ri)
            if cached is not None:
                return cached
        return await self._one(f"SELECT {q.COLUMNS} FROM resources WHERE ri = %s", ri)

    async def get_by_path(self, path: str) -> Resource | None:
        if self._listening:
            cached = self._cache.get_by_path(path)
            if cached is not None:
                return cached
        return await self._one(f"SELECT {q.COLUMNS} FROM resources WHERE path = %s", path)

    async def children(
        self, pi: str, types: Iterable[int] | None = None, limit: int | None = None
    ) -> list[Resource]:
        wanted = None if types is None else list(types)
        subscriptions = wanted == [SUBSCRIPTION] and limit is None
        if subscriptions and self._listening:
            cached = self._cache.subscriptions_of(pi)
            if cached is not None:
                self._note_subscriptions(pi, cached)
                return cached
        seen = self._notices_seen
        query = f"SELECT {q.COLUMNS} FROM resources WHERE pi = %s"
        params: list[Any] = [pi]
        if wanted is not None:
            query += " AND ty = ANY(%s)"
            params.append(wanted)
        query += " ORDER BY seq"
        if limit is not None:
            query += " LIMIT %s"
            params.append(limit)
        found = self._resources(await self._fetch(query, params))
        if subscriptions:
            self._note_subscriptions(pi, found)
            if self._listening and seen == self._notices_seen:
                self._cache.remember_subscriptions(pi, found)
        return found

    def _note_subscriptions(self, pi: str, subscriptions: list[Resource]) -> None:
        """Remember for this task that it read these subscriptions of `pi`: whatever it
        applies next is stored only while they are still all of them (a copy per task)."""
        read = dict(self._subscriptions_read.get() or {})
        read.pop(pi, None)
        read[pi] = tuple(sorted((sub.ri, sub.version) for sub in subscriptions))
        while len(read) > _SUBSCRIPTION_LISTS_KEPT:
            del read[next(iter(read))]
        self._subscriptions_read.set(read)

    async def children_page(
        self,
        pi: str,
        *,
        types: Iterable[int] | None = None,
        after: tuple[int, int] | None = None,
        limit: int,
    ) -> list[Resource]:
        # A row comparison on the (pi, ty, seq) index: one ordered range from the cursor.
        after_type, after_seq = after or (0, 0)
        query = f"SELECT {q.COLUMNS} FROM resources WHERE pi = %s AND (ty, seq) > (%s, %s)"
        params: list[Any] = [pi, after_type, after_seq]
        if types is not None:
            query += " AND ty = ANY(%s)"
            params.append(sorted(set(types)))
        query += " ORDER BY ty, seq LIMIT %s"
        params.append(limit)
        return self._resources(await self._fetch(query, params))

    async def count_children(self, pi: str, resource_type: int) -> int:
        rows = await self._fetch(
            "SELECT count(*) FROM resources WHERE pi = %s AND ty = %s", (pi, resource_type)
        )
        return int(rows[0][0])

    async def descendants(
        self, path: str, types: Iterable[int] | None = None, max_depth: int | None = None
    ) -> list[Resource]:
        low, high = subtree_bounds(path)
        query = f"SELECT {q.COLUMNS} FROM resources WHERE path > %s AND path < %s"
        params: list[Any] = [low, high]
        if types is not None:
            query += " AND ty = ANY(%s)"
            params.append(list(types))
        if max_depth is not None:
            query += " AND depth <= %s"
            params.append(path.count("/") + max_depth)
        query += " ORDER BY seq"
        return self._resources(await self._fetch(query, params))

    async def instances(
        self, pi: str, *, newest: bool, limit: int, resource_type: int = _CONTENT_INSTANCE
    ) -> list[Resource]:
        order = "DESC" if newest else "ASC"
        return self._resources(
            await self._fetch(
                f"SELECT {q.COLUMNS} FROM resources WHERE pi = %s AND ty = %s "
                f"ORDER BY seq {order} LIMIT %s",
                (pi, resource_type, limit),
            )
        )

    async def find_child(
        self, pi: str, resource_type: int, attribute: str, value: str
    ) -> Resource | None:
        if not _ATTRIBUTE_NAME.match(attribute):
            raise ValueError(f"not an attribute name: {attribute!r}")
        # Written as the instances_by_dgt index is, so that a timeSeriesInstance's dgt is
        # looked up there.
        rows = await self._fetch(
            f"SELECT {q.COLUMNS} FROM resources WHERE pi = %s AND ty = {int(resource_type)} "
            f"AND (body ->> '{attribute}') = %s LIMIT 1",
            (pi, value),
        )
        found = self._resources(rows)
        return found[0] if found else None

    async def created_since(self, seq: int, resource_type: int, limit: int) -> list[Resource]:
        return self._resources(
            await self._fetch(
                f"SELECT {q.COLUMNS} FROM resources WHERE seq > %s AND ty = %s "
                "ORDER BY seq LIMIT %s",
                (seq, resource_type, limit),
            )
        )

    async def last_seq(self) -> int:
        rows = await self._fetch(q.LAST_SEQ, ())
        return int(rows[0][0])

    async def expired(self, now: str, limit: int) -> list[Resource]:
        return self._resources(
            await self._fetch(
                f"SELECT {q.COLUMNS} FROM resources WHERE et IS NOT NULL AND et < %s "
                "ORDER BY et LIMIT %s",
                (now, limit),
            )
        )

    async def queued_notifications(self, limit: int) -> list[QueuedNotification]:
        """What no live worker holds (now this worker's), then this worker's own entries."""
        claimed = await self.claim_notifications(limit)
        own = [_queued(row) for row in await self._fetch(q.OWN_ENTRIES, (self._worker, limit))]
        known = {item.id for item in own}
        merged = own + [item for item in claimed if item.id not in known]
        return sorted(merged, key=lambda item: (item.created, item.id))[:limit]

    async def recorded_request(self, key: str) -> str | None:
        rows = await self._fetch("SELECT ri FROM request_log WHERE key = %s", (key,))
        return None if not rows else str(rows[0][0])

    # ---- writes --------------------------------------------------------------------------

    async def apply(self, changes: Sequence[Change]) -> None:
        read = self._subscriptions_read.get() or {}
        self._subscriptions_read.set(None)
        batch = self._plan(changes, read)
        generation = await _shielded(self._apply(batch))
        own = self._own_batches.get()
        self._own_batches.set((generation if own is None else own[0], generation))

    def _plan(self, changes: Sequence[Change], read: dict[str, SubscriptionList]) -> _Batch:
        batch = _Batch()
        # Parents whose existence the batch itself proves: it changes them (a version-checked
        # UPDATE locks the row) or creates them.
        batch.present = {c.resource.ri for c in changes if isinstance(c, Put)}
        try:
            for change in changes:
                self._plan_one(batch, change)
        except (TypeError, ValueError) as error:  # a value orjson cannot encode
            raise StorageError(str(error)) from error
        self._plan_subscribers(batch, changes, read)
        return batch

    @staticmethod
    def _plan_subscribers(
        batch: _Batch, changes: Sequence[Change], read: dict[str, SubscriptionList]
    ) -> None:
        """Keep who hears of a change serializable across workers. A batch that changes
        the subscriptions of a resource locks it ('hold'); a batch decided on the
        subscriptions of a resource (who to notify of a new child, of a change) checks under
        a share lock that they are still the ones it read ('subscribers'). So a child made
        while a subscription is made on its parent is either notified by that subscription
        or committed before it (and so listed by a subscriber that lists the children once
        subscribed). Both come after the batch's own changes: a resource it updates is
        already locked (the lock there would only cost)."""
        mine: dict[str, list[str]] = {}  # subscriptions the batch changes, by their parent
        holding: set[str] = set()
        for change in changes:
            if not isinstance(change, Put | DeleteTree):
                continue
            resource = change.resource
            if resource.ty != SUBSCRIPTION or not resource.pi:
                continue
            mine.setdefault(resource.pi, []).append(resource.ri)
            parent_path = resource.path.rsplit("/", 1)[0]
            if (
                resource.pi not in batch.present
                and resource.pi not in holding
                and not batch.inside_deleted(parent_path)
            ):
                holding.add(resource.pi)
                batch.held.append(resource.pi)
                batch.add({"op": "hold", "ri": resource.pi})
        for pi, subscriptions in read.items():
            own = mine.get(pi, [])
            lock = pi not in batch.present and pi not in mine
            if lock:
                batch.held.append(pi)
            batch.watched.append(pi)
            seen = [[ri, version] for ri, version in subscriptions if ri not in own]
            batch.add({"op": "subscribers", "ri": pi, "lock": lock, "seen": seen, "mine": own})

    def _plan_one(self, batch: _Batch, change: Change) -> None:
        if isinstance(change, Put):
            self._plan_put(batch, change.resource)
        elif isinstance(change, DeleteTree):
            self._plan_delete(batch, change.resource)
        elif isinstance(change, Enqueue):
            item = change.notification
            entry = {
                "op": "enqueue",
                "id": item.id,
                "target": item.target,
                "subscription": item.subscription,
                "created": item.created,
            }
            if change.hand_off is not None:  # worker 0: no one's until claimed
                entry.update(worker=0, scheme=change.hand_off)
            batch.add(entry, body=orjson.dumps(item.body).decode())
        elif isinstance(change, Dequeue):
            batch.add({"op": "dequeue", "ids": list(change.ids)})
        elif isinstance(change, RecordRequest):
            record = {"op": "record", "key": change.key, "ri": change.resource_id, "at": change.at}
            batch.add(record)
        elif isinstance(change, ForgetRequests):
            batch.add({"op": "forget", "before": change.before})
        elif isinstance(change, ReserveSequence):
            batch.add({"op": "reserve", "floor": change.floor})

    def _plan_put(self, batch: _Batch, resource: Resource) -> None:
        if batch.inside_deleted(resource.path):
            return  # gone with a subtree this batch deletes (as on SQLite: nothing to change)
        body = orjson.dumps(resource.attributes).decode()
        batch.remembered.append(resource)
        if resource.ty not in INSTANCE_TYPES:
            batch.notices_put.append((resource.ri, resource.ty))
        if resource.ty == SUBSCRIPTION:
            batch.notices_subscribed.append(resource.pi)
        if not resource.seq:
            under = None
            if resource.pi and resource.pi not in batch.present:
                under = resource.pi
                batch.held.append(resource.pi)  # a parent being changed elsewhere

            def inserted(seq: Any) -> None:
                resource.seq, resource.version = int(seq), 1

            change = {
                "op": "insert",
                "ri": resource.ri,
                "pi": resource.pi or None,
                "path": resource.path,
                "ty": resource.ty,
                "depth": resource.depth,
                "et": resource.et,
                "owner": resource.owner,
                "under": under,
            }
            batch.add(change, inserted, body)
            return
        batch.held.append(resource.ri)
        expected = batch.versions.get(resource.seq, resource.version)
        batch.versions[resource.seq] = expected + 1

        def updated(version: Any) -> None:
            resource.version = int(version)

        change = {
            "op": "update",
            "seq": resource.seq,
            "version": expected,
            "path": resource.path,
            "et": resource.et,
        }
        batch.add(change, updated, body)

    def _plan_delete(self, batch: _Batch, resource: Resource) -> None:
        if batch.inside_deleted(resource.path):
            return
        batch.deleted_paths.append(resource.path)
        batch.forgotten.append(resource)
        batch.held.append(resource.ri)
        if resource.ty not in INSTANCE_TYPES:
            batch.notices_deleted.append(resource.path)
        low, high = subtree_bounds(resource.path)
        change = {
            "op": "delete",
            "ri": resource.ri,
            "path": resource.path,
            "low": low,
            "high": high,
            "leaf": resource.ty in INSTANCE_TYPES,  # an instance has no children
        }
        batch.add(change)

    async def _apply(self, batch: _Batch) -> int:
        async with self._using():
            conn = await self._writer()
            if self._group_batches >= _MAX_GROUP_BATCHES:
                await self._commit_group()
                conn = await self._writer()
            try:
                if not self._in_transaction:
                    await conn.execute("BEGIN")
                    self._in_transaction = True
                payload = orjson.dumps(batch.changes).decode()
                cur = await conn.execute(q.APPLY, (payload, self._worker))
                row = await cur.fetchone()
            except psycopg.Error as error:
                # The call itself failed (the connection, a timeout): the group is lost.
                self._undo(batch)
                if self._in_transaction:
                    self._abandon(error)
                raise self._failure(error) from error
            assert row is not None
            outcome = orjson.loads(row[0])
            if "error" in outcome:  # taken back whole by the function's subtransaction
                self._undo(batch)
                raise self._refusal(outcome, batch)
            for result, take in zip(outcome["ok"], batch.results, strict=True):
                take(result)
            for resource in batch.remembered:
                self._cache.remember(resource)
                self._cache.changed(resource)
            for resource in batch.forgotten:
                if resource.ty in INSTANCE_TYPES:
                    self._cache.forget(resource.ri)
                else:
                    self._cache.forget_tree(resource.path)
                    self._cache.forget_subscriptions()  # of anything in the subtree
            self._group_put.extend(batch.notices_put)
            self._group_subscribed.extend(batch.notices_subscribed)
            self._group_deleted.extend(batch.notices_deleted)
            self._group_batches += 1
            self._applied += 1
            self.batches += 1
            self._dirty.set()
            self._batch_added.set()
            return self._applied

    def _refusal(self, outcome: dict[str, Any], batch: _Batch) -> StorageError:
        """The error gridm2m_apply reports, as the core should hear it."""
        code, message = str(outcome.get("error")), str(outcome.get("message"))
        if code in _CONFLICT_CODES:
            self.conflicts += 1
            if code not in _LOCKED_CODES:
                return WriteConflict(f"another worker changed the same data ({message})")
            conflict = WriteConflict(
                f"another worker holds the same data ({message})", _LOCK_RETRY_AFTER
            )
            if batch.held:
                conflict.settled = functools.partial(self._wait_for_rows, sorted(set(batch.held)))
            return conflict
        self.health.failed(message)
        return StorageError(f"{message} ({code})")

    def _undo(self, batch: _Batch) -> None:
        """Drop what the cache may hold wrongly after a batch was refused."""
        for resource in batch.remembered:
            self._cache.forget(resource.ri)
            self._cache.changed(resource)
            parent = resource.pi
            if parent:  # a parent deleted elsewhere must be read again
                self._cache.forget(parent)
        for resource in batch.forgotten:
            self._cache.forget_tree(resource.path)
            self._cache.forget_subscriptions()
        for pi in batch.watched:  # perhaps changed by another worker: read them again
            self._cache.forget_subscriptions(pi)

    async def _wait_for_rows(self, ris: list[str]) -> None:
        """Return once no other transaction holds these resources for a change (or after
        `_SETTLE_WAIT`): a share lock waits for them, then goes at once."""

        async def wait() -> None:
            async with self._side_lock:
                side = await self._side_connection()
                async with side.transaction():
                    await side.execute(
                        sql.SQL("SET LOCAL lock_timeout = {}").format(
                            sql.Literal(f"{_SETTLE_WAIT:g}s")
                        )
                    )
                    await side.execute(
                        "SELECT 1 FROM resources WHERE ri = ANY(%s) FOR SHARE", (ris,)
                    )

        with contextlib.suppress(psycopg.Error, StorageError):  # deciding again tells
            await _shielded(wait())

    async def sync(self) -> None:
        """Wait until the batches this task applied since its last sync() are committed,
        and raise if they were not. A task that applied none (a read) waits for every batch
        applied so far: what it read may include them.

        By the task's own batches, not by whatever was applied meanwhile: a group committed
        before a task got here (an await after its apply()) says nothing about the task if
        it failed, or if a later one failed; each said the wrong thing once (a request
        answered 2001 though its group was lost, or 5000 though it was stored, and its
        notifications never queued)."""
        own = self._own_batches.get()
        if own is None:
            first = last = self._applied
        else:
            self._own_batches.set(None)
            first, last = own
        if self._durable < last:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((last, waiter))
            await waiter
        for lost_first, lost_last, error in self._lost:
            if lost_first <= last and first <= lost_last:
                raise self._lost_group(error)

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._applied > self._durable:
                self._dirty.set()  # restarted by the supervisor with writes waiting
            await self._dirty.wait()
            # Unlike SQLite's, a decision here reads over the network: the requests that
            # arrived together reach apply() one after another, a few round trips apart
            # (the core's write lock). So the group stays open while batches keep coming,
            # until none has come for _GROUP_LINGER with nobody on the connection, or for at
            # most _GROUP_WINDOW. Without load (the last group was one batch, and nobody
            # waited while it committed) a lone write does not wait.
            loaded = self._last_group > 1 or self._waited_for_commit
            linger = _GROUP_LINGER if loaded else _IDLE_LINGER
            deadline = loop.time() + _GROUP_WINDOW
            while self._group_batches < _MAX_GROUP_BATCHES and loop.time() < deadline:
                self._batch_added.clear()
                try:
                    async with asyncio.timeout_at(min(deadline, loop.time() + linger)):
                        await self._batch_added.wait()
                except TimeoutError:
                    if not self._users:
                        break
            self._last_group = self._group_batches
            self._dirty.clear()
            await _shielded(self._commit_locked())

    async def _commit_locked(self) -> None:
        async with self._lock:
            await self._commit_group()
            self._waited_for_commit = self._users > 0

    async def _commit_group(self) -> None:
        """COMMIT the group (the caller holds _lock) and answer the requests waiting for it."""
        generation = self._applied
        error = await self._commit() if self._in_transaction else None
        if error is not None:
            self._lost.append((self._durable + 1, generation, error))
        self._durable = max(self._durable, generation)
        self._wake_waiters(generation)

    async def _commit(self) -> BaseException | None:
        conn = self._conn
        if conn is None or conn.broken:
            error: BaseException = StorageError("the connection to PostgreSQL was lost")
            self.health.failed(error)
            self._roll_back()
            return error
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
            # An aborted transaction would "commit" as a rollback without an error.
            error = StorageError("the group's transaction was aborted")
            self.health.failed(error)
            self._needs_rollback = True
            self._roll_back()
            return error
        try:
            async with conn.pipeline():
                notices = self._notices()
                if notices:
                    # A COMMIT with notices queues them under PostgreSQL's one lock on the
                    # notification queue, which every other worker's COMMIT holds while it
                    # writes and flushes. That wait is short and cannot close a cycle, but
                    # it often passes lock_timeout (2 ms) on a busy server: a group lost
                    # whole, every request of it 5000 (measured with two workers).
                    await conn.execute("SET LOCAL lock_timeout = 0")
                for payload in notices:
                    await conn.execute(
                        "SELECT pg_notify(%s, %s)", (self._channel, payload), prepare=False
                    )
                await conn.execute("COMMIT")
        except psycopg.Error as failure:
            if isinstance(failure, _CONFLICTS):
                self.conflicts += 1  # its requests are decided again (_lost_group)
            else:
                self.health.failed(failure)
            with contextlib.suppress(psycopg.Error):
                if not conn.broken:
                    await conn.execute("ROLLBACK")
            self._roll_back()
            return failure
        self._end_group()
        self.commits += 1
        self.health.succeeded()
        return None

    def _notices(self) -> list[str]:
        """The group's changes as NOTIFY payloads, each under PostgreSQL's limit: "p" the
        (ri, ty) put, "s" the resources whose subscriptions changed, "d" deleted paths."""
        payloads: list[str] = []
        notice: dict[str, list[Any]] = {"p": [], "s": [], "d": []}
        size = 0

        def flush() -> None:
            nonlocal size
            if any(notice.values()):
                payloads.append(orjson.dumps({"w": self._worker, **notice}).decode())
            notice.update(p=[], s=[], d=[])
            size = 0

        for key, entries in (
            ("p", self._group_put),
            ("s", self._group_subscribed),
            ("d", self._group_deleted),
        ):
            for entry in dict.fromkeys(entries):
                notice[key].append(entry)
                size += len(str(entry)) + 4
                if size > _NOTICE_BYTES:
                    flush()
        flush()
        return payloads

    def _end_group(self) -> None:
        self._in_transaction = False
        self._group_batches = 0
        self._group_put.clear()
        self._group_subscribed.clear()
        self._group_deleted.clear()

    def _roll_back(self) -> None:
        self._end_group()
        # The cache may hold changes that never reached the database.
        self._cache.clear()

    def _abandon(self, error: BaseException) -> None:
        """The open transaction is lost: fail every request still waiting for it. The next
        user of the connection rolls it back on the server (`_writer`)."""
        if self._in_transaction:
            self._needs_rollback = True
        self._roll_back()
        self.health.failed(error)
        if self._applied > self._durable:
            self._lost.append((self._durable + 1, self._applied, error))
        self._durable = self._applied
        self._wake_waiters(self._applied)

    @staticmethod
    def _lost_group(error: BaseException) -> StorageError:
        """What a request hears when its group was not committed. Nothing of the group is
        stored, so a conflict with another worker (a lock not had in time, a serialization
        failure, a deadlock) is decided again like a refused batch (the core retries it, a
        bounded number of times); anything else is a failure (5000)."""
        if isinstance(error, _CONFLICTS):
            detail = str(error).splitlines()[0] if str(error) else type(error).__name__
            return WriteConflict(f"the group was not committed ({detail})", _LOCK_RETRY_AFTER)
        return StorageError(f"commit failed: {error}")

    def _wake_waiters(self, generation: int) -> None:
        """Wake the tasks waiting for groups up to `generation`, committed or lost (each
        then looks for its batches in `_lost`)."""
        still_waiting: list[tuple[int, asyncio.Future[None]]] = []
        for target, waiter in self._waiters:
            if target > generation:
                still_waiting.append((target, waiter))
            elif not waiter.done():
                waiter.set_result(None)
        self._waiters = still_waiting


def _queued(row: tuple[Any, ...]) -> QueuedNotification:
    number, target, subscription, created, body = row
    return QueuedNotification(int(number), target, subscription, float(created), orjson.loads(body))
