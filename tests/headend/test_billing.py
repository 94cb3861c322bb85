"""CIS/Billing and the MDMS's bulk reads (`headend/cis.py`, `headend/bulk_reads.py`,
`headend/billing.py`) on a running head-end: its IN-CSE, its MDMS store in a SQLite file, and
no gateway behind it, so every meter here is one no DAP knows, or one whose answer the test
hands the MDMS as its notification would. tests/system/test_billing.py runs the whole chain
with a gateway and meters."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from cse.app import CSEConfig, HttpConfig
from cse.core.types import Operation, ResourceType
from cse.core.types import ResponseStatusCode as RSC
from headend.app import RunningHeadend, running_headend
from headend.billing import (
    BillingMessageError,
    data_segments,
    instance,
    parse_request,
    parse_segment,
    payload_size,
    request_content,
)
from headend.bulk_reads import NO_ANSWER
from headend.cis import CisError, UtilityClock, in_window, slot_from
from headend.config import CIS_AE, CisConfig, DashboardConfig, HeadendConfig, MdmsConfig
from headend.local_ae import LocalAe
from headend.store import BulkReadReceived, CisRequest, MdmsStore, MeterMessage, SQLiteMdmsStore

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
HOUR = 3600.0
REQUESTS = "cse-in/mdms/bulk-read-requests"

HeadendFactory = Callable[..., Awaitable[RunningHeadend]]


def config(tmp_path: Path, **mdms: Any) -> HeadendConfig:
    return HeadendConfig(
        cse=CSEConfig(db=str(tmp_path / "in.db"), http=HttpConfig(port=0)),
        mdms=MdmsConfig(db=str(tmp_path / "mdms.db"), **mdms),
        dashboard=DashboardConfig(port=0, password="a password for the tests"),
        cis=CisConfig(enabled=False),
    )


@pytest.fixture
async def headend(tmp_path: Path) -> AsyncIterator[RunningHeadend]:
    async with running_headend(config(tmp_path)) as running:
        yield running


def at_utility(headend: RunningHeadend, utility_ts: float, **changes: Any) -> None:
    """CIS's clock reads `utility_ts` now (and runs at wall speed); no scheduled sending."""
    clock = UtilityClock(1.0, utility_ts, headend.cis.clock())
    headend.cis.configure(clock=clock, batches_per_day=0, **changes)


async def answered(store: MdmsStore, request_id: str) -> dict[str, Any]:
    """The request once CIS has its answer (waits on the store's changes)."""
    version = store.version
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = await store.cis_request(request_id)
        if found is not None and found["data_received_at"] is not None:
            return found
        version = await store.wait_for_change(version, timeout=1)
    raise AssertionError(f"no answer to {request_id}: {await store.cis_request(request_id)}")


async def instances_in(headend: RunningHeadend, path: str) -> int:
    reply = await LocalAe(headend.cse.cse, "CAdmin").request(Operation.RETRIEVE, path)
    return int(reply.content["m2m:cnt"]["cni"])


# ---- the payloads ---------------------------------------------------------------------------


def test_a_request_is_the_rows_25_bytes_whatever_its_cycle_holds() -> None:
    smallest = request_content("b001", "c1", T0)
    largest = request_content("bzzzzz", "c999", T0)  # 46,656 requests, 999 cycles
    assert [payload_size(smallest), payload_size(largest)] == [26, 30]  # 25 ± 20 %
    parsed = parse_request(orjson.dumps(largest).decode())
    assert (parsed.id, parsed.cycle, parsed.utility_ts, parsed.size) == ("bzzzzz", "c999", T0, 30)


@pytest.mark.parametrize(
    ("con", "problem"),
    [
        ("not json", "a request's id must be"),
        ({"id": "B1", "cycle": "c1"}, "a request's id must be"),
        ({"id": "b1", "cycle": "../x"}, "request b1: cycle must be"),
        ({"id": "b1", "cycle": "c1", "meters": ["m1"]}, r"unknown members \['meters'\]"),
    ],
)
def test_a_malformed_request_says_what_is_wrong(con: Any, problem: str) -> None:
    with pytest.raises(BillingMessageError, match=problem):
        parse_request(con)


def test_a_large_answer_is_split_into_segments_that_each_fit() -> None:
    reads = {f"m{n:03}": {"t0": n, "ch": [{"v": [n % 7] * 300}]} for n in range(40)}
    missing = {f"x{n}": NO_ANSWER for n in range(200)}  # too many to ride with the reads
    segments = data_segments("b1", "c1", reads, missing, 4096)
    assert len(segments) > 2
    assert all(len(orjson.dumps(segment)) <= 4096 for segment in segments)
    parsed = [parse_segment(orjson.dumps(segment).decode()) for segment in segments]
    assert [(p.number, p.of) for p in parsed] == [
        (number, len(segments)) for number in range(1, len(segments) + 1)
    ]
    together: dict[str, Any] = {}
    for part in parsed:
        entries = {**part.reads, **part.missing}
        assert not set(together) & set(entries)  # each meter once
        together.update(entries)
    assert together == {**reads, **missing}


