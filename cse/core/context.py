"""What an operation needs from the CSE, and nothing more.

Operations (create, retrieve, update, delete, discovery), resource type rules, the notifier,
quotas and the expiry sweeper depend on this small `Context`, never on the entry point: the
storage, the settings, the clock, resource IDs, lookup, durability, access control, the
egress policy, the notifier, and the lock under which changes are decided and applied.

`CommonServicesEntity` (cse/core/handler.py) is a `Context` that also receives requests; the
only way back into it is `dispatch`, for a group's fan-out to its members.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from cse.core.addressing import Address, parse_address
from cse.core.clock import Clock, format_timestamp
from cse.core.config import CSESettings
from cse.core.errors import M2MError, NotFound
from cse.core.groups import GroupMemberships
from cse.core.primitives import Request, Response
from cse.core.types import ContentStatus, ResponseStatusCode
from cse.storage.base import Change, Resource, Storage, StorageError, WriteConflict
from cse.supervision import Supervisor

if TYPE_CHECKING:
    from cse.core.access import AccessControl
    from cse.core.egress import EgressPolicy
    from cse.core.limits import Quotas
    from cse.core.missing_data import MissingDataMonitor
    from cse.core.nonblocking import NonBlockingRequests
    from cse.core.notifications import Notifier
    from cse.core.polling import PollingChannels

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
# How often a request is decided again when another worker keeps changing its data (a shared
# database), and the longest pause between two tries.
_MAX_DECISIONS = 20
_MAX_CONFLICT_PAUSE = 0.05


class Context:
    """The CSE's state and helpers as operations see them."""

    storage: Storage
    settings: CSESettings
    clock: Clock
    supervisor: Supervisor
    access: AccessControl
    egress: EgressPolicy
    quotas: Quotas
    notifier: Notifier
    polling: PollingChannels  # requests waiting in pollingChannels, and the polls
    requests: NonBlockingRequests  # non-blocking requests running in the background
    missing_data: MissingDataMonitor  # of timeSeries (cse/core/missing_data.py)
    # Decide-and-apply sections of writes run one at a time; acknowledgement (waiting for the
    # commit) happens outside the lock so many writes share one fsync. It orders this
    # process's writes: each decision reads what the ones before it applied. With several
    # processes on one database (cse/storage/postgres.py) it says nothing about the others:
    # the database refuses a decision made on data another process changed meanwhile
    # (WriteConflict), and `retrying` decides it again.
    write_lock: asyncio.Lock
    # Called with every batch of changes once it is durable (the gateway's uplink listens
    # here); a listener must be quick and must not raise.
    durable_listeners: list[Callable[[Sequence[Change]], None]]
    # Which groups name which resources, so deletions keep mid exact (cse/core/groups.py).
    memberships: GroupMemberships

    def __init__(self, storage: Storage, settings: CSESettings, clock: Clock) -> None:
        self.storage = storage
        self.settings = settings
        self.clock = clock
        self.supervisor = Supervisor()
        self.write_lock = asyncio.Lock()
        self.durable_listeners = []
        self.memberships = GroupMemberships()
        self._id_stem = os.urandom(4).hex()
        self._id_counter = 0
        self.write_conflicts = 0  # decisions made again because another process wrote first
        # The storage gave this process an ID stem no other uses (use_id_stem): an ID made here
        # is new to the database, and so is a name made of it.
        self.ids_are_unique = False

    async def dispatch(self, request: Request) -> Response:
        """Serve a request built inside the CSE (a group's fan-out to a member)."""
        raise NotImplementedError

    def timestamp(self, offset: float = 0.0) -> str:
        return format_timestamp(self.clock.now() + offset)

    @property
    def id_stem(self) -> str:
        return self._id_stem

    def use_id_stem(self, stem: str) -> None:
        """Resource IDs from now on use `stem`, which no other process on the database uses."""
        self._id_stem = stem
        self.ids_are_unique = True

    async def retrying(self, decide: Callable[[], Awaitable[_T]]) -> _T:
        """Run `decide` (it decides changes and applies them) again, on fresh data, while the
        storage says another process changed that data first (WriteConflict); give up with a
        StorageError (5000) after _MAX_DECISIONS tries."""
        attempt = 0
        while True:
            try:
                return await decide()
            except WriteConflict as conflict:
                attempt += 1
                self.write_conflicts += 1
                if attempt >= _MAX_DECISIONS:
                    raise StorageError(f"{attempt} tries, each in conflict: {conflict}") from None
                logger.debug("decided again (%d): %s", attempt, conflict)
                if conflict.settled is not None:
                    await conflict.settled()
                if conflict.retry_after:
                    # Rows another process holds until its commit: wait about that long,
                    # longer each time, at random so two processes do not meet again.
                    pause = min(conflict.retry_after * 2**attempt, _MAX_CONFLICT_PAUSE)
                    await asyncio.sleep(pause * random.uniform(0.5, 1.5))

    def new_resource_id(self, prefix: str) -> str:
        # A random per-process stem plus a zero-padded counter: unique across restarts, no
        # syscall each, and increasing, so new keys land at the end of SQLite's indexes
        # instead of on random pages (random IDs slowed inserts as a container grew).
        self._id_counter += 1
        return f"{prefix}{self._id_stem}{self._id_counter:08x}"

    async def durable(self, changes: Sequence[Change]) -> None:
        """Wait until applied changes are on disk, then release their notifications."""
        await self.storage.sync()
        self.notifier.accept(changes)
        for listener in self.durable_listeners:
            try:
                listener(changes)
            except Exception:
                logger.exception("a durable-changes listener failed")

    def is_expired(self, resource: Resource) -> bool:
        et = resource.et
        return et is not None and et < self.timestamp()

    async def lookup(self, address: Address) -> Resource:
        if address.path is not None:
            resource = await self.storage.get_by_path(address.path)
        else:
            assert address.ri is not None
            resource = await self.storage.get(address.ri)
        if resource is None or self.is_expired(resource):
            raise NotFound(f"resource {address.path or address.ri} does not exist")
        return resource

    async def find(self, target_id: str) -> Resource | None:
        """Resolve an ID as found in attributes (mid, acpi, nu): any form, local only."""
        try:
            address = parse_address(
                target_id,
                cse_id=self.settings.cse_id,
                cse_name=self.settings.cse_name,
                sp_id=self.settings.sp_id,
            )
        except M2MError:
            return None
        if address.remote_cse is not None or address.virtual is not None:
            return None
        try:
            return await self.lookup(address)
        except NotFound:
            return None

    def response(
        self,
        request: Request,
        status: ResponseStatusCode,
        content: Any = None,
        location: str | None = None,
        *,
        content_status: ContentStatus | None = None,
        content_offset: int | None = None,
    ) -> Response:
        return Response(
            status=status,
            request_id=request.request_id,
            release_version=request.release_version,
            content=content,
            originator=self.settings.cse_id,
            location=location,
            content_status=content_status,
            content_offset=content_offset,
        )
