"""What CIS/Billing and the MDMS say to each other: where, and in which payloads.

Both are AEs on the head-end's IN-CSE, and everything between them is a contentInstance:

  <cse>/cis/billing-cycles/<cycle>   CIS's billing cycles: {"cycle": "c3", "meters": [...]}
  <cse>/mdms/bulk-read-requests      a request (rows 1Aa, 25 bytes): CIS writes it, the MDMS
                                     is notified; only CIS may write here (an ACP)
  <cse>/cis/bulk-read-data           the answer: the batch's reads, in segments; the MDMS
                                     writes it, CIS is notified

A request names a billing cycle rather than its meters, so it keeps to the table's 25 bytes
however many meters the cycle holds: {"id":"b5k1","cycle":"c3"} is 26 bytes of payload (the
envelope members `type` and `ts` are not counted, as for the meters' messages; `ts` is the
utility clock at sending). The MDMS reads the cycle's meters when the request arrives.

An answer is {"type":"resp-data","id":..,"cycle":..,"seg":i,"of":n,"reads":{meter: read},
"missing":{meter: why}} in n contentInstances of at most `bulk_read_segment_bytes` each; CIS
puts the reads and the missing meters of all n together. The reads are the meters'
multiple-interval reads as they sent them, without the envelope and the command's `ref`. A
request the MDMS cannot serve is answered with a segment that carries `error`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from cse.serialization import content_object

CIS_NAME = "cis"  # CIS's AE resource name
CYCLES_CONTAINER = "billing-cycles"
DATA_CONTAINER = "bulk-read-data"
REQUESTS_CONTAINER = "bulk-read-requests"
REQUESTS_POLICY = "bulk-read-requests-acp"
# Meter data members the answer leaves out: the envelope and the command's id.
NOT_READ = ("flow", "type", "seq", "ref")
ENVELOPE = ("type", "ts")  # a request's members that are not its payload
MAX_CYCLE_METERS = 1000  # as `[headend.cis] batch_size` allows
_NAME = re.compile(r"^[a-z0-9]{1,16}$")


class BillingMessageError(ValueError):
    """A request, cycle or answer that is not what the other side can use; says why."""


@dataclass(frozen=True, slots=True)
class BulkReadRequest:
    id: str
    cycle: str
    utility_ts: float | None  # when CIS sent it, on the utility clock
    size: int  # payload bytes


@dataclass(frozen=True, slots=True)
class DataSegment:
    id: str
    cycle: str
    number: int  # 1..of
    of: int
    reads: dict[str, Any]
    missing: dict[str, str]
    error: str | None
    size: int  # payload bytes


def payload_size(content: Mapping[str, Any], envelope: tuple[str, ...] = ENVELOPE) -> int:
    """Bytes of a payload as compact JSON without its envelope (interop/sizes.py's rule)."""
    return len(orjson.dumps({k: v for k, v in content.items() if k not in envelope}))


def instance(content: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    """The contentInstance that carries `content` (JSON text, as the meters' commands)."""
    cin: dict[str, Any] = {"cnf": "application/json:0", "con": orjson.dumps(content).decode()}
    if name is not None:
        cin["rn"] = name
    return {"m2m:cin": cin}


def checked_name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise BillingMessageError(f"{what} must be 1 to 16 lower-case letters or digits")
    return value


# ---- requests and cycles ------------------------------------------------------------------


def request_content(request_id: str, cycle: str, utility_ts: float) -> dict[str, Any]:
    return {"type": "cmd", "ts": int(utility_ts), "id": request_id, "cycle": cycle}


def parse_request(con: Any) -> BulkReadRequest:
    content = content_object(con)
    request_id = checked_name("a request's id", content.get("id"))
    cycle = checked_name(f"request {request_id}: cycle", content.get("cycle"))
    extra = set(content) - {"id", "cycle", *ENVELOPE}
    if extra:
        raise BillingMessageError(f"request {request_id}: unknown members {sorted(extra)}")
    ts = content.get("ts")
    utility_ts = float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else None
    return BulkReadRequest(request_id, cycle, utility_ts, payload_size(content))


def cycle_content(cycle: str, meters: list[str]) -> dict[str, Any]:
    return {"cycle": cycle, "meters": meters}


def parse_cycle(cycle: str, con: Any) -> list[str]:
    meters = content_object(con).get("meters")
    if (
        not isinstance(meters, list)
        or not 1 <= len(meters) <= MAX_CYCLE_METERS
        or not all(isinstance(m, str) and m for m in meters)
    ):
        raise BillingMessageError(
            f"billing cycle {cycle} must list 1 to {MAX_CYCLE_METERS} meter ids"
        )
    return list(dict.fromkeys(meters))


# ---- answers ------------------------------------------------------------------------------


def read_of(content: Mapping[str, Any]) -> dict[str, Any]:
    """A meter's answer as CIS gets it: its read without the envelope and the `ref`."""
    return {key: value for key, value in content.items() if key not in NOT_READ}


def data_segments(
    request_id: str,
    cycle: str,
    reads: Mapping[str, Any],
    missing: Mapping[str, str],
    max_bytes: int,
    error: str | None = None,
) -> list[dict[str, Any]]:
    """The answer to a request, in segments of at most `max_bytes` of JSON each: the reads,
    then the missing meters, as many to a segment as fit. One meter's read is never split
    (2.4 KB at most, and `max_bytes` is at least 4 KB)."""
    overhead = len(orjson.dumps(_segment(request_id, cycle, {}, {}, error))) + 16  # seg, of
    room = max_bytes - overhead
    parts: list[tuple[dict[str, Any], dict[str, str]]] = [({}, {})]
    used = 0
    for kind, entries in enumerate((reads, missing)):
        for meter, value in entries.items():
            size = len(orjson.dumps({meter: value}))  # its braces make room for a comma
            if used + size > room and (parts[-1][0] or parts[-1][1]):
                parts.append(({}, {}))
                used = 0
            parts[-1][kind][meter] = value
            used += size
    segments = [_segment(request_id, cycle, part_reads, part_missing, error)
                for part_reads, part_missing in parts]  # fmt: skip
    for number, segment in enumerate(segments, 1):
        segment.update(seg=number, of=len(segments))
    return segments


def _segment(
    request_id: str,
    cycle: str,
    reads: dict[str, Any],
    missing: dict[str, str],
    error: str | None,
) -> dict[str, Any]:
    segment = {
        "type": "resp-data",
        "id": request_id,
        "cycle": cycle,
        "seg": 0,
        "of": 0,
        "reads": reads,
        "missing": missing,
    }
    if error is not None:
        segment["error"] = error
    return segment


def parse_segment(con: Any) -> DataSegment:
    content = content_object(con)
    request_id = checked_name("an answer's id", content.get("id"))
    number, of = content.get("seg"), content.get("of")
    reads, missing, error = content.get("reads"), content.get("missing"), content.get("error")
    if not (
        isinstance(number, int)
        and isinstance(of, int)
        and 1 <= number <= of
        and isinstance(reads, dict)
        and isinstance(missing, dict)
        and (error is None or isinstance(error, str))
    ):
        raise BillingMessageError(f"answer {request_id}: a malformed segment")
    return DataSegment(
        request_id,
        str(content.get("cycle", "")),
        number,
        of,
        reads,
        {str(meter): str(why) for meter, why in missing.items()},
        error,
        payload_size(content, ("type",)),
    )
