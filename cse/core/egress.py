"""Egress policy: where this CSE may send requests and notifications, and where never.

A subscription's `nu`, an AE's `poa` and a remoteCSE's `poa` are URLs that a requester writes
and the CSE then connects to. Without a policy the CSE probes any port for whoever asks (the
verification request is a port scanner), posts chosen bodies to its own neighbours, returns
internal answers through retargeting, and logs in to any MQTT broker with its own password.
The policy decides at three moments:

- registration (CREATE or UPDATE of an AE or remoteCSE): a remoteCSE must be a CSE-ID this
  CSE was configured (`[cse] remote_cses`) or provisioned (a CSE credential) to accept; each
  `poa` must be at the address the request came from (`Request.source`), name the CSE's own
  MQTT broker, or match an `[cse.egress] allow` entry; and it is never a port of this process;
- subscription (CREATE or UPDATE): a `nu` or `su` that is a bare URL must have the scheme,
  host and port of a registered entity's `poa`, or match an `allow` entry; every target must
  pass the address rules below before any packet is sent;
- every send (the bindings' clients): the host is resolved once, every address it resolves to
  is checked, and the connection goes to the checked address (no second lookup that a DNS
  rebinding could answer differently). Refused: this process's own ports on this machine,
  loopback (unless `loopback_peers`), link-local, unspecified, multicast and broadcast
  addresses, unless an `allow` entry names the target. MQTT goes only to the CSE's own broker.

docs/security.md ("Egress policy") gives the rules with their reasons.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cse.core.errors import BadRequest, DeliveryError, OriginatorHasNoPrivilege
from cse.core.identity import Role
from cse.core.primitives import Request
from cse.core.types import ResourceType as T

logger = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 80, "https": 443, "coap": 5683, "coaps": 5684, "mqtt": 1883, "mqtts": 8883}
MQTT_SCHEMES = frozenset({"mqtt", "mqtts"})
RESOLVE_TIMEOUT_S = 5.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses the host resolves to (IP literals as text)
Resolver = Callable[[str, int], Awaitable[list[str]]]

_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # "this host" on Linux, like 0.0.0.0
_BROADCAST = ipaddress.ip_address("255.255.255.255")


class EgressRefused(DeliveryError):
    """The policy does not let the CSE send to this target; nothing was sent."""

    def __init__(self, url: str, reason: str, detail: str) -> None:
        super().__init__(f"{url[:120]}: {detail}")
        self.reason = reason
        self.detail = detail


class NotOneM2MAnswer(DeliveryError):
    """A retargeted request was answered by something that is not a oneM2M entity."""


@dataclass(frozen=True, slots=True)
class EgressSettings:
    """What an operator can allow beyond the registered entities (`[cse.egress]`)."""

    # Hosts (name or IP), networks (CIDR) or URL prefixes (scheme://host:port/path) the CSE
    # may send to although no registered entity announced them, even on loopback.
    allow: tuple[str, ...] = ()
    # Reach registered points of access on loopback addresses: every part on one machine.
    loopback_peers: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    """The parts of a URL that say where a connection goes."""

    scheme: str
    host: str  # lower case, without IPv6 brackets
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target | None:
        try:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            port = parts.port or DEFAULT_PORTS.get(scheme)
        except ValueError:
            return None
        if scheme not in DEFAULT_PORTS or not parts.hostname or port is None:
            return None
        return cls(scheme, parts.hostname.lower(), port, parts.path)

    def same_origin(self, other: Target) -> bool:
        return (self.scheme, self.host, self.port) == (other.scheme, other.host, other.port)


def same_origin(url: str, other: str) -> bool:
    """Do two URLs lead to the same scheme, host and port?"""
    first, second = Target.parse(url), Target.parse(other)
    return first is not None and second is not None and first.same_origin(second)


class Allowance(enum.IntEnum):
    """How far an `allow` entry lifts the address rules for a target."""

    NONE = 0
    ADDRESS = 1  # a host or network entry: lifts the address-class refusals
    EXACT = 2  # a URL prefix naming scheme, host, port and path: lifts own ports too


@dataclass(frozen=True, slots=True)
class AllowEntry:
    text: str
    host: str | None = None  # a host name entry
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None  # IP or CIDR entry
    prefix: Target | None = None  # a URL prefix entry

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        """An entry of `[cse.egress] allow`; ValueError says what is wrong with it."""
        value = text.strip()
        if "://" in value:
            prefix = Target.parse(value)
            if prefix is None:
                raise ValueError(f"{text!r} is not an http, https, coap, coaps or mqtt URL")
            return cls(text, prefix=prefix)
        try:
            return cls(text, network=ipaddress.ip_network(value, strict=False))
        except ValueError:
            pass
        if not value or "/" in value or ":" in value or " " in value:
            raise ValueError(f"{text!r} is not a host, an IP address, a CIDR or a URL prefix")
        return cls(text, host=value.lower())

    def allows(self, target: Target, address: IPAddress | None) -> Allowance:
        """How far this entry allows `target` at `address` (None: the host did not resolve,
        so only name and prefix entries can match)."""
        if self.prefix is not None:
            prefix = self.prefix
            base = prefix.path.rstrip("/")
            if target.same_origin(prefix) and (
                not base or target.path == base or target.path.startswith(base + "/")
            ):
                return Allowance.EXACT
            return Allowance.NONE
        if self.network is not None:
            inside = address is not None and address in self.network
            return Allowance.ADDRESS if inside else Allowance.NONE
        return Allowance.ADDRESS if target.host == self.host else Allowance.NONE


@dataclass(frozen=True, slots=True)
class Destination:
    """A checked target: connect to `address`, never to a new lookup of `host`."""

    scheme: str
    host: str
    port: int
    address: str

    @property
    def netloc(self) -> str:
        """`address:port` as a URL writes it (brackets around IPv6)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def normalized(address: str) -> IPAddress | None:
    """An IP address with an IPv4-mapped IPv6 form turned into IPv4; None if not an address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver, in its order, without duplicates."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(RESOLVE_TIMEOUT_S):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_this_machine(ip: IPAddress) -> bool:
    """Is the address one of this machine's? (Binding a socket to it succeeds only then.)"""
    if ip.is_loopback or ip.is_unspecified or ip in _THIS_NETWORK:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(ip), 0))
    except OSError:
        return False
    return True


