"""The transport-free core: a request primitive goes in, a response primitive comes out.

`CommonServicesEntity.handle()` checks what every request must carry, finds the target and
hands over to one function per operation. Every M2MError becomes a response here and only
here; anything else is logged and answered with 5000, never propagated to a binding.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from cse.core import create, delete, discovery, notify, retrieve, update
from cse.core.access import AccessControl
from cse.core.addressing import Address, normalize_originator, parse_address
from cse.core.clock import Clock, SystemClock, parse_timestamp
from cse.core.config import CSESettings
from cse.core.context import Context
from cse.core.egress import EgressPolicy
from cse.core.errors import (
    BadRequest,
    M2MError,
    NotFound,
    OriginatorHasNoPrivilege,
    ReleaseVersionNotSupported,
    RequestTimeout,
    TargetNotReachable,
)
from cse.core.expiry import ExpirySweeper
from cse.core.identity import Role, may_speak_as
from cse.core.limits import Quotas
from cse.core.missing_data import MissingDataMonitor
from cse.core.nonblocking import NON_BLOCKING, NonBlockingRequests
from cse.core.notifications import Notifier, Sender
from cse.core.polling import POLLING_SCHEME, PollingChannels, PollingChannelSender
from cse.core.primitives import Request, Response, error_content
from cse.core.registry import SPECS
from cse.core.types import Operation, ResponseStatusCode, ResponseType
from cse.core.types import ResourceType as T
from cse.storage.base import ChangedElsewhere, Put, Resource, Storage, StorageError

logger = logging.getLogger(__name__)

# Following another worker's changes waits this long (doubling) for an unreachable database.
_FOLLOW_RETRY_MIN = 0.2
_FOLLOW_RETRY_MAX = 5.0


class Forwarder:
    """Sends a request to another CSE (retargeting); bindings or the gateway provide one."""

    async def forward(self, remote_cse: Resource, request: Request) -> Response:
        raise TargetNotReachable(f"no route to {remote_cse.attributes.get('csi')}")


class CommonServicesEntity(Context):
    def __init__(
        self,
        storage: Storage,
        settings: CSESettings | None = None,
        *,
        clock: Clock | None = None,
        senders: dict[str, Sender] | None = None,
        forwarder: Forwarder | None = None,
        egress: EgressPolicy | None = None,
    ) -> None:
        super().__init__(storage, settings or CSESettings(), clock or SystemClock())
        # Shared with the bindings' clients, which check every send against it.
        self.egress = egress or EgressPolicy(
            self.settings.egress, remote_cses=self.settings.remote_cses
        )
        self.access = AccessControl(storage, self.settings, self.clock)
        # Entities nobody can connect to are reached through their pollingChannel: a sender
        # inside this process, which no request can name as a point of access.
        self.polling = PollingChannels(self)
        self.egress.serve_locally(POLLING_SCHEME)
        polling_sender = {POLLING_SCHEME: PollingChannelSender(self.polling)}
        self.notifier = Notifier(self, {**(senders or {}), **polling_sender})
        self.requests = NonBlockingRequests(self)
        self.forwarder = forwarder or Forwarder()
        self.expiry = ExpirySweeper(self)
        self.missing_data = MissingDataMonitor(self)
        self.quotas = Quotas(self)
        # Refusals per limit and discovery's reading, for metrics (gateway/metrics.py).
        self.counters = self.quotas.counters
        self._started = False

    # ---- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.storage.open(self.supervisor)
        try:
            stem = await self.storage.id_stem()
            if stem is not None:
                self.use_id_stem(stem)
            self.storage.watch_others(self._changed_elsewhere)
            await self.retrying(self._ensure_cse_base)
            await self.memberships.load(self.storage)
            await self.requests.recover()
            await self.notifier.start()
        except BaseException:
            await self.storage.close()
            raise
        self.expiry.start()
        self.missing_data.start()
        self._started = True

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self.expiry.stop()
        await self.missing_data.stop()
        await self.notifier.stop()
        await self.storage.close()
        await self.supervisor.stop()

    async def __aenter__(self) -> CommonServicesEntity:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _ensure_cse_base(self) -> None:
        settings = self.settings
        existing = await self.storage.get(settings.cse_ri)
        now = self.timestamp()
        attributes: dict[str, Any] = {
            "ty": int(T.CSE_BASE),
            "ri": settings.cse_ri,
            "rn": settings.cse_name,
            "pi": "",
            "ct": existing.attributes["ct"] if existing else now,
            "lt": now,
            "cst": settings.cse_type,
            "csi": settings.cse_id,
            "srt": sorted(int(t) for t in SPECS),
            "poa": list(settings.points_of_access),
            "srv": sorted(settings.release_versions - {"2"}),
            "csz": [f"application/{name}" for name in settings.supported_serializations],
            "acpi": existing.attributes.get("acpi", []) if existing else [],
        }
        if existing is not None and existing.path != settings.cse_name:
            raise StorageError(
                f"database belongs to CSEBase {existing.path!r}, not {settings.cse_name!r}"
            )
        base = Resource(
            attributes,
            settings.cse_name,
            settings.admin_originator,
            existing.seq if existing else 0,
            existing.version if existing else 0,
        )
        await self.storage.apply([Put(base)])
        await self.storage.sync()

    def _changed_elsewhere(self, changed: ChangedElsewhere) -> None:
        """Another process on the database committed changes: what this one keeps in memory
        about subscriptions and groups follows (docs/scale-out.md)."""
        if changed.unknown or any(ty in (T.SUBSCRIPTION, T.GROUP) for _, ty in changed.put):
            self.supervisor.start(
                "changes of other workers", lambda: self._follow(changed), forever=False
            )

    async def _follow(self, changed: ChangedElsewhere) -> None:
        # The database may be down a while (restarting): this waits for it rather than
        # failing the task, and follows the change once it is back; nothing may be skipped.
        delay = _FOLLOW_RETRY_MIN
        while True:
            try:
                await self._follow_once(changed)
                return
            except StorageError as error:
                logger.info("following other workers' changes waits for the database: %s", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _FOLLOW_RETRY_MAX)

    async def _follow_once(self, changed: ChangedElsewhere) -> None:
        if changed.unknown:
            await self.memberships.load(self.storage)
            await self.notifier.note_all_subscriptions()
            return
        for ri, resource_type in changed.put:
            if resource_type not in (T.SUBSCRIPTION, T.GROUP):
                continue
            resource = await self.storage.get(ri)
            if resource is None:
                continue
            if resource_type == T.SUBSCRIPTION:
                self.notifier.note_subscription(resource)
            else:
                await self.memberships.add(self.storage, ri, resource.attributes.get("mid") or [])

    # ---- the entry point -----------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """Serve one request primitive; every failure becomes a response here."""
        return await self._answer(request, lambda: self._handle(request))

    async def _answer(self, request: Request, serve: Callable[[], Awaitable[Response]]) -> Response:
        """What `serve` answers, with every failure turned into a response."""
        try:
            return await serve()
        except M2MError as error:
            return self.error_response(request, error.status, error.message)
        except StorageError as error:
            # A failing disk fails every write until space returns: the storage logs the
            # start and the end of such a run, not each request in it.
            level = logging.DEBUG if self.storage.health.failing else logging.ERROR
            logger.log(level, "storage failure on %s: %s", request.request_id, error)
            return self.error_response(
                request, ResponseStatusCode.INTERNAL_SERVER_ERROR, "storage failure"
            )
        except Exception:
            logger.exception("unexpected failure handling request %s", request.request_id)
            return self.error_response(
                request, ResponseStatusCode.INTERNAL_SERVER_ERROR, "internal error"
            )

    async def dispatch(self, request: Request) -> Response:
        return await self.handle(request)

    def error_response(
        self, request: Request, status: ResponseStatusCode, message: str
    ) -> Response:
        return Response(
            status=status,
            request_id=request.request_id,
            release_version=request.release_version,
            content=error_content(message),
            originator=self.settings.cse_id,
        )

    async def _handle(self, request: Request) -> Response:
        settings = self.settings
        if not request.release_version:
            raise ReleaseVersionNotSupported(
                "release version (rvi) missing: release 1 is not supported; send 2a, 3, 4 or 5"
            )
        if request.release_version not in settings.release_versions:
            raise ReleaseVersionNotSupported(
                f"release version {request.release_version} is not supported"
            )
        if not request.request_id:
            raise BadRequest("request identifier (rqi) missing")
        if request.request_expiration is not None:
            self._check_expiration(request.request_expiration)
        if request.response_targets and (
            request.response_type != ResponseType.NON_BLOCKING_REQUEST_ASYNCH
        ):
            raise BadRequest("rt nu (rtu) is only allowed with rt 2 (nonBlockingRequestAsynch)")
        address = parse_address(
            request.to, cse_id=settings.cse_id, cse_name=settings.cse_name, sp_id=settings.sp_id
        )
        originator = await self._check_originator(request)
        self.quotas.check_request(request, originator)
        self.notifier.heard_from(originator)
        if request.response_type in NON_BLOCKING:
            # Served later as the blocking request it stands for (cse/core/nonblocking.py).
            blocking = replace(
                request, response_type=int(ResponseType.BLOCKING_REQUEST), response_targets=()
            )
            return await self.requests.accept(
                request,
                originator,
                lambda: self._answer(blocking, lambda: self._serve(blocking, originator, address)),
            )
        return await self._serve(request, originator, address)

    async def _serve(self, request: Request, originator: str, address: Address) -> Response:
        """The operation a checked request asks for, decided again if another process on the
        database changed what it was decided on (`Context.retrying`)."""
        return await self.retrying(lambda: self._operate(request, originator, address))

    async def _operate(self, request: Request, originator: str, address: Address) -> Response:
        if address.remote_cse is not None:
            return await self._forward(address, request)
        operation = request.operation
        if operation == Operation.CREATE:
            return await create.handle_create(self, request, originator, address)
        if operation == Operation.RETRIEVE:
            if request.filter_criteria is not None and request.filter_criteria.is_discovery:
                return await discovery.handle_discovery(self, request, originator, address)
            return await retrieve.handle_retrieve(self, request, originator, address)
        if operation == Operation.UPDATE:
            return await update.handle_update(self, request, originator, address)
        if operation == Operation.DELETE:
            return await delete.handle_delete(self, request, originator, address)
        if operation == Operation.NOTIFY:
            return await notify.handle_notify(self, request, originator, address)
        raise BadRequest(f"operation {operation} is not supported")

    def _check_expiration(self, value: str) -> None:
        now = self.clock.now()
        try:
            deadline = float(parse_timestamp(value)) if not value.lstrip("-").isdigit() else None
        except ValueError:
            raise BadRequest(f"request expiration {value!r} is not a timestamp") from None
        if deadline is not None and deadline < now:
            raise RequestTimeout("the request expired before it could be served")
        # A relative rqet (milliseconds) counts from arrival, so it cannot be late yet.

    async def _check_originator(self, request: Request) -> str:
        """Normalise the originator, make sure the request's principal may use it (its
        transport proved it), and that it is someone this CSE knows.

        An originator this CSE does not know (an AE that is not, or no longer, registered; a
        CSE that is not a remoteCSE here) gets 4103 ORIGINATOR_HAS_NO_PRIVILEGE, as from ACME,
        which never answers 4106: it has no privilege on anything here."""
        settings = self.settings
        principal = request.principal
        raw = request.originator or ""
        is_registration = request.operation == Operation.CREATE and request.resource_type in (
            T.AE,
            T.REMOTE_CSE,
        )
        if principal.role is Role.DEVICE and request.resource_type == T.AE and raw in ("", "C"):
            raw = principal.originator  # a provisioned meter registers under its own AE-ID
        if not raw:
            if is_registration and request.resource_type == T.AE:
                return ""
            raise BadRequest("originator (fr) missing")
        originator = normalize_originator(raw, settings.cse_id)
        privileged = self.access.is_privileged(originator)
        if not may_speak_as(principal, originator, privileged):
            logger.warning(
                "refused originator %s: not what %s proved (%s %s)",
                raw[:80],
                principal.via,
                principal.role.value,
                principal.name or "-",
            )
            raise OriginatorHasNoPrivilege(
                f"originator {raw[:80]} is not one the request's credentials allow"
            )
        if is_registration or privileged:
            return originator
        if originator.startswith("/"):
            csi = originator[1:].split("/", 1)[0]
            remote = await self.storage.get(csi)
            if remote is not None and remote.ty == T.REMOTE_CSE:
                return originator
            raise OriginatorHasNoPrivilege(f"originator {raw} is not a registered CSE")
        entity = await self.storage.get(originator)
        if entity is None or entity.ty != T.AE or self.is_expired(entity):
            raise OriginatorHasNoPrivilege(f"originator {raw} is not registered")
        return originator

    async def _forward(self, address: Address, request: Request) -> Response:
        assert address.remote_cse is not None
        remote = await self.storage.get(address.remote_cse.lstrip("/"))
        if remote is None or remote.ty != T.REMOTE_CSE:
            # An unknown CSE-ID is "not found" (TS-0004 7.3.2.6); a registered CSE that
            # cannot be reached is 5103 (the forwarder says so).
            raise NotFound(f"CSE {address.remote_cse} is not registered here")
        return await self.forwarder.forward(remote, request)
