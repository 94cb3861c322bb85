"""Who sent a request, as its transport proved it: the principal a binding attaches to a request.

The originator (`fr`) of a request is only a claim. A binding that authenticated its peer (an
OSCORE security context, a TLS client certificate, a bearer token, an MQTT broker that logged
the client in and holds it to its own topics) says so with a `Principal`, and the core believes
an originator only when that principal may use it. A listener that proves nothing hands
`Principal.unproven()` over: the lab mode, where ordinary originators are taken at their word
but no privileged identity (the admin, a CSE-ID, a trusted head-end) ever is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.Enum):
    UNPROVEN = "unproven"  # nothing proved: a plain listener in lab mode (AE claims believed)
    UNCHECKED = "unchecked"  # an insecure lab listener: every claim believed, even privileged
    DEVICE = "device"  # one AE (a meter): exactly its AE-ID, registration under its name only
    CSE = "cse"  # another CSE: its CSE-ID, and the entities behind it (`<cse-id>/...`)
    ADMIN = "admin"  # an operator: may act as the admin originator
    LOCAL = "local"  # code in this process (the head-end's own applications)


@dataclass(frozen=True, slots=True)
class Principal:
    """A proven identity: which credential, what it may call itself, and how it was proved."""

    role: Role
    name: str = ""  # the credential's name (meter name, CSE-ID, operator); "" when unproven
    originator: str = ""  # the originator it is bound to (AE-ID, CSE-ID, admin originator)
    via: str = "none"  # how it was proved: "oscore", "tls", "token", "mqtt", "process", "none"

    @classmethod
    def unproven(cls) -> Principal:
        return _UNPROVEN

    @classmethod
    def unchecked(cls) -> Principal:
        return _UNCHECKED

    @classmethod
    def local(cls) -> Principal:
        return _LOCAL

    @property
    def is_proven(self) -> bool:
        return self.role is not Role.UNPROVEN


_UNPROVEN = Principal(Role.UNPROVEN)
_UNCHECKED = Principal(Role.UNCHECKED)
_LOCAL = Principal(Role.LOCAL, via="process")


class Trust(enum.Enum):
    """What a listener believes about the originators of the requests it receives."""

    CREDENTIAL = "credential"  # only what a credential proved (OSCORE, TLS, token, broker)
    CLAIMED = "claimed"  # lab meters: claimed AE-IDs believed, never a privileged identity
    INSECURE = "insecure"  # an isolated lab with a peer that cannot authenticate: every claim

    def principal_without_credential(self) -> Principal | None:
        """The principal of a request that proved nothing; None: refuse it."""
        if self is Trust.CLAIMED:
            return _UNPROVEN
        if self is Trust.INSECURE:
            return _UNCHECKED
        return None


def may_speak_as(principal: Principal, originator: str, privileged: bool) -> bool:
    """May a request with this principal use `originator`? (`privileged`: the originator is the
    admin, this CSE, or a trusted one, which passes every access check.)"""
    role = principal.role
    if role in (Role.LOCAL, Role.UNCHECKED):
        return True
    if role is Role.UNPROVEN:
        # A plain listener believes AE-IDs only: never the admin, a trusted originator, or a
        # CSE-ID and what is behind one (an SP-relative ID starts with "/").
        return not privileged and not originator.startswith("/")
    if role is Role.CSE:
        bound = principal.originator
        return originator == bound or originator.startswith(bound + "/")
    if role is Role.DEVICE:
        # Bound to exactly its AE-ID; a device provisioned under a name whose AE-ID happens to
        # be privileged here (a head-end application's) gains nothing by it.
        return originator == principal.originator and not privileged
    return originator == principal.originator  # ADMIN: the admin originator