class EgressPolicy:
    """The CSE's egress decisions and its count of refusals by reason (`refused`)."""

    def __init__(
        self,
        settings: EgressSettings | None = None,
        *,
        broker_url: str | None = None,
        remote_cses: Iterable[str] = (),
        provisioned_cse: Callable[[str], bool] | None = None,
        resolver: Resolver | None = None,
        local_schemes: Iterable[str] = (),
    ) -> None:
        self.settings = settings or EgressSettings()
        self._allow = [AllowEntry.parse(entry) for entry in self.settings.allow]
        self._broker = Target.parse(broker_url) if broker_url else None
        self._remote_cses = frozenset(remote_cses)
        # Is a CSE-ID provisioned (a CSE credential in the credential store)?
        self.provisioned_cse = provisioned_cse
        self._resolver = resolver or system_resolver
        self._own_ports: set[tuple[str, int]] = set()  # ("tcp" or "udp", port)
        # Schemes served by senders inside this process (the head-end's `local://`): no
        # network, so no address rules, but only this process may name them as a poa.
        self.local_schemes = frozenset(scheme.lower() for scheme in local_schemes)
        self.refused: Counter[str] = Counter()

    # ---- what the running process tells the policy ------------------------------------------

    def add_own_port(self, port: int, transport: str = "tcp") -> None:
        """A port this process listens on (CSE listeners, the gateway's ops endpoint, the
        head-end's web server): never a target on any address of this machine. `transport`:
        "tcp" or "udp" (CoAP): a UDP port of ours says nothing about the TCP port of the same
        number, which a meter's CoAP listener may well have."""
        self._own_ports.add((transport, port))

    def serve_locally(self, scheme: str) -> None:
        """Sends to `scheme` stay inside this process (like `local_schemes`)."""
        self.local_schemes = self.local_schemes | {scheme.lower()}

    def allow_exactly(self, url_prefix: str) -> None:
        """Allow one URL prefix, even on loopback or a port of this process (the head-end's
        MDMS endpoint, the gateway's configured upstream)."""
        self._allow.append(AllowEntry.parse(url_prefix))

    # ---- registration -----------------------------------------------------------------------

    def admits_remote_cse(self, cse_id: str) -> bool:
        if cse_id in self._remote_cses:
            return True
        return self.provisioned_cse is not None and self.provisioned_cse(cse_id)

    async def check_registration(
        self, request: Request, resource_type: int, originator: str, attributes: dict[str, Any]
    ) -> None:
        """Before an AE or remoteCSE is stored: who may register, and its points of access."""
        if resource_type == T.REMOTE_CSE and not self.admits_remote_cse(originator):
            self._count("unknown-cse", f"remoteCSE {originator[:80]}", "not configured")
            raise OriginatorHasNoPrivilege(
                f"CSE {originator[:80]} is not one this CSE is configured or provisioned to accept"
            )
        points = attributes.get("poa")
        if points:
            await self.check_points_of_access(points, request)

    async def check_points_of_access(self, points: list[str], request: Request) -> None:
        """Each poa is at the registering request's address, is our broker, or is allowed;
        none is a port of this process. A refusal is 4103 (4000 for a URL we cannot use)."""
        in_process = request.source is None and request.principal.role is Role.LOCAL
        for point in points:
            why: str | None
            if self.is_local(point):
                why = None if in_process else "only this process's applications are in process"
            else:
                target = Target.parse(point)
                if target is None:
                    raise BadRequest(f"point of access {point[:100]!r} is not a usable URL")
                why = await self._point_of_access_refusal(target, request.source)
            if why is not None:
                self._count("point-of-access", point, why)
                raise OriginatorHasNoPrivilege(f"point of access {point[:100]} refused: {why}")

    async def _point_of_access_refusal(self, target: Target, source: str | None) -> str | None:
        addresses = await self._addresses(target)
        if target.scheme in MQTT_SCHEMES and await self._is_our_broker(target, addresses):
            return None
        allowance = self._allowance(target, addresses)
        if allowance is Allowance.NONE and not _comes_from(addresses, source):
            return f"it is not the address the request came from ({source or 'a broker'})"
        if allowance is not Allowance.EXACT and self._is_own(addresses, target):
            return "it is a port of this CSE's own process"
        return None

    def is_local(self, url: str) -> bool:
        """Is `url` delivered inside this process (no network, no address rules)?"""
        return url.split("://", 1)[0].lower() in self.local_schemes if "://" in url else False

    # ---- subscriptions ----------------------------------------------------------------------

    async def allows_unannounced(self, url: str) -> bool:
        """Does an `allow` entry cover a bare URL that no registered entity announced?"""
        target = Target.parse(url)
        if target is None:
            return False
        addresses = await self._addresses(target)
        return self._allowance(target, addresses) is not Allowance.NONE

    def refuse_unannounced(self, url: str) -> EgressRefused:
        detail = "it is no registered entity's point of access and no allowed target"
        return self._refuse(url, "not-announced", detail)

    # ---- every send ---------------------------------------------------------------------------

    async def destination(self, url: str) -> Destination:
        """Where a send to `url` may connect; EgressRefused (counted, logged) if nowhere."""
        target = Target.parse(url)
        if target is None:
            raise self._refuse(url, "unusable-url", "not a URL this CSE sends to")
        if target.scheme in MQTT_SCHEMES:
            return await self._broker_destination(url, target)
        names = await self._addresses(target)
        if not names:
            raise self._refuse(url, "unresolvable", "its host does not resolve")
        for name in names:
            address = normalized(name)
            if address is None:
                raise self._refuse(url, "unresolvable", f"{name!r} is not an address")
            why = self._address_refusal(target, address)
            if why is not None:
                raise self._refuse(url, why, _REASONS[why])
        return Destination(target.scheme, target.host, target.port, names[0])

    async def _broker_destination(self, url: str, target: Target) -> Destination:
        """An MQTT target is reached through our own broker connection, always: the target
        must name our broker, or an `allow` entry must name it as an mqtt URL (a relay in
        front of our broker, as the meters see it); host and network entries do not count."""
        broker = self._broker
        if broker is None:
            raise self._refuse(url, "other-broker", "this CSE has no MQTT broker")
        if not await self._is_our_broker(target, None):
            allowance = self._allowance(target, await self._addresses(target))
            if allowance is not Allowance.EXACT:
                raise self._refuse(url, "other-broker", "MQTT goes only to this CSE's own broker")
        return Destination(broker.scheme, broker.host, broker.port, broker.host)

    def _address_refusal(self, target: Target, address: IPAddress) -> str | None:
        allowance = self._allowance_of(target, address)
        if (
            (_transport(target.scheme), target.port) in self._own_ports
            and allowance is not Allowance.EXACT
            and is_this_machine(address)
        ):
            return "own-port"
        if allowance is not Allowance.NONE:
            return None
        if address.is_loopback:
            return None if self.settings.loopback_peers else "loopback"
        if address.is_link_local:
            return "link-local"
        if address.is_unspecified or address in _THIS_NETWORK:
            return "unspecified"
        if address.is_multicast or address == _BROADCAST:
            return "multicast"
        return None

    # ---- helpers ------------------------------------------------------------------------------

    async def _addresses(self, target: Target) -> list[str]:
        """The target host's addresses: itself for an IP literal, else one lookup; [] if none."""
        if normalized(target.host) is not None:
            return [target.host]
        try:
            return await self._resolver(target.host, target.port)
        except (OSError, TimeoutError, UnicodeError) as error:
            logger.info("cannot resolve %s: %s", target.host[:100], error)
            return []

    def _allowance_of(self, target: Target, address: IPAddress | None) -> Allowance:
        return max((entry.allows(target, address) for entry in self._allow), default=Allowance.NONE)

    def _allowance(self, target: Target, addresses: list[str]) -> Allowance:
        """The allowance every address of the target has (the weakest one counts)."""
        ips = [normalized(address) for address in addresses]
        if not ips:
            return self._allowance_of(target, None)
        return min(self._allowance_of(target, ip) for ip in ips)

    def _is_own(self, addresses: list[str], target: Target) -> bool:
        if (_transport(target.scheme), target.port) not in self._own_ports:
            return False
        return any(ip is not None and is_this_machine(ip) for ip in map(normalized, addresses))

    async def _is_our_broker(self, target: Target, addresses: list[str] | None) -> bool:
        """The host of our broker URL: by name, by a shared address, or both on this machine
        (a meter names the gateway's broker by its LAN address). The port and mqtt/mqtts are
        not compared: one broker listens on several (1883 on loopback for the gateway, 8883
        with TLS for meters), and whatever port a poa names, the CSE reaches the entity through
        its own connection to its own broker."""
        broker = self._broker
        if broker is None or target.scheme not in MQTT_SCHEMES:
            return False
        if target.host == broker.host:
            return True
        ours = {ip for ip in map(normalized, await self._addresses(broker)) if ip is not None}
        if addresses is None:
            addresses = await self._addresses(target)
        theirs = {ip for ip in map(normalized, addresses) if ip is not None}
        if ours & theirs:
            return True
        return bool(ours and theirs) and all(map(is_this_machine, ours | theirs))

    def count(self, reason: str) -> None:
        """Count a refusal decided elsewhere (a retargeted answer that was not oneM2M)."""
        self.refused[reason] += 1

    def _refuse(self, url: str, reason: str, detail: str) -> EgressRefused:
        self._count(reason, url, detail)
        return EgressRefused(url, reason, detail)

    def _count(self, reason: str, what: str, detail: str) -> None:
        self.count(reason)
        logger.warning("egress refused (%s): %s: %s", reason, what[:120], detail)


_REASONS = {
    "own-port": "it is a port of this CSE's own process",
    "loopback": "loopback addresses are not reached (loopback_peers is off)",
    "link-local": "link-local addresses are not reached",
    "unspecified": "unspecified addresses are not reached",
    "multicast": "multicast and broadcast addresses are not reached",
}


def _comes_from(addresses: list[str], source: str | None) -> bool:
    """Is the request's source one of the addresses a poa host resolves to?"""
    peer = normalized(source) if source else None
    return peer is not None and any(normalized(a) == peer for a in addresses)


def _transport(scheme: str) -> str:
    """The IP transport a URL scheme connects over."""
    return "udp" if scheme.lower() in ("coap", "coaps") else "tcp"
