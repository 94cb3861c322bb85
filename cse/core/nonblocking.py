"""Non-blocking requests (TS-0001 8.2.2, TS-0004 7.3.x): response types 1 and 2.

A request with rt 1 (nonBlockingRequestSynch) or 2 (nonBlockingRequestAsynch) is answered at
once: 1001 or 1002 (1000 to a Release 2 originator, which knows no other), with the ID of a
<request> resource (cse/core/resources/request.py) made under the CSEBase for its originator.
The operation then runs in the background, under the CSE's supervisor, and its outcome is
written into the <request>: its request status (rs) and operation result (ors). With rt 2 the
outcome is also sent, as a NOTIFY carrying `m2m:rsp`, to the rtu targets or else to the
originator, through the durable outbox like any notification (the egress policy judges each
send, the pollingChannel of an unreachable AE carries it).

Operations running in the background, per originator and in all, and the <request>
resources kept are bounded (`CSELimits.max_pending_requests*`, `max_request_resources`); a
<request> expires after `request_lifetime` (ACME: 60 s), or at its request's rqet.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cse.core import subscription_targets
from cse.core.clock import format_timestamp, seconds_until
from cse.core.errors import (
    BadRequest,
    NotAcceptable,
    OriginatorHasNoPrivilege,
    SubscriptionVerificationFailed,
)
from cse.core.limits import Limit
from cse.core.primitives import Request, Response
from cse.core.types import RequestStatus, ResponseType
from cse.core.types import ResourceType as T
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.base import Change, Put, Resource

if TYPE_CHECKING:
    from cse.core.context import Context

logger = logging.getLogger(__name__)

NON_BLOCKING = frozenset(
    {ResponseType.NON_BLOCKING_REQUEST_SYNCH, ResponseType.NON_BLOCKING_REQUEST_ASYNCH}
)
_ACCEPTED = {
    ResponseType.NON_BLOCKING_REQUEST_SYNCH: RSC.ACCEPTED_NON_BLOCKING_REQUEST_SYNCH,
    ResponseType.NON_BLOCKING_REQUEST_ASYNCH: RSC.ACCEPTED_NON_BLOCKING_REQUEST_ASYNCH,
}
# Releases before 3 know 1000 ACCEPTED only.
_RELEASE_2 = frozenset({"2", "2a"})
# Each rtu target is sent the result: one request must not make the CSE send to many.
MAX_RESPONSE_TARGETS = 8


@dataclass(eq=False, slots=True)
class _Job:
    """One non-blocking request: what it was, its <request>, and how to serve it."""

    request: Request
    originator: str
    resource_id: str
    run: Callable[[], Awaitable[Response]]
    response: Response | None = None


class NonBlockingRequests:
    """The non-blocking requests of one CSE: accepting them, serving them, the counts."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._pending: Counter[str] = Counter()  # operations running, per originator
        self.pending = 0  # operations running in all
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate` holds, checked whenever a request starts or ends."""
        while not predicate():
            await self._changed.wait()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def accept(
        self, request: Request, originator: str, run: Callable[[], Awaitable[Response]]
    ) -> Response:
        """Make the <request>, start `run` (the blocking operation, which never raises) in
        the background, and answer with the <request>'s ID."""
        ctx = self._ctx
        if not originator:
            raise BadRequest("a non-blocking request needs an originator to own its <request>")
        if len(request.response_targets) > MAX_RESPONSE_TARGETS:
            raise BadRequest(f"rtu may name at most {MAX_RESPONSE_TARGETS} targets")
        for target in request.response_targets:
            await _check_target(ctx, originator, target)
        self._reserve(originator)
        try:
            resource = await self._create(request, originator)
        except BaseException:
            self._release(originator)
            raise
        job = _Job(request, originator, resource.ri, run)
        task = ctx.supervisor.start(
            "non-blocking request", functools.partial(self._serve, job), forever=False
        )
        task.add_done_callback(lambda _: self._release(originator))
        rt = ResponseType(request.response_type or 0)
        status = RSC.ACCEPTED if request.release_version in _RELEASE_2 else _ACCEPTED[rt]
        return ctx.response(request, status, {"m2m:uri": resource.ri}, location=resource.path)

    # ---- bounds ------------------------------------------------------------------------------

    def _reserve(self, originator: str) -> None:
        ctx = self._ctx
        limits = ctx.settings.limits
        if not ctx.quotas.is_exempt(originator):
            refusal = None
            most = limits.max_pending_requests_per_originator
            if most is not None and self._pending[originator] >= most:
                refusal = f"{originator} already has {most} non-blocking requests running"
            elif (total := limits.max_pending_requests) is not None and self.pending >= total:
                refusal = f"{total} non-blocking requests are running on this CSE"
            if refusal is not None:
                raise ctx.quotas.counters.refusal(Limit.PENDING_REQUESTS, NotAcceptable(refusal))
        self._pending[originator] += 1
        self.pending += 1
        self._signal()

    def _release(self, originator: str) -> None:
        self._pending[originator] -= 1
        if self._pending[originator] <= 0:
            del self._pending[originator]
        self.pending -= 1
        self._signal()

    async def _check_kept(self, originator: str) -> None:
        ctx = self._ctx
        most = ctx.settings.limits.max_request_resources
        if most is None or ctx.quotas.is_exempt(originator):
            return
        if await ctx.storage.count_children(ctx.settings.cse_ri, T.REQUEST) >= most:
            refusal = NotAcceptable(f"this CSE keeps its maximum of {most} <request> resources")
            raise ctx.quotas.counters.refusal(Limit.REQUEST_RESOURCES, refusal)

    # ---- the <request> resource --------------------------------------------------------------

    async def _create(self, request: Request, originator: str) -> Resource:
        ctx = self._ctx
        async with ctx.write_lock:
            await self._check_kept(originator)
            base = await ctx.storage.get(ctx.settings.cse_ri)
            assert base is not None  # made at start, never deleted
            attributes = self._attributes(request, originator)
            resource = Resource(attributes, f"{base.path}/{attributes['rn']}", originator)
            changes: list[Change] = [Put(resource)]
            changes.extend(await ctx.notifier.on_child_created(base, resource))
            await ctx.storage.apply(changes)
        await ctx.durable(changes)
        return resource

    def _attributes(self, request: Request, originator: str) -> dict[str, Any]:
        ctx = self._ctx
        resource_id = ctx.new_resource_id("req")
        now = ctx.timestamp()
        response_type: dict[str, Any] = {"rtv": request.response_type}
        if request.response_targets:
            response_type["nu"] = list(request.response_targets)
        meta = {
            "ty": None if request.resource_type is None else int(request.resource_type),
            "ot": request.originating_timestamp or now,
            "rqet": request.request_expiration,
            "rt": response_type,
            "rcn": None if request.result_content is None else int(request.result_content),
            "drt": request.discovery_result_type,
            "rvi": request.release_version,
            "vsi": request.vendor_information,
        }
        attributes: dict[str, Any] = {
            "ty": int(T.REQUEST),
            "ri": resource_id,
            "rn": resource_id,
            "pi": ctx.settings.cse_ri,
            "ct": now,
            "lt": now,
            "et": self._expiration(request),
            "op": int(request.operation),
            "tg": request.to,
            "org": originator,
            "rid": request.request_id,
            "mi": {name: value for name, value in meta.items() if value is not None},
            "rs": int(RequestStatus.PENDING),
        }
        if request.content is not None:
            attributes["pc"] = request.content
        return attributes

    def _expiration(self, request: Request) -> str:
        """ACME's rule: the request's rqet, else `request_lifetime` from now; never beyond
        `max_request_lifetime`."""
        settings = self._ctx.settings
        now = self._ctx.clock.now()
        lifetime = settings.request_lifetime
        if request.request_expiration is not None:
            lifetime = seconds_until(request.request_expiration, now)
        return format_timestamp(now + min(lifetime, settings.max_request_lifetime))

    # ---- the operation in the background ------------------------------------------------------

    async def _serve(self, job: _Job) -> None:
        # Run once: a failure to record the outcome (a full disk) is retried by the
        # supervisor without serving the request a second time.
        if job.response is None:
            job.response = await job.run()
        await self._record(job, job.response)

    async def _record(self, job: _Job, response: Response) -> None:
        ctx = self._ctx
        result = self._operation_result(job, response)
        changes: list[Change] = []
        async with ctx.write_lock:
            current = await ctx.storage.get(job.resource_id)
            if current is not None and not ctx.is_expired(current):
                status = (
                    RequestStatus.COMPLETED if response.status.is_success else RequestStatus.FAILED
                )
                values = {"rs": int(status), "ors": result, "lt": ctx.timestamp()}
                updated = current.with_attributes(**values)
                changes.append(Put(updated))
                changes.extend(await ctx.notifier.on_updated(updated, values))
            if job.request.response_type == ResponseType.NON_BLOCKING_REQUEST_ASYNCH:
                changes.extend(await self._result_notifications(job, result))
            if not changes:
                return  # rt 1 and the <request> is gone: nobody to tell
            await ctx.storage.apply(changes)
        await ctx.durable(changes)

    def _operation_result(self, job: _Job, response: Response) -> dict[str, Any]:
        """ors (m2m:operationResult): the response the originator would have had."""
        result: dict[str, Any] = {
            "rsc": int(response.status),
            "rqi": job.request.request_id,
            "to": job.originator,
            "fr": self._ctx.settings.cse_id,
            "ot": self._ctx.timestamp(),
        }
        if response.content is not None:
            result["pc"] = response.content
        return result

    async def _result_notifications(self, job: _Job, result: dict[str, Any]) -> list[Change]:
        """rt 2: the outcome as m2m:rsp to the rtu targets, or to the originator itself."""
        content = {"m2m:rsp": {**result, "rvi": job.request.release_version or "3"}}
        targets = list(job.request.response_targets) or [_entity_id(job.originator)]
        return await self._ctx.notifier.entries(job.resource_id, content, targets)

    # ---- after a restart -----------------------------------------------------------------------

    async def recover(self) -> None:
        """<request>s still pending were being served when the CSE stopped: nobody will finish
        them, and whether their operation took place is unknown. Say so (rs failed, 5000).

        Not on a database other processes share: theirs may be running (docs/scale-out.md)."""
        ctx = self._ctx
        if ctx.storage.shared:
            return
        stopped = [
            resource
            for resource in await ctx.storage.children(ctx.settings.cse_ri, [T.REQUEST])
            if resource.attributes.get("rs") == RequestStatus.PENDING
        ]
        if not stopped:
            return
        changes: list[Change] = []
        for resource in stopped:
            result = {
                "rsc": int(RSC.INTERNAL_SERVER_ERROR),
                "rqi": resource.attributes.get("rid"),
                "to": resource.owner,
                "fr": ctx.settings.cse_id,
                "pc": {"m2m:dbg": "the CSE stopped while serving the request: outcome unknown"},
            }
            updated = resource.with_attributes(rs=int(RequestStatus.FAILED), ors=result)
            changes.append(Put(updated))
        await ctx.storage.apply(changes)
        await ctx.storage.sync()
        logger.warning("%d non-blocking requests were cut short by the last stop", len(stopped))


def _entity_id(originator: str) -> str:
    """What the notifier resolves to an entity: an AE-ID as it is, a CSE-ID (/id-mn) as the
    ID of its remoteCSE (id-mn)."""
    if originator.startswith("/") and originator.count("/") == 1:
        return originator[1:]
    return originator


async def _check_target(ctx: Context, originator: str, target: str) -> None:
    """An rtu target the egress policy refuses fails the request before anything runs: the
    originator may not make the CSE send there (4103, as for a point of access)."""
    if not target:
        raise BadRequest("rtu holds an empty notification target")
    try:
        await subscription_targets.check_target(ctx, originator, target)
    except SubscriptionVerificationFailed as refusal:
        raise OriginatorHasNoPrivilege(refusal.message) from None
