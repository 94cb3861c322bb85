"""<contentInstance> (TS-0001 9.6.7): immutable content, sized and checked when made.

Its container numbers it, caps its lifetime and evicts older ones (container.py). Release 4
adds `dgt` (when the data was generated, the creator's to give) and `dcnt` (how many
RETRIEVEs it survives), and makes it unreadable while its container has `disr`.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from cse.core.errors import BadRequest, OperationNotAllowed
from cse.core.resources.base import NP, Attribute, Kind, M, O, TypeRules, resource_spec
from cse.core.types import ResourceType as T
from cse.storage.base import Change, Put, Resource

if TYPE_CHECKING:
    from cse.core.context import Context

CONTENT_FORMAT = re.compile(r"^[\w.+\-]+/[\w.+\-]+:[0-2](:[0-9]+)?$")


def content_size(content: Any) -> int:
    """`cs`: bytes of `con`, UTF-8 for a string and compact JSON otherwise."""
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, bytes):
        return len(content)
    return len(json.dumps(content, separators=(",", ":")).encode())


async def _check_retrieval_enabled(ctx: Context, instance: Resource) -> None:
    """disableRetrieval (TS-0001 R4): while the container has disr, its instances are
    write-only: ACME answers 4005 to a RETRIEVE or a DELETE of one, whoever asks."""
    container = await ctx.storage.get(instance.pi)
    if container is not None and container.attributes.get("disr"):
        raise OperationNotAllowed(f"retrieval is disabled (disr) on {container.path}")


class ContentInstanceRules(TypeRules):
    updated_by_request = "a contentInstance cannot be updated"

    async def on_create(self, ctx: Context, new: dict[str, Any], parent: Resource) -> list[Change]:
        cnf = new.get("cnf")
        if cnf is not None and not CONTENT_FORMAT.match(cnf):
            raise BadRequest(f"content info (cnf) {cnf!r} is not media-type:encoding[:security]")
        new["cs"] = content_size(new["con"])
        return []

    async def check_retrieve(self, ctx: Context, resource: Resource) -> None:
        await _check_retrieval_enabled(ctx, resource)

    async def check_delete(self, ctx: Context, resource: Resource) -> None:
        await _check_retrieval_enabled(ctx, resource)

    def changes_on_retrieve(self, resource: Resource) -> bool:
        return "dcnt" in resource.attributes

    async def on_retrieved(self, ctx: Context, resource: Resource) -> list[Change]:
        # deletionCnt (TS-0001 R4): each RETRIEVE (la/ol too) counts one down, and the one that
        # reaches 0 deletes the instance; the answer shows the count before (as ACME).
        left = int(resource.attributes["dcnt"]) - 1
        if left > 0:
            return [Put(resource.with_attributes(dcnt=left))]
        from cse.core.delete import deletion_changes  # delete imports the type registry

        return await deletion_changes(ctx, resource)


SPEC = resource_spec(
    T.CONTENT_INSTANCE,
    "cin",
    {
        "cnf": Attribute(Kind.STRING, O, NP),
        "con": Attribute(Kind.ANY, M, NP),
        "cs": Attribute(Kind.COUNT, NP, NP),
        "conr": Attribute(Kind.STRING, O, NP),
        "st": Attribute(Kind.COUNT, NP, NP),
        "or": Attribute(Kind.STRING, O, NP),
        "dgt": Attribute(Kind.TIME, O, NP),
        "dcnt": Attribute(Kind.POSITIVE, O, NP),
    },
    set(),
    rules=ContentInstanceRules(),
    has_acpi=False,
    subscribable=False,
)
