"""Request and response primitives: what every binding builds and what the core answers with."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from cse.core.identity import Principal
from cse.core.types import (
    ContentStatus,
    Operation,
    ResourceType,
    ResponseStatusCode,
    ResultContent,
)


@dataclass(frozen=True, slots=True)
class FilterCriteria:
    """The filter criteria (fc) of a RETRIEVE: conditions plus discovery handling."""

    filter_usage: int | None = None  # fu: 1 discovery, 2 conditional retrieval
    resource_types: tuple[int, ...] = ()  # ty
    labels: tuple[str, ...] = ()  # lbl: any one matches
    created_before: str | None = None  # crb
    created_after: str | None = None  # cra
    modified_since: str | None = None  # ms
    unmodified_since: str | None = None  # us
    state_tag_smaller: int | None = None  # sts
    state_tag_bigger: int | None = None  # stb
    expire_before: str | None = None  # exb
    expire_after: str | None = None  # exa
    size_above: int | None = None  # sza
    size_below: int | None = None  # szb
    content_types: tuple[str, ...] = ()  # cty
    attributes: tuple[tuple[str, str], ...] = ()  # atr
    filter_operation: int = 1  # fo: 1 AND, 2 OR
    limit: int | None = None  # lim
    level: int | None = None  # lvl
    offset: int | None = None  # ofst

    @property
    def is_discovery(self) -> bool:
        return self.filter_usage == 1

    @property
    def has_conditions(self) -> bool:
        return any(
            (
                self.resource_types,
                self.labels,
                self.content_types,
                self.attributes,
                *(
                    value is not None
                    for value in (
                        self.created_before,
                        self.created_after,
                        self.modified_since,
                        self.unmodified_since,
                        self.state_tag_smaller,
                        self.state_tag_bigger,
                        self.expire_before,
                        self.expire_after,
                        self.size_above,
                        self.size_below,
                    )
                ),
            )
        )


@dataclass(frozen=True, slots=True)
class Request:
    """A oneM2M request primitive, independent of the binding it arrived on."""

    operation: Operation
    to: str
    originator: str | None
    request_id: str
    release_version: str | None = None
    resource_type: ResourceType | int | None = None
    content: Any = None  # pc, already decoded
    result_content: ResultContent | None = None
    filter_criteria: FilterCriteria | None = None
    discovery_result_type: int | None = None  # drt: 1 structured, 2 unstructured
    request_expiration: str | None = None  # rqet: absolute timestamp or relative ms
    originating_timestamp: str | None = None  # ot
    event_category: int | None = None  # ec
    group_request_id: str | None = None  # gid
    attribute_list: tuple[str, ...] = ()  # atrl: partial retrieve
    vendor_information: str | None = None  # vsi
    response_type: int | None = None  # rt (rtv): 1/2 non-blocking, 3 blocking, 5 no response
    response_targets: tuple[str, ...] = ()  # rt.nu (HTTP X-M2M-RTU): where rt 2 results go
    # Set by bindings with at-least-once delivery (MQTT QoS 1): a CREATE seen again with the
    # same originator and request ID returns the first result instead of creating twice.
    deduplicate: bool = False
    # Who the binding's transport proved sent this (cse/core/identity.py); the originator is
    # believed only as far as this principal allows. A request built in this process (the
    # head-end's own applications, tests) is local; every binding sets what it proved.
    principal: Principal = field(default_factory=Principal.local)
    # The peer's address as the transport saw it (an IP address; None for a broker or in
    # process): what an entity's points of access are checked against.
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def retarget(self, to: str, **changes: Any) -> Request:
        return replace(self, to=to, **changes)


@dataclass(frozen=True, slots=True)
class Response:
    """A oneM2M response primitive."""

    status: ResponseStatusCode
    request_id: str
    release_version: str | None = None
    content: Any = None
    originator: str | None = None  # fr of the response: the hosting CSE
    to: str | None = None
    # Hierarchical address of a created resource (HTTP Content-Location, CoAP Location-Path).
    location: str | None = None
    # cnst / cnot: a partial result (discovery over its cap) and the ofst that continues it.
    content_status: ContentStatus | None = None
    content_offset: int | None = None
    # Origin time and the like could be added here; bindings map only what they know.


def error_content(message: str) -> dict[str, str]:
    return {"m2m:dbg": message}
