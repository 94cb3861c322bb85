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
    UNPROVEN = "unproven"  # nothing proved: a plain listener in lab mode
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

    @property
    def is_proven(self) -> bool:
        return self.role is not Role.UNPROVEN


_UNPROVEN = Principal(Role.UNPROVEN)