# ---- the window -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hour", "inside"),
    [(18, True), (23.99, True), (0, True), (5.99, True), (6, False), (12, False), (17.99, False)],
)
def test_the_window_is_18_to_6(hour: float, inside: bool) -> None:
    assert in_window(T0 + hour * HOUR) is inside


@pytest.mark.parametrize(
    ("now", "per_day", "slot"),
    [
        (12, 4, 18),  # before the window: its start
        (18, 4, 18),  # at a slot: that slot
        (18.01, 4, 21),
        (23, 4, 24),  # 18, 21, 00, 03
        (3.5, 4, 18),  # after the last slot of the night: the next evening
        (5.99, 1, 18),
        (19.2, 24, 19.5),  # every half hour
    ],
)
def test_requests_are_spread_over_the_window_from_18(now: float, per_day: int, slot: float) -> None:
    assert slot_from(T0 + now * HOUR, per_day) == pytest.approx(T0 + slot * HOUR)


@pytest.mark.parametrize("hour", [6, 12, 17.99])
async def test_a_request_outside_18_to_6_is_not_sent(headend: RunningHeadend, hour: float) -> None:
    at_utility(headend, T0 + hour * HOUR, roster=("m1", "m2"))
    with pytest.raises(CisError, match=r"only between 18:00 and 06:00 \(it is \d\d:\d\d\)"):
        await headend.cis.send_request()
    assert await headend.store.cis_requests() == []
    assert await instances_in(headend, REQUESTS) == 0


async def test_on_its_schedule_cis_sends_in_the_window_cycle_after_cycle(
    headend: RunningHeadend,
) -> None:
    # A clock an hour a second, from just before 18:00, and a request an hour: 18:00 comes
    # at once, then one a second.
    clock = UtilityClock(HOUR, T0 + 18 * HOUR - 1, headend.cis.clock())
    headend.cis.configure(clock=clock, batches_per_day=12, batch_size=2, roster=("a", "b", "c"))
    version, sent = headend.store.version, []
    while len(sent) < 3:
        version = await headend.store.wait_for_change(version, timeout=30)
        sent = await headend.store.cis_requests()
    assert [r["cycle"] for r in sent[:3]] == ["c1", "c2", "c1"]
    assert [r["meters"] for r in sent[:3]] == [2, 1, 2]
    assert all(in_window(r["utility_ts"]) for r in sent)


# ---- requests and answers -------------------------------------------------------------------


async def test_only_cis_may_write_into_the_mdms_request_container(
    headend: RunningHeadend,
) -> None:
    other = LocalAe(headend.cse.cse, "Cother")
    reply = await other.request(
        Operation.CREATE,
        "cse-in",
        resource_type=ResourceType.AE,
        content={"m2m:ae": {"rn": "other", "api": "Nother", "rr": False, "srv": ["3"]}},
    )
    assert reply.status == RSC.CREATED
    request = instance(request_content("b1", "c1", T0))
    for operation, path, content in (
        (Operation.CREATE, REQUESTS, request),
        (Operation.RETRIEVE, REQUESTS, None),
        (Operation.UPDATE, "cse-in/mdms/bulk-read-requests-acp", {"m2m:acp": {"pv": {}}}),
        (Operation.DELETE, REQUESTS, None),
    ):
        kind = ResourceType.CONTENT_INSTANCE if operation == Operation.CREATE else None
        reply = await other.request(operation, path, resource_type=kind, content=content)
        assert reply.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE, (operation, reply.content)
    cis = LocalAe(headend.cse.cse, CIS_AE)
    # CIS may write a request, and nothing else: not read them back, not delete them.
    reply = await cis.request(Operation.RETRIEVE, REQUESTS)
    assert reply.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    reply = await cis.request(
        Operation.CREATE, REQUESTS, resource_type=ResourceType.CONTENT_INSTANCE, content=request
    )
    assert reply.status == RSC.CREATED


async def test_cis_and_the_mdms_start_again_on_the_same_databases(tmp_path: Path) -> None:
    answers = []
    for _ in range(2):
        async with running_headend(config(tmp_path)) as headend:
            at_utility(headend, T0 + 19 * HOUR, roster=("m1",))
            sent = await headend.cis.send_request()
            answers.append(await answered(headend.store, sent.id))
            reply = await LocalAe(headend.cse.cse, "Cmeter").request(
                Operation.CREATE,
                REQUESTS,
                resource_type=ResourceType.CONTENT_INSTANCE,
                content=instance(request_content("b9", "c1", T0)),
            )
            assert reply.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    assert [a["missing"].keys() for a in answers] == [{"m1"}, {"m1"}]
    assert answers[0]["id"] != answers[1]["id"]


