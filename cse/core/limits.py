"""Quotas and rate limits: what one client may take of the CSE's disk, names and time.

Every check here is cheap (a dictionary lookup, an indexed count, or a walk that stops at the
limit) and refuses with a oneM2M status code: 4000 for a name, 5207 NOT_ACCEPTABLE for
storage and rate limits (docs/conformance.md says why), and counts the refusal in
`LimitCounters`, which the gateway exports to Prometheus. Privileged originators (the admin,
this CSE, the trusted ones) and registered CSEs are never limited: the head-end commanding
5,000 meters, or a gateway's uplink in an alarm storm, must not be throttled.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cse.core.errors import BadRequest, M2MError, NotAcceptable
from cse.core.primitives import Request
from cse.core.types import ResourceType as T
from cse.storage.base import Resource

if TYPE_CHECKING:
    from cse.core.context import Context

logger = logging.getLogger(__name__)

_NAME_CHARACTERS = re.compile(r"^[A-Za-z0-9\-._]+$")
# Names a resource cannot take: the virtual children (TS-0001 la/ol of a container, fopt of a
# group, pcu of a pollingChannel). The address parser reads them as virtual at any level, so a
# resource with one of these names could never be addressed by its structured path.
RESERVED_NAMES = frozenset({"la", "ol", "fopt", "pcu"})
# How many clients' token buckets are remembered; the least recently seen go first (and come
# back with a full bucket, which only errs on the generous side).
_MAX_TRACKED_CLIENTS = 65_536
# Instances are bounded per container (mni / mbs), not counted against their AE.
_INSTANCES = frozenset({T.CONTENT_INSTANCE, T.TIME_SERIES_INSTANCE})
# Discoveries walking the tree at once (cse/core/discovery.py says why).
_CONCURRENT_WALKS = 2


class Limit(enum.Enum):
    """One kind of refusal, as counted and exported (`limit` label of the metric)."""

    NAME = "name"
    NESTING = "nesting"
    RESOURCES_PER_AE = "resources_per_ae"
    AES = "aes"
    CONTAINER_CAP = "container_cap"
    SUBSCRIPTIONS = "subscriptions"
    POLICIES_UNDER_CSE_BASE = "policies_under_cse_base"
    REGISTRATIONS = "registrations"
    REGISTRATIONS_PER_SOURCE = "registrations_per_source"
    REQUEST_RATE = "request_rate"
    CHANNEL_REQUESTS = "channel_requests"
    POLLS = "polls"
    PENDING_REQUESTS = "pending_requests"
    REQUEST_RESOURCES = "request_resources"


@dataclass(slots=True)
class LimitCounters:
    """Counts since start: refusals per limit, and how discovery read the tree."""

    refused: dict[Limit, int] = field(default_factory=lambda: dict.fromkeys(Limit, 0))
    discovery_truncated: int = 0  # answers cut at the result cap or lim (cnst = partial)
    discovery_rows_read: int = 0  # resources discovery read from storage
    discovery_reads: int = 0  # storage calls discovery made (each at most one chunk)
    discovery_yields: int = 0  # times discovery let other requests run between chunks
    discovery_queued: int = 0  # discoveries that waited for another to finish its walk

    def refusal(self, limit: Limit, error: M2MError) -> M2MError:
        """Count a refusal and hand back the error to raise."""
        self.refused[limit] += 1
        logger.info("refused (%s limit): %s", limit.value, error.message)
        return error


class TokenBuckets:
    """A token bucket per key (a client), refilled at `rate` per second up to `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there will be."""
        tokens, last = self._buckets.pop(key, (self.burst, now))
        # Monotonic time; max() keeps a bucket whole against any reading out of order.
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate if self.rate > 0 else float("inf")
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > _MAX_TRACKED_CLIENTS:
            self._buckets.popitem(last=False)
        return wait


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def name_problem(name: str, max_length: int) -> str | None:
    """Why `name` cannot be a resource name (or AE-ID / CSE-ID that becomes one), or None."""
    if len(name) > max_length:
        return f"is {len(name)} characters long; at most {max_length} are allowed"
    if not _NAME_CHARACTERS.match(name):
        return "may hold only letters, digits, '-', '.' and '_'"
    if name in RESERVED_NAMES:
        return "is the name of a virtual resource"
    if name.strip(".") == "":
        return "is made of dots only, which paths read as this or the parent resource"
    if name.startswith("-"):
        return "starts with '-', which stands for the CSEBase in addresses"
    return None


class Quotas:
    """The limits of `cse.settings.limits`, checked for one request at a time."""

    def __init__(self, cse: Context) -> None:
        self._cse = cse
        self.counters = LimitCounters()
        self._buckets: dict[str, TokenBuckets] = {}
        self.discovery_walks = asyncio.Semaphore(_CONCURRENT_WALKS)

    def _bucket(self, name: str, rate: float, burst: float) -> TokenBuckets:
        # Made on first use, so settings replaced after start (the bound URLs) still count.
        buckets = self._buckets.get(name)
        if buckets is None or (buckets.rate, buckets.burst) != (rate, max(burst, 1.0)):
            buckets = self._buckets[name] = TokenBuckets(rate, burst)
        return buckets

    def is_exempt(self, originator: str) -> bool:
        return originator.startswith("/") or self._cse.access.is_privileged(originator)

    def _refuse(self, limit: Limit, error: M2MError) -> M2MError:
        return self.counters.refusal(limit, error)

    # ---- names -----------------------------------------------------------------------------

    def check_name(self, name: str, what: str = "resource name") -> None:
        problem = name_problem(name, self._cse.settings.limits.max_name_length)
        if problem is not None:
            shown = name if len(name) <= 80 else name[:80] + "…"
            raise self._refuse(Limit.NAME, BadRequest(f"{what} {shown!r} {problem}"))

    # ---- request rate and registrations ------------------------------------------------------

    def check_request(self, request: Request, originator: str) -> None:
        """The per-originator token bucket (AEs only: CSEs and privileged ones are exempt)."""
        limits = self._cse.settings.limits
        if limits.requests_per_second is None or not originator or self.is_exempt(originator):
            return
        buckets = self._bucket("requests", limits.requests_per_second, limits.request_burst)
        wait = buckets.take(originator, self._cse.clock.monotonic())
        if wait:
            raise self._refuse(
                Limit.REQUEST_RATE,
                NotAcceptable(
                    f"{originator} sends more than {limits.requests_per_second:g} requests/s; "
                    f"retry in {wait:.1f} s"
                ),
            )

    def check_registration(self, request: Request, originator: str) -> None:
        """Before a new AE is created: the per-source and the per-CSE registration buckets."""
        limits = self._cse.settings.limits
        if originator and self.is_exempt(originator):
            return
        now = self._cse.clock.monotonic()
        per_source = limits.registrations_per_minute_per_source
        if per_source is not None and request.source and not _is_loopback(request.source):
            buckets = self._bucket("registrations/source", per_source / 60.0, per_source)
            wait = buckets.take(request.source, now)
            if wait:
                raise self._refuse(
                    Limit.REGISTRATIONS_PER_SOURCE,
                    NotAcceptable(
                        f"more than {per_source} new AEs a minute from {request.source}; "
                        f"retry in {wait:.0f} s"
                    ),
                )
        per_cse = limits.registrations_per_minute
        if per_cse is not None:
            buckets = self._bucket("registrations", per_cse / 60.0, limits.registration_burst)
            wait = buckets.take("", now)
            if wait:
                raise self._refuse(
                    Limit.REGISTRATIONS,
                    NotAcceptable(
                        f"more than {per_cse} new AEs a minute on this CSE; retry in {wait:.0f} s"
                    ),
                )

    async def check_ae_count(self, originator: str) -> None:
        limits = self._cse.settings.limits
        if limits.max_aes is None or (originator and self.is_exempt(originator)):
            return
        settings = self._cse.settings
        if await self._cse.storage.count_children(settings.cse_ri, T.AE) >= limits.max_aes:
            raise self._refuse(
                Limit.AES,
                NotAcceptable(f"this CSE holds its maximum of {limits.max_aes} AEs"),
            )

    # ---- storage quotas on CREATE (checked under the write lock) -------------------------------

    async def check_create(self, originator: str, parent: Resource, resource_type: int) -> None:
        if self.is_exempt(originator):
            return
        limits = self._cse.settings.limits
        if parent.depth + 1 > limits.max_nesting_depth:
            raise self._refuse(
                Limit.NESTING,
                NotAcceptable(
                    f"{parent.path} is at level {parent.depth}: resources nest at most "
                    f"{limits.max_nesting_depth} levels below the CSEBase"
                ),
            )
        if resource_type == T.SUBSCRIPTION:
            await self._check_subscriptions(parent)
        if resource_type == T.ACCESS_CONTROL_POLICY and parent.ty == T.CSE_BASE:
            await self._check_policies_under_cse_base(parent)
        if resource_type not in (*_INSTANCES, T.AE, T.REMOTE_CSE):
            await self._check_resources_per_ae(parent)

    async def _check_subscriptions(self, parent: Resource) -> None:
        most = self._cse.settings.limits.max_subscriptions_per_resource
        if most is None:
            return
        if await self._cse.storage.count_children(parent.ri, T.SUBSCRIPTION) >= most:
            raise self._refuse(
                Limit.SUBSCRIPTIONS,
                NotAcceptable(f"{parent.path} already has its maximum of {most} subscriptions"),
            )

    async def _check_policies_under_cse_base(self, parent: Resource) -> None:
        most = self._cse.settings.limits.max_policies_under_cse_base
        if most is None:
            return
        if await self._cse.storage.count_children(parent.ri, T.ACCESS_CONTROL_POLICY) >= most:
            raise self._refuse(
                Limit.POLICIES_UNDER_CSE_BASE,
                NotAcceptable(f"{parent.path} already holds its maximum of {most} policies"),
            )

    async def _check_resources_per_ae(self, parent: Resource) -> None:
        most = self._cse.settings.limits.max_resources_per_ae
        parts = parent.path.split("/")
        if most is None or len(parts) < 2:
            return
        top = (
            parent if len(parts) == 2 else await self._cse.storage.get_by_path("/".join(parts[:2]))
        )
        if top is None or top.ty != T.AE:
            # Management objects an AE was allowed (by an ACP) to make under a <node> count
            # against that node, as an AE's resources do against the AE.
            top = await self._node_of(parent)
            if top is None:
                return
        from cse.core.discovery import count_below  # discovery's walker reads in chunks

        if await count_below(self._cse, top, exclude=_INSTANCES, stop_at=most) >= most:
            raise self._refuse(
                Limit.RESOURCES_PER_AE,
                NotAcceptable(f"{top.path} already holds its maximum of {most} resources"),
            )

    async def _node_of(self, parent: Resource) -> Resource | None:
        """The <node> a new resource is made in: the parent, or the node above a mgmtObj."""
        if parent.ty == T.NODE:
            return parent
        if parent.ty == T.MGMT_OBJ:
            node = await self._cse.storage.get(parent.pi)
            return node if node is not None and node.ty == T.NODE else None
        return None

    # ---- container mni / mbs -------------------------------------------------------------------

    def apply_container_limits(
        self, originator: str, attributes: dict[str, Any], *, create: bool
    ) -> None:
        """Fill in the default mni / mbs, and refuse more than the cap (5207).

        On UPDATE, null (remove the limit) sets the default again where there is one.
        """
        limits = self._cse.settings.limits
        exempt = self.is_exempt(originator)
        for name, default, cap in (
            ("mni", limits.default_max_instances, limits.max_instances_cap),
            ("mbs", limits.default_max_byte_size, limits.max_byte_size_cap),
        ):
            missing = name not in attributes if create else attributes.get(name, 0) is None
            if missing:
                fallback = default if default is not None else (None if exempt else cap)
                if fallback is not None:
                    attributes[name] = fallback
                continue
            value = attributes.get(name)
            if cap is not None and value is not None and value > cap and not exempt:
                raise self._refuse(
                    Limit.CONTAINER_CAP,
                    NotAcceptable(f"{name} {value} is over this CSE's maximum of {cap}"),
                )
