"""<timeSeriesInstance> (TS-0001 9.6.37): one data point of a timeSeries, immutable once made.

Its timeSeries refuses a second instance with the same `dgt`, holds it to `mbs`, caps its
lifetime, evicts older ones and watches for missing ones (time_series.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cse.core.clock import format_timestamp, parse_timestamp
from cse.core.resources.base import NP, Attribute, Kind, M, O, TypeRules, resource_spec
from cse.core.resources.content_instance import content_size
from cse.core.types import ResourceType as T
from cse.storage.base import Change, Resource

if TYPE_CHECKING:
    from cse.core.context import Context


class TimeSeriesInstanceRules(TypeRules):
    updated_by_request = "a timeSeriesInstance cannot be updated"

    async def on_create(self, ctx: Context, new: dict[str, Any], parent: Resource) -> list[Change]:
        # Stored in one form, so that two instances of one moment have equal dgt text.
        new["dgt"] = format_timestamp(parse_timestamp(new["dgt"]))
        new["cs"] = content_size(new["con"])
        return []


SPEC = resource_spec(
    T.TIME_SERIES_INSTANCE,
    "tsi",
    {
        "dgt": Attribute(Kind.TIMESTAMP, M, NP),
        "con": Attribute(Kind.ANY, M, NP),
        "cs": Attribute(Kind.COUNT, NP, NP),
        "snr": Attribute(Kind.COUNT, O, NP),
    },
    set(),
    rules=TimeSeriesInstanceRules(),
    has_acpi=False,
    subscribable=False,
)