async def test_meters_no_dap_knows_are_listed_missing_and_answered_at_once(
    headend: RunningHeadend,
) -> None:
    at_utility(headend, T0 + 19 * HOUR, roster=("m1", "m2", "m3"), batch_size=2)
    sent = await headend.cis.send_request()
    size = payload_size(request_content(sent.id, "c1", T0))
    assert (sent.cycle, sent.meters, sent.size, sent.status) == ("c1", 2, size, RSC.CREATED)
    found = await answered(headend.store, sent.id)
    assert found["status"] == "answered" and found["reads"] == {}
    assert set(found["missing"]) == {"m1", "m2"}
    assert "not registered with any DAP" in found["missing"]["m1"]
    assert found["mdms_status"] == "partial"
    assert found["sent_at"] <= found["mdms_received_at"] <= found["data_received_at"]


async def test_a_request_for_a_cycle_cis_never_wrote_is_refused_with_the_reason(
    headend: RunningHeadend,
) -> None:
    await headend.store.record_cis_request(
        CisRequest("b1", "c7", 0, time.time(), T0 + 19 * HOUR, 26)
    )
    reply = await LocalAe(headend.cse.cse, CIS_AE).request(
        Operation.CREATE,
        REQUESTS,
        resource_type=ResourceType.CONTENT_INSTANCE,
        content=instance(request_content("b1", "c7", T0 + 19 * HOUR)),
    )
    assert reply.status == RSC.CREATED
    found = await answered(headend.store, "b1")
    assert found["status"] == "refused" and found["mdms_status"] == "refused"
    assert found["detail"] == found["mdms_detail"] == "no billing cycle c7 (4004)"


async def seed_open_request(tmp_path: Path, deadline_at: float, commands: dict[str, str]) -> None:
    """A request the MDMS had taken on when the head-end stopped, its commands issued."""
    async with SQLiteMdmsStore(tmp_path / "mdms.db") as store:
        now = time.time()
        await store.record_cis_request(CisRequest("b1", "c1", 2, now, T0 + 19 * HOUR, 26))
        await store.record_bulk_read(BulkReadReceived("b1", "c1", now, deadline_at, commands))


async def test_an_open_request_is_answered_at_its_deadline_after_a_restart(
    tmp_path: Path,
) -> None:
    await seed_open_request(tmp_path, time.time() - 1, {"m1": "cq1", "m2": "cq2"})
    async with running_headend(config(tmp_path)) as headend:
        found = await answered(headend.store, "b1")
    assert found["reads"] == {}
    assert found["missing"] == {"m1": NO_ANSWER, "m2": NO_ANSWER}
    assert found["mdms_status"] == "partial"


def interval_read(meter: str, command: str, values: int) -> MeterMessage:
    channel = {"rt": "x", "v": list(range(values)), "r0": 1000}
    content = {"flow": "mr-multi-interval", "type": "resp-data", "seq": 3, "ts": int(T0),
               "t0": int(T0) - 900 * values, "ip": 900, "n": values, "ch": [channel],
               "ref": command}  # fmt: skip
    now = time.time()
    return MeterMessage(
        key=f"id-dap1/{meter}-{command}", dap="id-dap1", meter=meter, family="reading",
        flow="mr-multi-interval", ptype="resp-data", seq=3, meter_ts=T0, created_at=now,
        received_at=now, size=0, budget_s=3600.0, priority=3, content=content,
    )  # fmt: skip


async def test_the_meters_answers_complete_a_request_and_reach_cis_in_segments(
    tmp_path: Path,
) -> None:
    await seed_open_request(tmp_path, time.time() + 3600, {"m1": "cq1@m1", "m2": "cq1@m2"})
    headend_config = config(tmp_path, bulk_read_segment_bytes=4096)
    async with running_headend(headend_config) as headend:
        # What the MDMS does with meter messages it stored: hand them to its listeners.
        for meter in ("m1", "m2"):
            message = interval_read(meter, "cq1", 700)
            await headend.store.record_messages([message])
            await headend.bulk_reads.on_messages([message])
        found = await answered(headend.store, "b1")
    assert found["missing"] == {} and found["mdms_status"] == "complete"
    assert sorted(found["reads"]) == ["m1", "m2"]
    assert found["reads"]["m2"]["ch"][0]["v"] == list(range(700))
    assert "ref" not in found["reads"]["m1"] and "flow" not in found["reads"]["m1"]
    assert found["segments"] == found["mdms_segments"] == 2
    assert found["data_size"] == found["mdms_data_size"] > 4096
