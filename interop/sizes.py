"""The size verdict of a row: what a payload's size is, and which sizes a row accepts.

What is measured: the `con` of the contentInstance the meter sends, as the compact JSON text
it sends it in, less the four envelope members every message carries (`flow`, `type`, `seq`,
`ts`). The tables' "App Payload Size" is the application's data; the envelope names the row
and orders the messages, as a protocol header would, and alone it would break the 25-byte
rows (`"flow":"han-join-ack-utl"` is 26 bytes). The meter agents size their payloads the same
way (`device_agents/agent/flows.py`, `payload_size`).

The rule (docs/interop.md): a range such as "200 - 2400" holds as given; a single number N
such as "25" is a nominal size, held to N ± 20 % (20-30 bytes for 25), because a payload of
real readings varies with its values' digits; a symbolic size ("xMB") bounds nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from interop.catalogue import FlowRow

ENVELOPE = ("flow", "type", "seq", "ts")
# What an ESI adds to the gas meter's record it relays (`gm` marks one; device_agents/agent/
# esi.py): the gas meter, the ESI's receipt time and which ESI. Framing of the relay, as the
# envelope is of every message: the row's size is the gas meter's data, on either leg.
RELAYED = ("gm", "rx", "via")
NOMINAL_TOLERANCE = 0.2
SHOWN = 10  # offending sizes listed in the report: the smallest and the largest


def payload_bytes(content: Mapping[str, Any]) -> int:
    """Bytes of a message's payload: its `con` as compact JSON, without the envelope (and,
    for a record an ESI relayed, without what the ESI added)."""
    framing = ENVELOPE + RELAYED if "gm" in content else ENVELOPE
    data = {key: value for key, value in content.items() if key not in framing}
    return len(json.dumps(data, separators=(",", ":")).encode())


@dataclass(frozen=True)
class SizeRule:
    """The sizes a row accepts, inclusive, and the rule that gave them."""

    low: int
    high: int
    rule: str  # "range" or "nominal ±20 %"


def size_rule(row: FlowRow) -> SizeRule | None:
    """The row's accepted sizes; None when the table gives no number (a symbolic size)."""
    low, high = row.size_min_bytes, row.size_max_bytes
    if low is None or high is None:
        return None
    if low != high:
        return SizeRule(low, high, "range")
    slack = low * NOMINAL_TOLERANCE
    return SizeRule(math.ceil(low - slack), math.floor(high + slack), "nominal ±20 %")


@dataclass(frozen=True)
class SizeVerdict:
    """The sizes seen on a row, and those of them the row's rule does not accept."""

    seen_min: int | None
    seen_max: int | None
    rule: SizeRule | None
    out_of_range: int  # payloads outside the accepted sizes
    offending: tuple[int, ...]  # distinct offending sizes, the extremes first

    @property
    def failed(self) -> bool:
        return self.out_of_range > 0


def judge_sizes(row: FlowRow, sizes: Iterable[int]) -> SizeVerdict:
    seen = list(sizes)
    rule = size_rule(row)
    bad = [] if rule is None else [s for s in seen if not rule.low <= s <= rule.high]
    return SizeVerdict(
        seen_min=min(seen) if seen else None,
        seen_max=max(seen) if seen else None,
        rule=rule,
        out_of_range=len(bad),
        offending=_extremes(sorted(set(bad))),
    )


def _extremes(distinct: list[int]) -> tuple[int, ...]:
    """Up to SHOWN sizes, half from each end: the worst offenders on either side."""
    if len(distinct) <= SHOWN:
        return tuple(distinct)
    half = SHOWN // 2
    return tuple(distinct[:half] + distinct[-half:])
