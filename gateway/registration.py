"""Registration of the gateway's MN-CSE with the head-end's IN-CSE (remoteCSE on both sides).

Upstream: a remoteCSE for us under the IN-CSE's CSEBase (its rn is our CSE-ID without the
slash), with our points of access, so the head-end can retarget `/<our-csi>/...` requests to
us; under it, one container per flow family that the uplink mirrors meter data into, and a
`status` container for the gateway's own state. Locally: a remoteCSE for the head-end, which
lets its CSE and applications be originators here.

The registration is verified every `check_interval` seconds and whenever the uplink hears
that a target is gone; if the head-end lost it (database reset, lifetime ran out), it is made
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from cse.core.handler import CommonServicesEntity
from cse.core.primitives import Request, Response
from cse.core.types import Operation, ResourceType
from cse.core.types import ResponseStatusCode as RSC
from gateway.upstream import RELEASE, UpstreamLink, UpstreamUnavailable

logger = logging.getLogger(__name__)

STATUS_CONTAINER = "status"
_EXISTS = (RSC.CONFLICT, RSC.ORIGINATOR_HAS_ALREADY_REGISTERED, RSC.ALREADY_EXISTS)


class RegistrationError(Exception):
    """The upstream CSE refused the registration; the message carries its answer."""


class Registrar:
    def __init__(
        self,
        cse: CommonServicesEntity,
        link: UpstreamLink,
        families: Iterable[str],
        *,
        check_interval: float,
        announce_broker_only: bool = False,
    ) -> None:
        self.cse = cse
        self.link = link
        self.announce_broker_only = announce_broker_only
        self.families = list(families)
        self.check_interval = check_interval
        self.registered = asyncio.Event()
        self.registrations = 0  # how many times the upstream remoteCSE was (re)created
        self._containers: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def our_id(self) -> str:
        return self.cse.settings.cse_id

    @property
    def upstream_home(self) -> str:
        """SP-relative address of our remoteCSE on the upstream CSE."""
        return f"{self.link.base}/{self.our_id.lstrip('/')}"

    def container_address(self, family: str) -> str:
        return f"{self.upstream_home}/{family}"

    # ---- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await self._register_locally()
        self._task = self.cse.supervisor.start("registration check", self._keep_registered)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def suspect_lost(self) -> None:
        """Someone saw a sign that the upstream forgot us: check at once."""
        self.registered.clear()
        self._wake.set()

    async def _keep_registered(self) -> None:
        delay = 1.0
        while True:
            try:
                await self.ensure_registered()
                delay = 1.0
                wait = self.check_interval
            except (UpstreamUnavailable, RegistrationError) as error:
                logger.warning("registration with %s: %s", self.link.config.url, error)
                wait, delay = delay, min(delay * 2, self.check_interval)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def ensure_registered(self) -> None:
        async with self._lock:
            if self.registered.is_set():
                reply = await self.link.send(self.link.retrieve(self.upstream_home))
                if reply.status == RSC.OK:
                    return
                if int(reply.status) >= 5000 or reply.status == RSC.REQUEST_TIMEOUT:
                    # The head-end could not look (its database restarting, say): that says
                    # nothing of our registration. Registering again would hold the uplink
                    # back until the head-end answers that too; ask again after a backoff.
                    raise RegistrationError(
                        f"the registration check was answered {int(reply.status)}; "
                        "still registered as far as we know"
                    )
                logger.warning("the upstream CSE lost our registration (%s)", int(reply.status))
                self.registered.clear()
            await self._register_upstream()
            self._containers.clear()
            for family in [*self.families, STATUS_CONTAINER]:
                await self._ensure_container(family)
            self.registered.set()

    async def ensure_container(self, family: str) -> None:
        """Make sure the upstream container for a family exists (first use of a family)."""
        async with self._lock:
            await self._ensure_container(family)

    # ---- requests ------------------------------------------------------------------------

    def _points_of_access(self) -> list[str]:
        """What we announce upstream. Over an MQTT uplink the head-end sees the broker, not
        our address, so by default we announce only our poa at the broker: the one it accepts
        (docs/security.md, "Egress policy"); `[cse] poa` set by hand is announced as it is."""
        points = list(self.cse.settings.points_of_access)
        if self.announce_broker_only:
            at_broker = [url for url in points if url.split("://", 1)[0] in ("mqtt", "mqtts")]
            return at_broker or points
        return points

    def _remote_cse(self) -> dict[str, object]:
        settings = self.cse.settings
        return {
            "rn": settings.cse_ri,
            "csi": settings.cse_id,
            "cb": f"{settings.cse_id}/{settings.cse_name}",
            "cst": settings.cse_type,
            "rr": True,
            "poa": self._points_of_access(),
            "srv": ["3", "4"],
            **self._policies(),
        }

    def _policies(self) -> dict[str, list[str]]:
        acpi = self.link.config.acpi
        return {"acpi": list(acpi)} if acpi else {}

    async def _register_upstream(self) -> None:
        attributes = self._remote_cse()
        request = self.link.create(self.link.base, ResourceType.REMOTE_CSE, {"m2m:csr": attributes})
        reply = await self.link.send(request)
        if reply.status in _EXISTS:
            # Registered before (e.g. we restarted): bring our points of access up to date.
            update = {"m2m:csr": {"poa": attributes["poa"]}}
            reply = await self.link.send(self.link.update(self.upstream_home, update))
            self._check(reply, "update of our remoteCSE")
        else:
            self._check(reply, "registration")
            self.registrations += 1
        logger.info("registered with %s as %s", self.link.config.cse_id, self.our_id)

    async def _ensure_container(self, family: str) -> None:
        if family in self._containers:
            return
        content: dict[str, object] = {"rn": family, **self._policies()}
        if family == STATUS_CONTAINER:
            content["mni"] = 10
        request = self.link.create(self.upstream_home, ResourceType.CONTAINER, {"m2m:cnt": content})
        reply = await self.link.send(request)
        if reply.status == RSC.NOT_FOUND:
            self.registered.clear()
            self._wake.set()
            raise RegistrationError("our remoteCSE is gone from the upstream CSE")
        if reply.status not in _EXISTS:
            self._check(reply, f"container {family}")
        self._containers.add(family)

    async def _register_locally(self) -> None:
        """A remoteCSE for the head-end on our own CSE (idempotent)."""
        upstream = self.link.config
        request = Request(
            Operation.CREATE,
            self.cse.settings.cse_name,
            upstream.cse_id,
            f"local-csr-{upstream.cse_id.strip('/')}",
            RELEASE,
            resource_type=ResourceType.REMOTE_CSE,
            content={
                "m2m:csr": {
                    "rn": upstream.cse_id.lstrip("/"),
                    "csi": upstream.cse_id,
                    "cb": f"{upstream.cse_id}/{upstream.cse_name}",
                    "cst": 1,
                    "rr": True,
                    "poa": [upstream.url],
                    "srv": ["3", "4"],
                }
            },
        )
        reply = await self.cse.handle(request)
        if reply.status not in (RSC.CREATED, *_EXISTS):
            raise RegistrationError(f"local remoteCSE for {upstream.cse_id}: {_explain(reply)}")

    @staticmethod
    def _check(reply: Response, what: str) -> None:
        if reply.status not in (RSC.OK, RSC.CREATED, RSC.UPDATED):
            raise RegistrationError(f"{what} refused: {_explain(reply)}")


def _explain(reply: Response) -> str:
    content = reply.content
    message = content.get("m2m:dbg") if isinstance(content, dict) else None
    return f"{int(reply.status)} {message or ''}".strip()
