"""<flexContainer> (TS-0001 9.6.35): a container whose attributes a model defines.

One type number, many specializations: each TS-0023 model class (sdt_models.py) becomes a
spec of its own, with its wrapper key (`cod:eneCn`), its containerDefinition (`cnd`, which
must name that model) and its data points as custom attributes beside the type's own. The
CSE keeps `st` (+1 per change) and `cs` (the size of the custom attributes).

flexContainerInstances (ty 58) are not kept: ACME makes them only when the Release 5
`fcied` (fcinEnabled) is set, and, as ACME without it, `mni`, `mbs` and `mia` are refused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cse.core.errors import BadRequest
from cse.core.resources.base import (
    NP,
    Attribute,
    Kind,
    M,
    O,
    ResourceSpec,
    TypeRules,
    resource_spec,
)
from cse.core.resources.sdt_models import MODEL_CLASSES, ModelClass
from cse.core.types import ResourceType as T
from cse.storage.base import Change, Resource

if TYPE_CHECKING:
    from cse.core.context import Context
    from cse.core.primitives import Request

_INSTANCE_LIMITS = ("mni", "mbs", "mia")


def custom_size(value: Any) -> int:
    """Bytes one custom attribute holds, counted as ACME does: an integer 4, a decimal 8,
    text its UTF-8 bytes (ACME: characters), a boolean 1 (ACME: 4, as an int)."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        return 4
    if isinstance(value, float):
        return 8
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        return sum(custom_size(item) for item in value)
    if isinstance(value, dict):
        return sum(custom_size(item) for item in value.values())
    return 0


def _refuse_instance_limits(attributes: dict[str, Any]) -> None:
    sent = [name for name in _INSTANCE_LIMITS if attributes.get(name) is not None]
    if sent:
        raise BadRequest(
            f"{', '.join(sent)}: limits of flexContainerInstances, which this CSE does not "
            "keep (they need fcinEnabled, fcied)"
        )


class FlexContainerRules(TypeRules):
    def __init__(self, model: ModelClass) -> None:
        self.model = model
        self.custom = frozenset(point.short for point in model.data_points)
        self.required = frozenset(point.short for point in model.data_points if point.required)

    def content_size(self, attributes: dict[str, Any]) -> int:
        return sum(custom_size(attributes.get(name)) for name in self.custom)

    async def check_create(
        self, ctx: Context, originator: str, parent: Resource, attributes: dict[str, Any]
    ) -> None:
        if attributes["cnd"] != self.model.definition:
            raise BadRequest(f"{self.model.key} needs cnd {self.model.definition}")
        _refuse_instance_limits(attributes)

    async def on_create(self, ctx: Context, new: dict[str, Any], parent: Resource) -> list[Change]:
        new.update(st=0, cs=self.content_size(new))
        return []

    async def check_update(
        self,
        ctx: Context,
        request: Request,
        originator: str,
        resource: Resource,
        changes: dict[str, Any],
    ) -> None:
        _refuse_instance_limits(changes)
        # The model's cardinality-1 data points may be left out of a CREATE (as ACME lets a
        # device fill them in later) but, once there, not removed.
        removed = sorted(
            name for name in self.required if name in changes and changes[name] is None
        )
        if removed:
            raise BadRequest(f"{removed[0]} is mandatory in {self.model.key}: it cannot be removed")

    async def on_update(
        self, ctx: Context, resource: Resource, values: dict[str, Any]
    ) -> list[Change]:
        final = {**resource.attributes, **values}
        values.update(st=int(resource.attributes.get("st", 0)) + 1, cs=self.content_size(final))
        return []


SPEC = resource_spec(
    T.FLEX_CONTAINER,
    "fcnt",
    {
        "cnd": Attribute(Kind.STRING, M, NP),
        "or": Attribute(Kind.STRING),
        "nl": Attribute(Kind.STRING),
        "cs": Attribute(Kind.COUNT, NP, NP),
        "st": Attribute(Kind.COUNT, NP, NP),
        "mni": Attribute(Kind.COUNT),
        "mbs": Attribute(Kind.COUNT),
        "mia": Attribute(Kind.COUNT),
        "cni": Attribute(Kind.COUNT, NP, NP),
        "cbs": Attribute(Kind.COUNT, NP, NP),
    },
    {T.CONTAINER, T.FLEX_CONTAINER, T.SUBSCRIPTION},
    specialized_by="cnd",
)


def specialize(model: ModelClass) -> ResourceSpec:
    """The spec of one model class: the type's attributes plus the model's data points."""
    custom = {point.short: Attribute(point.kind, O, O) for point in model.data_points}
    clash = custom.keys() & SPEC.attributes.keys()
    assert not clash, f"{model.key} redefines {clash}"
    return replace(
        SPEC,
        key=model.key,
        short=model.key.partition(":")[2],
        attributes={**SPEC.attributes, **custom},
        rules=FlexContainerRules(model),
        specialized_by=None,
        specialization=model.definition,
    )


SPECIALIZATIONS = tuple(specialize(model) for model in MODEL_CLASSES)
