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


def shared(group: str, name: str) -> str:
    """An MQTT 5 shared subscription to `name`: the broker gives each message to one member
    of `group`. TS-0010 topics begin with `/`, so `$share/g//oneM2M/...` has two slashes."""
    return f"$share/{group}/{name}"


# What the workers of one CSE tell each other (docs/scale-out.md): a worker's will announces
# its death on `gone`; a worker ending a session marks the end of what it holds on `drained`.
WORKER_GONE = "gone"
WORKER_DRAINED = "drained"


def worker_topic(own_id: str, worker: str, event: str, prefix: str = "") -> str:
    return f"{prefix}/gridm2m/workers/{own_id}/{worker}/{event}"


def worker_gone(name: str, own_id: str, prefix: str = "") -> str | None:
    """The worker whose death `name` announces (None if it is not such a topic)."""
    stem = f"{prefix}/gridm2m/workers/{own_id}/"
    suffix = f"/{WORKER_GONE}"
    if not (name.startswith(stem) and name.endswith(suffix)):
        return None
    worker = name[len(stem) : -len(suffix)]
    return worker if worker and "/" not in worker else None


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
