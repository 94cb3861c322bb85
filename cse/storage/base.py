"""The storage interface the core talks to, and the records it stores.

A backend keeps resources (with their structured path, so a hierarchical address is one
lookup) and the notification outbox. Writes come as one batch of changes that is applied
atomically and is visible at once; `sync()` returns when everything applied so far is durable.
The core acknowledges a request only after `sync()`: that is where group commit happens.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cse.supervision import Supervisor

logger = logging.getLogger(__name__)


class Resource:
    """One stored resource: its wire attributes plus what the CSE keeps beside them."""

    __slots__ = ("attributes", "owner", "path", "seq", "version")

    def __init__(
        self,
        attributes: dict[str, Any],
        path: str,
        owner: str,
        seq: int = 0,
        version: int = 0,
    ) -> None:
        self.attributes = attributes  # short names, as on the wire; never mutated once stored
        self.path = path  # structured CSE-relative ID, e.g. "cse-in/meter1/reading"
        self.owner = owner  # originator that created it (the default access rule)
        self.seq = seq  # insertion order, assigned by the storage
        # The stored version this copy was read at, for a backend that several processes write
        # (cse/storage/postgres.py): a changed copy is stored only over that same version.
        self.version = version

    @property
    def ri(self) -> str:
        return str(self.attributes["ri"])

    @property
    def pi(self) -> str:
        return str(self.attributes.get("pi", ""))

    @property
    def ty(self) -> int:
        return int(self.attributes["ty"])

    @property
    def rn(self) -> str:
        return str(self.attributes["rn"])

    @property
    def et(self) -> str | None:
        value = self.attributes.get("et")
        return None if value is None else str(value)

    @property
    def depth(self) -> int:
        return self.path.count("/")

    def with_attributes(self, **changes: Any) -> Resource:
        """A copy with some attributes replaced (None removes one)."""
        attributes = dict(self.attributes)
        for name, value in changes.items():
            if value is None:
                attributes.pop(name, None)
            else:
                attributes[name] = value
        return Resource(attributes, self.path, self.owner, self.seq, self.version)

    def __repr__(self) -> str:
        return f"Resource({self.path!r}, ty={self.attributes.get('ty')}, ri={self.ri!r})"


@dataclass(frozen=True, slots=True)
class QueuedNotification:
    """A notification waiting in the durable outbox."""

    id: int
    target: str  # a URL (http://…, coap://…, mqtt://…)
    subscription: str  # ri of the subscription it belongs to
    created: float
    body: dict[str, Any]  # the NOTIFY request: {"op":5, "to":…, "pc":{"m2m:sgn":…}, …}


@dataclass(frozen=True, slots=True)
class Put:
    """Create or replace a resource."""

    resource: Resource


@dataclass(frozen=True, slots=True)
class DeleteTree:
    """Delete a resource and everything below it."""

    resource: Resource


@dataclass(frozen=True, slots=True)
class Enqueue:
    """Add a notification to the outbox (its id is chosen by the caller). `hand_off`: the
    URL scheme of its target when this process has no binding for it, so that another
    process sharing the outbox that has one delivers it (a head-end worker and the
    in-process MDMS, docs/scale-out.md)."""

    notification: QueuedNotification
    hand_off: str | None = None


@dataclass(frozen=True, slots=True)
class Dequeue:
    """Remove notifications from the outbox (delivered, superseded or given up)."""

    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RecordRequest:
    """Remember that the request `key` (originator + request ID) created `resource_id`."""

    key: str
    resource_id: str
    at: float


@dataclass(frozen=True, slots=True)
class ForgetRequests:
    """Drop request records older than `before` (epoch seconds)."""

    before: float


@dataclass(frozen=True, slots=True)
class ReserveSequence:
    """Never hand out a sequence number at or below `floor` again (see `Storage.last_seq`)."""

    floor: int


Change = Put | DeleteTree | Enqueue | Dequeue | RecordRequest | ForgetRequests | ReserveSequence


class StorageError(Exception):
    """The backend could not read or persist; requests fail with 5000."""


class WriteConflict(StorageError):
    """A batch was decided on data another process has changed, or is changing, meanwhile
    (a shared database: cse/storage/postgres.py); none of it was applied. The core decides
    the request again on fresh data. `retry_after`: seconds worth waiting first (another
    process holds the rows until its transaction ends)."""

    def __init__(
        self,
        message: str,
        retry_after: float = 0.0,
        settled: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        # Returns once the rows the other process holds are free (or it has waited long
        # enough): a better moment to decide again than any fixed pause.
        self.settled = settled


@dataclass(frozen=True, slots=True)
class ChangedElsewhere:
    """Resources another process on the same database has changed (committed)."""

    put: tuple[tuple[str, int], ...] = ()  # (ri, ty) of resources created or changed
    deleted: tuple[str, ...] = ()  # paths of deleted subtrees
    # Some notices may have been missed (the connection they come on was lost): anything may
    # have changed.
    unknown: bool = False


class DatabaseInUse(StorageError):
    """Another process has the database open; the message names the file and the lock."""


class DatabaseDamaged(StorageError):
    """The database file cannot be read as a database; the message says how to recover."""


class StorageHealth:
    """Whether the database is working, from the outcome of the last writes (and failed reads).

    A disk that fills up fails every write until space returns: one log line when a run of
    failures starts and one when it ends, not one per request.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.failing = False
        self.last_error = ""
        self.failures = 0  # failed writes since start
        self.since: float | None = None  # time.time() when the current run of failures began
        self._in_run = 0

    def failed(self, error: object) -> None:
        self.failures += 1
        self.last_error = str(error)[:300]
        if not self.failing:
            self.failing, self.since, self._in_run = True, time.time(), 0
            logger.error("%s: writes are failing (%s); retrying as requests come", self.what, error)
        self._in_run += 1

    def succeeded(self) -> None:
        if self.failing:
            logger.warning("%s: writes succeed again after %d failures", self.what, self._in_run)
            self.failing, self.since = False, None

    def as_dict(self) -> dict[str, Any]:
        return {
            "writes_ok": not self.failing,
            "failures": self.failures,
            "last_error": self.last_error if self.failing else None,
            "failing_since": self.since,
        }


