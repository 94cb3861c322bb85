"""The shape every resource type module fills in: attribute policies and rule hooks.

An attribute policy says what kind of value an attribute holds and whether a CREATE or
UPDATE may set it: M (mandatory), O (optional) or NP (not permitted: the CSE sets it).

Rule hooks decide; they never write. A hook either raises an M2MError, fills in the
attributes of the resource being made, or returns `Change`s that the operation applies in the
same batch as the resource itself (under the write lock, so counters never race).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from cse.core.types import ResourceType as T
from cse.storage.base import Change, Resource

if TYPE_CHECKING:
    from cse.core.context import Context
    from cse.core.primitives import Request


class Kind(Enum):
    STRING = "string"
    COUNT = "non-negative integer"
    POSITIVE = "positive integer"
    INTEGER = "integer"
    NUMBER = "number"  # integer or decimal (SDT float); never a boolean
    BOOLEAN = "boolean"
    STRINGS = "list of strings"
    OBJECT = "object"
    TIMESTAMP = "timestamp"
    # An absolute timestamp, or a relative time as an integer (or its digits as a string):
    # TS-0004's absRelTimestamp, for dgt.
    TIME = "timestamp or integer"
    ANY = "any value"


M, O, NP = "M", "O", "NP"  # noqa: E741 - the spec's own letters


@dataclass(frozen=True, slots=True)
class Attribute:
    kind: Kind
    create: str = O
    update: str = O


class TypeRules:
    """A type with no behaviour beyond its attributes; types with some override hooks."""

    # What requests may do to a resource of this type; a refusal is 4005 with this reason.
    created_by_request: str | None = None
    updated_by_request: str | None = None
    deleted_by_request: str | None = None
    # The type of the instances a resource of this type holds, reachable as its virtual
    # children `la` (newest) and `ol` (oldest): contentInstances of a container.
    instance_type: int | None = None

    async def register(
        self,
        ctx: Context,
        request: Request,
        originator: str,
        parent: Resource,
        attributes: dict[str, Any],
    ) -> tuple[str, str] | None:
        """(owner, resource ID) when creating one is a registration (AE, remoteCSE), which
        replaces the parent's CREATE access check; None for every other type."""
        return None

    async def check_create(
        self, ctx: Context, originator: str, parent: Resource, attributes: dict[str, Any]
    ) -> None:
        """Checks before the write lock is taken (may resolve or normalise attributes)."""

    async def confirm_create(
        self,
        ctx: Context,
        originator: str,
        parent: Resource,
        attributes: dict[str, Any],
        resource_id: str,
    ) -> None:
        """Last checks before the write lock, which need the new resource's ID (a
        subscription's verification request names the subscription)."""

    async def on_create(self, ctx: Context, new: dict[str, Any], parent: Resource) -> list[Change]:
        """Fill in the attributes the CSE sets on a new resource, under the write lock."""
        return []

    async def on_child_added(
        self, ctx: Context, resource: Resource, child: dict[str, Any]
    ) -> list[Change]:
        """A child is being created under `resource` (under the write lock); the child's
        attributes may still be adjusted. Returns the changes to `resource` and others."""
        return []

    async def check_update(
        self,
        ctx: Context,
        request: Request,
        originator: str,
        resource: Resource,
        changes: dict[str, Any],
    ) -> None:
        """Checks of an UPDATE before the write lock (may normalise `changes`)."""

    async def check_retrieve(self, ctx: Context, resource: Resource) -> None:
        """Checks of a RETRIEVE, after access control (a refusal raises)."""

    def shown(self, ctx: Context, resource: Resource) -> Resource:
        """The resource as a RETRIEVE shows it: attributes computed when it is read."""
        return resource

    def changes_on_retrieve(self, resource: Resource) -> bool:
        """Whether a RETRIEVE of `resource` changes it (on_retrieved then runs)."""
        return False

    async def on_retrieved(self, ctx: Context, resource: Resource) -> list[Change]:
        """What a RETRIEVE of `resource` changes (under the write lock, on a fresh read)."""
        return []

    def hidden_children(self, resource: Resource) -> frozenset[int]:
        """Types of children that child listings and discovery do not show."""
        return frozenset()

    async def on_update(
        self, ctx: Context, resource: Resource, values: dict[str, Any]
    ) -> list[Change]:
        """Adjust the values an UPDATE writes (under the write lock); extra changes."""
        return []

    async def check_delete(self, ctx: Context, resource: Resource) -> None:
        """Checks of a DELETE by request, after access control (a refusal raises)."""

    def on_child_removed(self, resource: Resource, child: Resource) -> dict[str, Any]:
        """Attributes of `resource` that change when `child` is deleted."""
        return {}


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    type: T
    key: str  # wrapper key on the wire, e.g. m2m:cnt
    short: str  # the part after "m2m:"
    attributes: dict[str, Attribute]
    children: frozenset[T]
    has_acpi: bool = True
    subscribable: bool = True
    id_prefix: str = ""
    rules: TypeRules = field(default_factory=TypeRules)
    # A type with several specializations (mgmtObj, flexContainer): the attribute that tells
    # a stored resource's specialization (mgd, cnd) on the type's own spec, and its value on
    # each specialization's spec. None for the many types with one shape.
    specialized_by: str | None = None
    specialization: int | str | None = None


_COMMON = {
    "ty": Attribute(Kind.INTEGER, NP, NP),
    "ri": Attribute(Kind.STRING, NP, NP),
    "rn": Attribute(Kind.STRING, O, NP),
    "pi": Attribute(Kind.STRING, NP, NP),
    "ct": Attribute(Kind.TIMESTAMP, NP, NP),
    "lt": Attribute(Kind.TIMESTAMP, NP, NP),
    "et": Attribute(Kind.TIMESTAMP, O, O),
    "lbl": Attribute(Kind.STRINGS, O, O),
    "at": Attribute(Kind.STRINGS, O, O),
    "aa": Attribute(Kind.STRINGS, O, O),
}
_ACPI = {"acpi": Attribute(Kind.STRINGS, O, O)}
# Only null is accepted: the CSE fills in the creator (TS-0001 9.6.1.3).
_CREATOR = {"cr": Attribute(Kind.ANY, O, NP)}


def resource_spec(
    type_: T,
    short: str,
    attributes: dict[str, Attribute],
    children: set[T],
    *,
    rules: TypeRules | None = None,
    has_acpi: bool = True,
    has_creator: bool = True,
    subscribable: bool = True,
    id_prefix: str = "",
    specialized_by: str | None = None,
    specialization: int | str | None = None,
) -> ResourceSpec:
    """A spec with the universal and common attributes (TS-0001 9.6.1.3) merged in."""
    merged = dict(_COMMON)
    if has_acpi:
        merged.update(_ACPI)
    if has_creator:
        merged.update(_CREATOR)
    merged.update(attributes)
    return ResourceSpec(
        type_,
        f"m2m:{short}",
        short,
        merged,
        frozenset(children),
        has_acpi,
        subscribable,
        id_prefix or short,
        rules or TypeRules(),
        specialized_by,
        specialization,
    )
