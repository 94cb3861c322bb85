"""Polling channels: requests for an entity nobody can connect to, held until it asks.

An AE (or a CSE) behind NAT, asleep, or with `rr` false makes a <pollingChannel>
(cse/core/resources/polling_channel.py) and long-polls its virtual child `pcu` with RETRIEVE
(TS-0001 10.2.5.12, TS-0004 7.4.21). Each answer carries the next request queued for it, whole,
as `m2m:rqp`; the entity sends its response back as a NOTIFY to `pcu` carrying `m2m:rsp`,
which ends that request's wait. A poll that finds nothing within its request expiration (or
`polling_timeout` without one, at most `max_polling_timeout`) is answered 4008
REQUEST_TIMEOUT, as ACME does.

Requests reach a channel through the notifier's `pcu://<channel>` sender, which the notifier
picks for an entity with a channel and no reachable point of access (notifications, NOTIFYs
relayed to an AE). A request waits only as long as its sender waits for the answer (the
notification timeout): channels are in memory, and the durable outbox sends again after a
restart. Whoever may notify an AE fills its channel, so the requests waiting in one channel
and in all, and the polls waiting on one channel and on all, are bounded
(`CSELimits.max_channel_requests*`, `max_polls*`), for every originator alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cse.core.addressing import Address
from cse.core.clock import seconds_until
from cse.core.errors import (
    BadRequest,
    DeliveryError,
    NotAcceptable,
    NotFound,
    OriginatorHasNoPrivilege,
    RequestTimeout,
)
from cse.core.limits import Limit
from cse.core.primitives import Request, Response
from cse.core.types import ResourceType as T
from cse.core.types import ResponseStatusCode
from cse.storage.base import Resource

if TYPE_CHECKING:
    from cse.core.context import Context

logger = logging.getLogger(__name__)

# The notifier's scheme for "deliver through this channel" (never a stored point of access).
POLLING_SCHEME = "pcu"


def channel_url(channel: Resource) -> str:
    return f"{POLLING_SCHEME}://{channel.ri}"


class _Waiting:
    """A request in a channel: queued until the owner takes it, answered by its response."""

    __slots__ = ("answer", "primitive")

    def __init__(self, primitive: dict[str, Any]) -> None:
        self.primitive = primitive
        self.answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()


class _Channel:
    __slots__ = ("_arrived", "outstanding", "polls", "queue")

    def __init__(self) -> None:
        self.queue: deque[_Waiting] = deque()  # not taken yet, oldest first
        self.outstanding: dict[str, _Waiting] = {}  # queued or taken, by request ID
        self.polls = 0
        self._arrived = asyncio.Event()

    def arrival(self) -> asyncio.Event:
        return self._arrived

    def wake(self) -> None:
        self._arrived.set()
        self._arrived = asyncio.Event()

    @property
    def idle(self) -> bool:
        return not self.outstanding and not self.polls


class PollingChannels:
    """The requests waiting in every channel (by the channel's resource ID), and the polls."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._channels: dict[str, _Channel] = {}
        self.requests = 0  # waiting in all channels, queued or taken
        self.polls = 0  # polls waiting on all channels
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until the channels' state satisfies `predicate` (woken on every change)."""
        while not predicate():
            await self._changed.wait()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _channel(self, channel_id: str) -> _Channel:
        channel = self._channels.get(channel_id)
        if channel is None:
            channel = self._channels[channel_id] = _Channel()
        return channel

    def _forget_if_idle(self, channel_id: str, channel: _Channel) -> None:
        if channel.idle and self._channels.get(channel_id) is channel:
            del self._channels[channel_id]
        self._signal()

    async def channel_of(self, entity: Resource) -> Resource | None:
        """The pollingChannel of an AE or remoteCSE, if it made one."""
        for channel in await self._ctx.storage.children(entity.ri, [T.POLLING_CHANNEL]):
            if not self._ctx.is_expired(channel):
                return channel
        return None

    # ---- the CSE's side: a request for the owner, and its answer -----------------------------

    async def request(self, channel_id: str, primitive: dict[str, Any]) -> dict[str, Any]:
        """Queue `primitive` for the channel's owner and wait for its response primitive.
        Cancelling the wait withdraws the request; a full channel raises DeliveryError."""
        channel = self._channel(channel_id)
        request_id = str(primitive.get("rqi", ""))
        try:
            self._check_room(channel_id, channel, request_id)
        except DeliveryError:
            self._forget_if_idle(channel_id, channel)
            raise
        waiting = _Waiting(primitive)
        channel.outstanding[request_id] = waiting
        channel.queue.append(waiting)
        self.requests += 1
        channel.wake()
        self._signal()
        try:
            return await waiting.answer
        finally:
            del channel.outstanding[request_id]
            with contextlib.suppress(ValueError):
                channel.queue.remove(waiting)  # never taken
            self.requests -= 1
            self._forget_if_idle(channel_id, channel)

    def _check_room(self, channel_id: str, channel: _Channel, request_id: str) -> None:
        limits = self._ctx.settings.limits
        if request_id in channel.outstanding:
            raise DeliveryError(f"channel {channel_id} already holds request {request_id}")
        refusal = None
        if (most := limits.max_channel_requests) is not None and len(channel.outstanding) >= most:
            refusal = f"channel {channel_id} already holds its maximum of {most} requests"
        elif (total := limits.max_channel_requests_total) is not None and self.requests >= total:
            refusal = f"the polling channels hold their maximum of {total} requests"
        if refusal is not None:
            self._ctx.quotas.counters.refusal(Limit.CHANNEL_REQUESTS, NotAcceptable(refusal))
            raise DeliveryError(refusal)

    def respond(self, channel_id: str, response: dict[str, Any]) -> bool:
        """The owner's response to a request it took; False if none waits for it."""
        channel = self._channels.get(channel_id)
        waiting = channel.outstanding.get(str(response["rqi"])) if channel else None
        if waiting is None or waiting.answer.done():
            return False
        waiting.answer.set_result(response)
        return True

    # ---- the owner's side: a long poll ---------------------------------------------------------

    async def take(self, channel_id: str, timeout: float) -> dict[str, Any]:
        """The next request for the channel's owner, waiting up to `timeout` seconds."""
        channel = self._channel(channel_id)
        if not channel.queue:
            try:
                self._check_polls(channel_id, channel)
            except NotAcceptable:
                self._forget_if_idle(channel_id, channel)
                raise
            channel.polls += 1
            self.polls += 1
            self._signal()
            try:
                async with asyncio.timeout(max(timeout, 0.0)):
                    while not channel.queue:
                        await channel.arrival().wait()
            except TimeoutError:
                raise RequestTimeout(f"no request arrived for channel {channel_id}") from None
            finally:
                channel.polls -= 1
                self.polls -= 1
                self._forget_if_idle(channel_id, channel)
        return channel.queue.popleft().primitive

    def _check_polls(self, channel_id: str, channel: _Channel) -> None:
        limits = self._ctx.settings.limits
        refusal = None
        if (most := limits.max_polls_per_channel) is not None and channel.polls >= most:
            refusal = f"channel {channel_id} already has {most} polls waiting"
        elif (total := limits.max_polls_total) is not None and self.polls >= total:
            refusal = f"{total} polls are waiting on this CSE's channels"
        if refusal is not None:
            raise self._ctx.quotas.counters.refusal(Limit.POLLS, NotAcceptable(refusal))


class PollingChannelSender:
    """The notifier's sender for `pcu://<channel>`: the request waits in the channel, and the
    owner's response status is the answer."""

    def __init__(self, channels: PollingChannels) -> None:
        self._channels = channels

    async def send(self, url: str, primitive: dict[str, Any]) -> int:
        channel_id = url.split("://", 1)[1]
        response = await self._channels.request(channel_id, primitive)
        return int(response["rsc"])


# ---- requests to <pollingChannel>/pcu -----------------------------------------------------------


async def _owned_channel(ctx: Context, originator: str, address: Address) -> Resource:
    channel = await ctx.lookup(Address(path=address.path, ri=address.ri))
    if channel.ty != T.POLLING_CHANNEL:
        raise NotFound(f"{channel.path} has no pcu")
    # The channel's requests are its owner's alone: nobody else (not even the admin) may take
    # them or answer them (ACME grants the parent's originator only, as TS-0001 9.6.21 says).
    if originator != channel.owner:
        raise OriginatorHasNoPrivilege(f"only {channel.owner} may use {channel.path}/pcu")
    return channel


def poll_timeout(ctx: Context, request: Request) -> float:
    settings = ctx.settings
    if request.request_expiration is None:
        return settings.polling_timeout
    left = seconds_until(request.request_expiration, ctx.clock.now())
    return min(left, settings.max_polling_timeout)


async def poll(ctx: Context, request: Request, originator: str, address: Address) -> Response:
    """RETRIEVE of pcu: the next request for the owner, as a request primitive."""
    channel = await _owned_channel(ctx, originator, address)
    primitive = await ctx.polling.take(channel.ri, poll_timeout(ctx, request))
    return ctx.response(request, ResponseStatusCode.OK, {"m2m:rqp": primitive})


async def answer(ctx: Context, request: Request, originator: str, address: Address) -> Response:
    """NOTIFY to pcu: the owner's response (m2m:rsp) to a request it took from the channel."""
    channel = await _owned_channel(ctx, originator, address)
    content = request.content
    response = content.get("m2m:rsp") if isinstance(content, dict) else None
    if not isinstance(response, dict):
        raise BadRequest("a NOTIFY to pcu must carry a response primitive (m2m:rsp)")
    status = response.get("rsc")
    if not isinstance(status, int) or isinstance(status, bool) or not 1000 <= status < 7000:
        raise BadRequest("m2m:rsp must carry a response status code (rsc)")
    if not isinstance(response.get("rqi"), str | int):
        raise BadRequest("m2m:rsp must carry the request identifier (rqi) it answers")
    if not ctx.polling.respond(channel.ri, response):
        # ACME accepts a late or unknown response too; nobody waits for it any more.
        logger.info("%s answered request %s, which no longer waits", originator, response["rqi"])
    return ctx.response(request, ResponseStatusCode.OK)
