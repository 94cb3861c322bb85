"""<request> (TS-0001 9.6.12): the record of a non-blocking request (rt 1 or 2).

The CSE makes one under the CSEBase for each non-blocking request, owned by its originator
(cse/core/nonblocking.py), and fills in the request status (rs) and the operation result
(ors) when the operation ends. Requests cannot create or change one; its originator may read
it, subscribe to it, and delete it once the operation is over (a running one cannot be
recalled: 5220, as in ACME).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cse.core.errors import UnableToRecallRequest
from cse.core.resources.base import NP, Attribute, Kind, TypeRules, resource_spec
from cse.core.types import RequestStatus
from cse.core.types import ResourceType as T
from cse.storage.base import Resource

if TYPE_CHECKING:
    from cse.core.context import Context


class RequestRules(TypeRules):
    created_by_request = "a <request> is made by the CSE for a non-blocking request (rt 1, 2)"
    updated_by_request = "a <request> records a request and its result; it cannot be updated"

    async def check_delete(self, ctx: Context, resource: Resource) -> None:
        if resource.attributes.get("rs") == RequestStatus.PENDING:
            raise UnableToRecallRequest(f"the request {resource.ri} is still being served")


SPEC = resource_spec(
    T.REQUEST,
    "req",
    {
        "op": Attribute(Kind.INTEGER, NP, NP),  # operation
        "tg": Attribute(Kind.STRING, NP, NP),  # target
        "org": Attribute(Kind.STRING, NP, NP),  # originator
        "rid": Attribute(Kind.STRING, NP, NP),  # request identifier
        "mi": Attribute(Kind.OBJECT, NP, NP),  # meta information: the other parameters
        "pc": Attribute(Kind.ANY, NP, NP),  # primitive content
        "rs": Attribute(Kind.INTEGER, NP, NP),  # request status
        "ors": Attribute(Kind.OBJECT, NP, NP),  # operation result
    },
    {T.SUBSCRIPTION},
    rules=RequestRules(),
    has_creator=False,  # made by the CSE itself; ACME's has no cr
)
