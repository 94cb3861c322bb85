"""TS-0010 topics: how an ID appears in a topic, and which topic answers which.

A request travels on `/oneM2M/req/<originator>/<receiver>/<json|cbor>` and its response on
`/oneM2M/resp/<originator>/<receiver>/<same>`; an entity without an ID yet registers on
`reg_req` and is answered on `reg_resp`. The response topic is built from the originator
segment exactly as received (AEs often use their bare stem), never from `fr`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cse.serialization import CBOR, JSON

REQUEST = "req"
RESPONSE = "resp"
REGISTRATION_REQUEST = "reg_req"
REGISTRATION_RESPONSE = "reg_resp"
ANSWERED_ON = {REQUEST: RESPONSE, REGISTRATION_REQUEST: REGISTRATION_RESPONSE}
FORMATS = {"json": JSON, "cbor": CBOR}


def topic_id(entity_id: str) -> str:
    """`/id-in` → `id-in`, `/id-in/CmyAE` → `id-in:CmyAE`, `CmyAE` → `CmyAE` (as ACME)."""
    return entity_id.lstrip("/").replace("/", ":")


def topic(kind: str, originator: str, receiver: str, fmt: str = "json", prefix: str = "") -> str:
    """A full topic from IDs already in topic form."""
    return f"{prefix}/oneM2M/{kind}/{originator}/{receiver}/{fmt}"


def request_filters(own_id: str, prefix: str = "") -> list[str]:
    """What a receiver subscribes to: requests and registrations addressed to it."""
    return [topic(kind, "+", own_id, "+", prefix) for kind in ANSWERED_ON]


def response_filter(own_id: str, prefix: str = "", kind: str = RESPONSE) -> str:
    """What an originator subscribes to: responses to its own requests."""
    return topic(kind, own_id, "+", "+", prefix)


@dataclass(frozen=True, slots=True)
class RequestTopic:
    """The parts of a topic a request arrived on."""

    kind: str  # REQUEST or REGISTRATION_REQUEST
    originator: str  # as received, used for the answer
    receiver: str
    format: str  # the last segment as received ("json", "cbor", or anything else)
    prefix: str = ""

    @property
    def serialization(self) -> str | None:
        """JSON or CBOR, or None when the last segment names neither."""
        return FORMATS.get(self.format)

    def response_topic(self, fmt: str | None = None) -> str:
        kind = ANSWERED_ON[self.kind]
        return topic(kind, self.originator, self.receiver, fmt or self.format, self.prefix)


def parse_request_topic(name: str, prefix: str = "") -> RequestTopic | None:
    """The parts of a request topic, or None if it is not one (nothing can be answered)."""
    if prefix:
        if not name.startswith(prefix + "/"):
            return None
        name = name[len(prefix) :]
    parts = name.split("/")
    if len(parts) != 6 or parts[0] or parts[1] != "oneM2M" or parts[2] not in ANSWERED_ON:
        return None
    kind, originator, receiver, fmt = parts[2:]
    if not originator or not receiver or not fmt:
        return None
    return RequestTopic(kind, originator, receiver, fmt, prefix)