class Storage(ABC):
    """What the core needs from a backend. All reads see every applied change."""

    health: StorageHealth  # set by each backend: whether its last writes succeeded
    # Other processes may write the same database at the same time (several CSE workers on
    # one PostgreSQL). The hooks at the end of this class are what they need; a backend only
    # one process opens keeps their defaults.
    shared: bool = False
    # How often to ask `claim_notifications` (seconds); None: there is never anything to claim.
    claim_interval: float | None = None

    async def open(self, supervisor: Supervisor | None = None) -> None:  # noqa: B027
        """Prepare the backend (create tables, recover state); background tasks, if any, run
        under `supervisor`. An optional hook."""

    @abstractmethod
    async def database_id(self) -> str:
        """An identifier made when the database was created: a database recreated from
        scratch has a new one, a backup of it has the same one."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def get(self, ri: str) -> Resource | None: ...

    @abstractmethod
    async def get_by_path(self, path: str) -> Resource | None: ...

    @abstractmethod
    async def children(
        self, pi: str, types: Iterable[int] | None = None, limit: int | None = None
    ) -> list[Resource]:
        """Direct children in creation order."""

    @abstractmethod
    async def children_page(
        self,
        pi: str,
        *,
        types: Iterable[int] | None = None,
        after: tuple[int, int] | None = None,
        limit: int,
    ) -> list[Resource]:
        """At most `limit` direct children, ordered by (type, seq), after the (type, seq) of
        the last one of the previous page: a bounded read along the (pi, ty, seq) index,
        however many children there are (discovery and quotas walk trees with it)."""

    @abstractmethod
    async def count_children(self, pi: str, resource_type: int) -> int: ...

    @abstractmethod
    async def descendants(
        self, path: str, types: Iterable[int] | None = None, max_depth: int | None = None
    ) -> list[Resource]:
        """Everything below `path` (not itself), up to `max_depth` levels, in creation order."""

    @abstractmethod
    async def instances(
        self, pi: str, *, newest: bool, limit: int, resource_type: int = 4
    ) -> list[Resource]:
        """Instances (contentInstances, or `resource_type`: timeSeriesInstances) of a
        container from the newest or the oldest end, in creation order."""

    @abstractmethod
    async def find_child(
        self, pi: str, resource_type: int, attribute: str, value: str
    ) -> Resource | None:
        """A direct child of one type whose string attribute has this value (a
        timeSeriesInstance's dgt), or None. Reads the parent's children of that type."""

    @abstractmethod
    async def created_since(self, seq: int, resource_type: int, limit: int) -> list[Resource]:
        """Resources of one type whose sequence number is above `seq`, in creation order."""

    @abstractmethod
    async def last_seq(self) -> int:
        """The highest sequence number handed out so far (0 for a new database). Sequence
        numbers only grow: one is never handed out again, even after its resource is gone."""

    @abstractmethod
    async def expired(self, now: str, limit: int) -> list[Resource]:
        """Resources whose et is before `now` (a oneM2M timestamp), soonest first."""

    @abstractmethod
    async def queued_notifications(self, limit: int) -> list[QueuedNotification]:
        """The outbox, oldest first."""

    @abstractmethod
    async def recorded_request(self, key: str) -> str | None:
        """The resource a remembered CREATE made, for answering a redelivered request."""

    @abstractmethod
    async def apply(self, changes: Sequence[Change]) -> None:
        """Apply all changes atomically; they are visible at once, durable after sync()."""

    @abstractmethod
    async def sync(self) -> None:
        """Return when every change applied so far is durable; raise if one was lost. (A
        backend whose commits can fail alone, PostgreSQL's, answers for the batches the
        calling task applied, or for all if it applied none.)"""

    # ---- several processes on one database (defaults: this process is the only one) ------

    async def id_stem(self) -> str | None:
        """8 hex digits no other process on this database uses in resource IDs, or None to let
        the CSE pick a random stem (cse/core/context.py)."""
        return None

    async def notification_id_floor(self) -> int:
        """Outbox IDs this process hands out lie above this number (and no other process on
        the database hands them out): 0 where one process writes the outbox."""
        return 0

    async def claim_notifications(self, limit: int) -> list[QueuedNotification]:
        """Outbox entries a process that has stopped (its lease ran out) was to deliver: from
        now on this process's. Nothing, where no other process writes the outbox."""
        return []

    async def claim_handed_off(
        self, schemes: Sequence[str], limit: int
    ) -> list[QueuedNotification]:
        """Outbox entries another process handed off whose target's URL scheme is one of
        `schemes` (this process can send there): from now on this process's."""
        return []

    async def lead(self, role: str) -> bool:
        """Whether this process is the one that does `role` (the expiry sweep) now: one
        process at a time on a shared database; always this one otherwise."""
        return True

    def watch_others(self, listener: Callable[[ChangedElsewhere], None]) -> None:  # noqa: B027
        """Call `listener` with what other processes change in the database, soon after they
        commit it. Nothing to tell where no other process writes."""
