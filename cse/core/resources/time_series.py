"""<timeSeries> (TS-0001 9.6.36): instances with a data generation time, and missing data.

It holds its instances as a container does (`mni`, `mbs`, `mia`, exact `cni`/`cbs`, the
oldest evicted first, `la`/`ol`: the functions of container.py), refuses a second instance
with the same `dgt` (4105, as ACME), and with `mdd` true watches for missing data points
(cse/core/missing_data.py), listing them in `mdlt` / `mdc`.

The detection parameters follow ACME: `peid` defaults to half of `pei` (or of `mdt` when
that is smaller) and may be at most `pei`/2; `mdd` true needs `mdt` above `peid`; while
`mdd` is true, `pei`, `peid`, `mdt` and `mdn` cannot change, and `mdd` changes alone.
Setting `mdd` true (again) clears `mdlt` and restarts detection with the next instance;
setting it false keeps the list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cse.core.errors import BadRequest, Conflict
from cse.core.resources.base import NP, Attribute, Kind, O, TypeRules, resource_spec
from cse.core.resources.container import RETENTION, admit_instance, instance_removed, refit
from cse.core.resources.content_instance import CONTENT_FORMAT
from cse.core.types import ResourceType as T
from cse.storage.base import Change, Put, Resource

if TYPE_CHECKING:
    from cse.core.context import Context
    from cse.core.primitives import Request

# What may not change while detection is on, nor together with mdd (ACME).
_DETECTION = ("pei", "peid", "mdt", "mdn")


def _check_detection(attributes: dict[str, Any]) -> None:
    """The detection parameters, as they will be after a CREATE or UPDATE (4000 if not)."""
    for name in ("pei", "mdt", "mdn"):
        if attributes.get(name) == 0:
            raise BadRequest(f"{name} must be a positive number")
    pei, peid, mdt = attributes.get("pei"), attributes.get("peid"), attributes.get("mdt")
    if pei is not None and peid is None:
        # ACME's policy: half the interval, or half the timer if that is shorter.
        attributes["peid"] = peid = mdt // 2 if mdt is not None and mdt <= pei / 2 else pei // 2
    if pei is not None and peid is not None and peid > pei / 2:
        raise BadRequest("peid must be at most pei/2")
    if attributes.get("mdd"):
        if mdt is None:
            raise BadRequest("mdt must be set when mdd is true")
        if peid is not None and mdt <= peid:
            raise BadRequest("mdt must be greater than peid")
    cnf = attributes.get("cnf")
    if cnf is not None and not CONTENT_FORMAT.match(cnf):
        raise BadRequest(f"content info (cnf) {cnf!r} is not media-type:encoding[:security]")


class TimeSeriesRules(TypeRules):
    instance_type = T.TIME_SERIES_INSTANCE

    async def check_create(
        self, ctx: Context, originator: str, parent: Resource, attributes: dict[str, Any]
    ) -> None:
        ctx.quotas.apply_container_limits(originator, attributes, create=True)
        _check_detection(attributes)

    async def on_create(self, ctx: Context, new: dict[str, Any], parent: Resource) -> list[Change]:
        new.setdefault("mdd", False)
        new.update(cni=0, cbs=0, mdc=0)
        return []

    async def on_child_added(
        self, ctx: Context, resource: Resource, child: dict[str, Any]
    ) -> list[Change]:
        if child["ty"] != T.TIME_SERIES_INSTANCE:
            return []
        dgt = child["dgt"]
        if await ctx.storage.find_child(resource.ri, T.TIME_SERIES_INSTANCE, "dgt", dgt):
            raise Conflict(f"{resource.path} already holds an instance generated at {dgt}")
        changes, counters = await admit_instance(ctx, resource, child, T.TIME_SERIES_INSTANCE)
        # Points due before this instance arrived are judged without it.
        now = ctx.clock.now()
        detected, notices = await ctx.missing_data.due(resource, now)
        ctx.missing_data.arrived(resource, dgt, now)
        changes.append(Put(resource.with_attributes(**counters, **detected)))
        return changes + notices

    async def check_update(
        self,
        ctx: Context,
        request: Request,
        originator: str,
        resource: Resource,
        changes: dict[str, Any],
    ) -> None:
        ctx.quotas.apply_container_limits(originator, changes, create=False)
        touched = [name for name in _DETECTION if name in changes]
        if "mdd" in changes:
            if changes["mdd"] is None:
                raise BadRequest("mdd cannot be removed; set it to false")
            if touched:
                raise BadRequest("mdd must be updated alone, without pei, peid, mdt or mdn")
        if resource.attributes.get("mdd") and touched:
            raise BadRequest("pei, peid, mdt and mdn cannot change while mdd is true")
        if changes.get("pei") is not None and "peid" not in changes:
            changes["peid"] = None  # given again below, for the new pei
        merged = {**resource.attributes, **changes}
        merged = {name: value for name, value in merged.items() if value is not None}
        _check_detection(merged)
        if "peid" in changes or "pei" in changes:
            changes["peid"] = merged.get("peid")

    async def on_update(
        self, ctx: Context, resource: Resource, values: dict[str, Any]
    ) -> list[Change]:
        if values.get("mdd") is True or (
            not resource.attributes.get("mdd") and any(name in values for name in _DETECTION)
        ):
            values.update(mdlt=None, mdc=0)  # a fresh start (ACME, as TS-0001 asks)
        if "mdd" in values:
            ctx.missing_data.restart(resource.ri)
        return await refit(ctx, resource, values, T.TIME_SERIES_INSTANCE)

    def on_child_removed(self, resource: Resource, child: Resource) -> dict[str, Any]:
        if child.ty != T.TIME_SERIES_INSTANCE:
            return {}
        return instance_removed(resource, child)


SPEC = resource_spec(
    T.TIME_SERIES,
    "ts",
    {
        **RETENTION,
        "pei": Attribute(Kind.COUNT),
        "peid": Attribute(Kind.COUNT),
        "mdd": Attribute(Kind.BOOLEAN),
        "mdn": Attribute(Kind.COUNT),
        "mdlt": Attribute(Kind.STRINGS, NP, NP),
        "mdc": Attribute(Kind.COUNT, NP, NP),
        "mdt": Attribute(Kind.COUNT),
        "cnf": Attribute(Kind.STRING, O, NP),
        "or": Attribute(Kind.STRING),
    },
    {T.TIME_SERIES_INSTANCE, T.SUBSCRIPTION},
    rules=TimeSeriesRules(),
)
