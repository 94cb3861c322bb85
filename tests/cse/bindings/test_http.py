"""The HTTP binding (TS-0009) over a real loopback server: mapping, serializations, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import cbor2
import orjson
import pytest

from cse.bindings.http import HttpClient, HttpServer
from cse.bindings.http.mapping import (
    http_status,
    path_to_target,
    rsc_from_http,
    target_to_path,
)
from cse.bindings.query import filter_from_query, filter_to_query
from cse.core.errors import BadRequest
from cse.core.handler import CommonServicesEntity
from cse.core.identity import Trust
from cse.core.primitives import FilterCriteria, Request
from cse.core.types import Operation, ResultContent
from cse.core.types import ResponseStatusCode as RSC
from cse.serialization import CBOR
from tests.cse.bindings.conftest import ADMIN, M2M, Reply, check_reply
from tests.helpers import NotificationReceiver, ae_body

AE = "Cmeter"
CNT = {"m2m:cnt": {"rn": "reads", "lbl": ["kind:energy"]}}


def cin(con: str) -> dict[str, Any]:
    return {"m2m:cin": {"cnf": "text/plain:0", "con": con}}


@pytest.fixture
async def meter(m2m: M2M) -> M2M:
    """An AE `meter` (Cmeter) with a container `reads`."""
    assert (await m2m.create("/cse-in", 2, ae_body("meter"), origin=AE)).rsc == RSC.CREATED
    assert (await m2m.create("/cse-in/meter", 3, CNT, origin=AE)).rsc == RSC.CREATED
    return m2m


# ---- CRUD ------------------------------------------------------------------------------------


async def test_create_ae_container_and_instance(m2m: M2M) -> None:
    ae = await m2m.call(
        "POST",
        "/cse-in",
        origin=AE,
        ri="req-0001",
        rvi="3",
        body=ae_body("meter"),
        content_type="application/json;ty=2",
    )
    assert (ae.status, ae.rsc) == (201, 2001)
    assert ae.headers["X-M2M-RI"] == "req-0001" and ae.headers["X-M2M-RVI"] == "3"
    assert ae.headers["Content-Location"] == "/cse-in/meter"
    assert ae.headers["Content-Type"] == "application/json"
    assert ae.content["m2m:ae"]["aei"] == AE and ae.content["m2m:ae"]["ri"] == AE

    cnt = await m2m.call(
        "POST", "/cse-in/meter", origin=AE, body=CNT, content_type="application/json; ty=3"
    )
    assert (cnt.status, cnt.rsc) == (201, 2001)
    assert cnt.headers["Content-Location"] == "/cse-in/meter/reads"
    assert cnt.content["m2m:cnt"]["cni"] == 0

    json_cin = "application/json;ty=4"
    instance = await m2m.call(
        "POST", "/cse-in/meter/reads", origin=AE, body=cin("21.5"), content_type=json_cin
    )
    assert (instance.status, instance.rsc) == (201, 2001)
    assert instance.content["m2m:cin"]["con"] == "21.5"
    assert instance.content["m2m:cin"]["cs"] == 4
    location = instance.headers["Content-Location"]
    assert location.startswith("/cse-in/meter/reads/")
    again = await m2m.retrieve(location, origin=AE)
    assert again.content["m2m:cin"]["ri"] == instance.content["m2m:cin"]["ri"]


async def test_release_version_is_echoed(meter: M2M) -> None:
    for rvi in ("2a", "3", "4", "5"):
        reply = await meter.retrieve("/cse-in/meter", origin=AE, rvi=rvi)
        assert reply.rsc == RSC.OK and reply.headers["X-M2M-RVI"] == rvi


async def test_retrieve_latest_and_oldest(meter: M2M) -> None:
    for value in ("1", "2", "3"):
        await meter.create("/cse-in/meter/reads", 4, cin(value), origin=AE)
    latest = await meter.retrieve("/cse-in/meter/reads/la", origin=AE)
    oldest = await meter.retrieve("/cse-in/meter/reads/ol", origin=AE)
    assert (latest.status, latest.rsc) == (200, 2000)
    assert (latest.content["m2m:cin"]["con"], oldest.content["m2m:cin"]["con"]) == ("3", "1")


async def test_update(meter: M2M) -> None:
    reply = await meter.update(
        "/cse-in/meter/reads", {"m2m:cnt": {"lbl": ["x"], "mni": 2}}, origin=AE
    )
    assert (reply.status, reply.rsc) == (200, 2004)
    assert reply.content["m2m:cnt"]["lbl"] == ["x"] and reply.content["m2m:cnt"]["mni"] == 2
    assert "Content-Location" not in reply.headers
    modified = await meter.update(
        "/cse-in/meter/reads", {"m2m:cnt": {"lbl": ["y"]}}, origin=AE, params={"rcn": "9"}
    )
    # rcn 9: what the CSE changed besides the request's own values (TS-0004, as ACME).
    assert set(modified.content["m2m:cnt"]) == {"lt", "st"}


async def test_delete(meter: M2M) -> None:
    await meter.create("/cse-in/meter/reads", 4, cin("1"), origin=AE)
    gone = await meter.delete("/cse-in/meter/reads/la", origin=AE)
    assert (gone.status, gone.rsc) == (200, 2002)
    assert gone.body == b""  # rcn 0 is the default for DELETE
    deleted = await meter.delete("/cse-in/meter/reads", origin=AE, params={"rcn": "1"})
    assert deleted.content["m2m:cnt"]["rn"] == "reads"
    missing = await meter.retrieve("/cse-in/meter/reads", origin=AE)
    assert (missing.status, missing.rsc) == (404, 4004)


async def test_notify_is_a_post_without_ty(meter: M2M) -> None:
    reply = await meter.call(
        "POST", "/cse-in/meter", origin=AE, body={"m2m:sgn": {"vrq": True, "sur": "/id-in/s"}}
    )
    assert (reply.status, reply.rsc) == (200, 2000)


# ---- serializations --------------------------------------------------------------------------


async def test_cbor_request_and_response(meter: M2M) -> None:
    reply = await meter.create("/cse-in/meter/reads", 4, cin("7"), origin=AE, cbor=True)
    assert (reply.status, reply.rsc) == (201, 2001)
    assert reply.headers["Content-Type"] == "application/cbor"
    assert cbor2.loads(reply.body)["m2m:cin"]["con"] == "7"
    # A oneM2M-specific media type is CBOR too, and ty may follow other parameters.
    update = await meter.update(
        "/cse-in/meter/reads",
        {"m2m:cnt": {"lbl": ["cbor"]}},
        origin=AE,
        cbor=True,
        content_type="application/vnd.onem2m-res+cbor",
    )
    assert update.rsc == RSC.UPDATED and update.headers["Content-Type"] == "application/cbor"
    assert update.content["m2m:cnt"]["lbl"] == ["cbor"]
    binary = await meter.create(
        "/cse-in/meter/reads", 4, {"m2m:cin": {"con": "x" * 30}}, origin=AE, cbor=True
    )
    assert binary.content["m2m:cin"]["cs"] == 30


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("application/*", "application/json"),
        ("application/cbor", "application/cbor"),
        ("application/vnd.onem2m-res+cbor", "application/cbor"),
        ("text/html, application/cbor;q=0.9", "application/cbor"),
        ("application/vnd.onem2m-res+json", "application/json"),
    ],
)
async def test_accept_chooses_the_response_serialization(
    meter: M2M, accept: str | None, expected: str
) -> None:
    reply = await meter.retrieve("/cse-in/meter/reads", origin=AE, accept=accept)
    assert reply.rsc == RSC.OK
    assert reply.headers["Content-Type"] == expected
    assert reply.content["m2m:cnt"]["rn"] == "reads"


async def test_cbor_request_gets_cbor_unless_accept_says_otherwise(meter: M2M) -> None:
    body = {"m2m:cnt": {"rn": "c1"}}
    as_sent = await meter.create("/cse-in/meter", 3, body, origin=AE, cbor=True)
    assert as_sent.headers["Content-Type"] == "application/cbor"
    body = {"m2m:cnt": {"rn": "c2"}}
    as_json = await meter.create(
        "/cse-in/meter", 3, body, origin=AE, cbor=True, accept="application/json"
    )
    assert as_json.headers["Content-Type"] == "application/json"
    assert as_json.content["m2m:cnt"]["rn"] == "c2"


async def test_unacceptable_accept_is_406_and_changes_nothing(meter: M2M) -> None:
    reply = await meter.create(
        "/cse-in/meter", 3, {"m2m:cnt": {"rn": "never"}}, origin=AE, accept="text/html"
    )
    assert (reply.status, reply.rsc) == (406, 5207)
    assert "text/html" in reply.dbg
    assert reply.headers["Content-Type"] == "application/json"  # the request's serialization
    missing = await meter.retrieve("/cse-in/meter/never", origin=AE)
    assert missing.rsc == RSC.NOT_FOUND
    in_cbor = await meter.retrieve(
        "/cse-in/meter", origin=AE, accept="text/xml", raw=b"", content_type="application/cbor"
    )
    assert (
        in_cbor.rsc == RSC.NOT_ACCEPTABLE and in_cbor.headers["Content-Type"] == "application/cbor"
    )


# ---- addressing ------------------------------------------------------------------------------


async def test_every_path_form_reaches_the_container(meter: M2M) -> None:
    ri = (await meter.retrieve("/cse-in/meter/reads", origin=AE)).content["m2m:cnt"]["ri"]
    for path in (
        "/cse-in/meter/reads",
        "/-/meter/reads",
        f"/{ri}",
        "/~/id-in/cse-in/meter/reads",
        f"/~/id-in/{ri}",
        "/_/sp.example/id-in/cse-in/meter/reads",
        f"/_/sp.example/id-in/{ri}",
    ):
        reply = await meter.retrieve(path, origin=AE)
        assert reply.rsc == RSC.OK, path
        assert reply.content["m2m:cnt"]["ri"] == ri
    base = await meter.retrieve("/~/id-in", origin=AE)
    assert base.content["m2m:cb"]["csi"] == "/id-in"


async def test_create_through_an_sp_relative_path(meter: M2M) -> None:
    reply = await meter.create("/~/id-in/cse-in/meter/reads", 4, cin("sp"), origin="/id-in/Cmeter")
    assert reply.rsc == RSC.CREATED
    assert reply.headers["Content-Location"].startswith("/cse-in/meter/reads/")


async def test_an_unknown_cse_is_not_found(meter: M2M) -> None:
    reply = await meter.retrieve("/~/id-mn/cse-mn", origin=AE)
    assert (reply.status, reply.rsc) == (404, 4004)


def test_paths_and_targets_map_both_ways() -> None:
    for to in ("cse-in/meter", "cnt123", "/id-in/cse-in/meter", "//sp.example/id-in/cse-in"):
        assert path_to_target(target_to_path(to)) == to
    assert target_to_path("/id-in/cse-in") == "/~/id-in/cse-in"
    assert target_to_path("//sp/id-in") == "/_/sp/id-in"


# ---- query: discovery, rcn, drt, atrl ----------------------------------------------------------


@pytest.fixture
async def labelled(meter: M2M) -> M2M:
    for name, labels in (("c1", ["a"]), ("c2", ["b"]), ("c3", ["c"])):
        body = {"m2m:cnt": {"rn": name, "lbl": labels}}
        assert (await meter.create("/cse-in/meter", 3, body, origin=AE)).rsc == RSC.CREATED
    await meter.create("/cse-in/meter/reads", 4, cin("1"), origin=AE)
    return meter


async def test_discovery_with_the_query_string(labelled: M2M) -> None:
    reply = await labelled.retrieve("/cse-in?fu=1&ty=3&lbl=a+b&lim=1", origin=AE)
    assert (reply.status, reply.rsc) == (200, 2000)
    assert reply.content == {"m2m:uril": ["cse-in/meter/c1"]}
    both = await labelled.retrieve("/cse-in?fu=1&ty=3&lbl=a+b", origin=AE)
    assert both.content["m2m:uril"] == ["cse-in/meter/c1", "cse-in/meter/c2"]
    repeated = await labelled.retrieve("/cse-in?fu=1&ty=3&lbl=a&lbl=c", origin=AE)
    assert repeated.content["m2m:uril"] == ["cse-in/meter/c1", "cse-in/meter/c3"]
    types = await labelled.retrieve("/cse-in/meter?fu=1&ty=4&ty=2", origin=AE)
    assert len(types.content["m2m:uril"]) == 1 and types.content["m2m:uril"][0].startswith(
        "cse-in/meter/reads/"
    )
    joined = await labelled.retrieve("/cse-in/meter?fu=1&ty=3+4&lvl=1", origin=AE)
    assert joined.content["m2m:uril"] == [
        "cse-in/meter/reads",
        "cse-in/meter/c1",
        "cse-in/meter/c2",
        "cse-in/meter/c3",
    ]
    skipped = await labelled.retrieve("/cse-in/meter?fu=1&ty=3&ofst=3", origin=AE)
    assert skipped.content["m2m:uril"] == ["cse-in/meter/c2", "cse-in/meter/c3"]


async def test_discovery_result_formats(labelled: M2M) -> None:
    structured = await labelled.retrieve("/cse-in?fu=1&lbl=b&drt=1", origin=AE)
    assert structured.content["m2m:uril"] == ["cse-in/meter/c2"]
    unstructured = await labelled.retrieve("/cse-in?fu=1&lbl=b&drt=2", origin=AE)
    (ri,) = unstructured.content["m2m:uril"]
    assert (await labelled.retrieve(f"/{ri}", origin=AE)).content["m2m:cnt"]["rn"] == "c2"
    references = await labelled.retrieve("/cse-in?fu=1&lbl=b&rcn=6", origin=AE)
    assert references.content == {
        "m2m:rrl": {"rrf": [{"nm": "c2", "typ": 3, "val": "cse-in/meter/c2"}]}
    }
    by_attribute = await labelled.retrieve("/cse-in?fu=1&rn=c3", origin=AE)
    assert by_attribute.content["m2m:uril"] == ["cse-in/meter/c3"]


async def test_result_content_in_the_query(labelled: M2M) -> None:
    nested = await labelled.retrieve("/cse-in/meter/reads", origin=AE, params={"rcn": "4"})
    assert [c["con"] for c in nested.content["m2m:cnt"]["m2m:cin"]] == ["1"]
    references = await labelled.retrieve("/cse-in/meter", origin=AE, params={"rcn": "5"})
    assert [c["nm"] for c in references.content["m2m:ae"]["ch"]] == ["reads", "c1", "c2", "c3"]
    only = await labelled.retrieve("/cse-in/meter", origin=AE, params={"rcn": "6"})
    assert len(only.content["m2m:rrl"]["rrf"]) == 4
    nothing = await labelled.create(
        "/cse-in/meter", 3, {"m2m:cnt": {"rn": "quiet"}}, origin=AE, params={"rcn": "0"}
    )
    assert (nothing.status, nothing.rsc, nothing.body) == (201, 2001, b"")
    assert nothing.headers["Content-Location"] == "/cse-in/meter/quiet"
    address = await labelled.create(
        "/cse-in/meter", 3, {"m2m:cnt": {"rn": "addr"}}, origin=AE, params={"rcn": "2"}
    )
    assert address.content == {"m2m:uri": "cse-in/meter/addr"}


async def test_partial_retrieve(labelled: M2M) -> None:
    reply = await labelled.retrieve("/cse-in/meter/c1?atrl=rn+lbl", origin=AE)
    assert reply.content == {"m2m:cnt": {"rn": "c1", "lbl": ["a"]}}
    repeated = await labelled.retrieve("/cse-in/meter/c1?atrl=rn&atrl=ty", origin=AE)
    assert repeated.content == {"m2m:cnt": {"rn": "c1", "ty": 3}}
    unknown = await labelled.retrieve("/cse-in/meter/c1?atrl=zz", origin=AE)
    assert (unknown.status, unknown.rsc) == (400, 4000)


def test_filter_criteria_survive_the_query_string() -> None:
    criteria = FilterCriteria(
        filter_usage=1,
        resource_types=(3, 4),
        labels=("a", "k:v"),
        created_before="20300101T000000",
        state_tag_bigger=2,
        size_below=100,
        content_types=("text/plain",),
        attributes=(("rn", "c*"),),
        filter_operation=2,
        limit=5,
        level=2,
        offset=1,
    )
    query: dict[str, list[str]] = {}
    for name, value in filter_to_query(criteria):
        query.setdefault(name, []).append(value)
    assert filter_from_query(query) == criteria


# ---- status codes ----------------------------------------------------------------------------


def test_status_code_table() -> None:
    expected = {
        1000: 202, 2000: 200, 2001: 201, 2002: 200, 2004: 200, 4000: 400, 4001: 501,
        4004: 404, 4005: 405, 4008: 504, 4015: 415, 4101: 403, 4102: 400, 4103: 403,
        4105: 409, 4106: 403, 4108: 403, 4109: 403, 4110: 400, 4117: 403, 5000: 500,
        5001: 501, 5103: 404, 5105: 403, 5106: 409, 5107: 404, 5203: 403, 5204: 500,
        5205: 403, 5206: 501, 5207: 406, 6003: 404, 6005: 404, 6010: 400, 4104: 409,
        4124: 409, 5209: 500, 5219: 409, 5220: 409,
    }  # fmt: skip
    for rsc, status in expected.items():
        assert http_status(rsc) == status, rsc
    for rsc in RSC:
        assert rsc_from_http(http_status(rsc)) in {int(r) for r in RSC}


async def _error_cases(m2m: M2M) -> list[tuple[Reply, int, int]]:
    await m2m.create("/cse-in", 2, ae_body("other"), origin="Cother")
    cases: list[tuple[Reply, int, int]] = []

    async def expect(reply: Reply, status: int, rsc: int) -> None:
        cases.append((reply, status, rsc))

    await expect(await m2m.retrieve("/cse-in/nothing", origin=AE), 404, 4004)
    await expect(await m2m.retrieve("/cse-in/meter/reads", origin="Cother"), 403, 4103)
    await expect(await m2m.retrieve("/cse-in/meter", origin="Cnobody"), 403, 4103)
    await expect(await m2m.create("/cse-in/meter", 3, CNT, origin=AE), 409, 4105)
    await expect(await m2m.create("/cse-in", 2, ae_body("again"), origin=AE), 403, 4117)
    await expect(await m2m.create("/cse-in/meter", 4, cin("1"), origin=AE), 403, 4108)
    instance = await m2m.create("/cse-in/meter/reads", 4, cin("1"), origin=AE)
    location = instance.headers["Content-Location"]
    await expect(await m2m.update(location, cin("2"), origin=AE), 405, 4005)
    await expect(await m2m.call("PATCH", "/cse-in/meter", origin=AE), 405, 4005)
    await expect(await m2m.delete("/cse-in", origin=ADMIN), 405, 4005)
    await expect(await m2m.retrieve("/cse-in", origin=AE, rvi=None), 501, 4001)
    await expect(await m2m.retrieve("/cse-in", origin=AE, rvi="1"), 501, 4001)
    await expect(
        await m2m.call("POST", "/cse-in/meter", origin=AE, raw=b"x", content_type="text/plain"),
        415,
        4015,
    )
    await expect(
        await m2m.retrieve("/cse-in", origin=AE, headers={"X-M2M-RET": "20000101T000000"}),
        504,
        4008,
    )
    await expect(
        await m2m.create(
            "/cse-in/meter", 23, {"m2m:sub": {"nu": ["http://127.0.0.1:9/x"]}}, origin=AE
        ),
        500,
        5204,
    )
    return cases


async def test_error_status_codes(meter: M2M) -> None:
    for reply, status, rsc in await _error_cases(meter):
        assert (reply.status, reply.rsc) == (status, rsc), reply.content
        assert reply.dbg


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "status", "rsc", "words"),
    [
        ({"raw": b'{"m2m:cnt": ', "content_type": "application/json;ty=3"}, 400, 4000, "JSON"),
        ({"raw": b"\xa1\x67m2m:cnt", "content_type": "application/cbor;ty=3"}, 400, 4000, "CBOR"),
        ({"raw": b"\xff\xfe", "content_type": "application/json;ty=3"}, 400, 4000, "JSON"),
        ({"raw": b'{"m2m:cnt": {}}'}, 400, 4000, "Content-Type"),
        ({"raw": b"<cnt/>", "content_type": "application/xml;ty=3"}, 415, 4015, "xml"),
        ({"raw": b"{}", "content_type": "text/plain"}, 415, 4015, "text/plain"),
        ({"body": CNT, "content_type": "application/json;ty=cnt"}, 400, 4000, "ty"),
        ({"body": CNT, "content_type": "application/json;ty="}, 400, 4000, "ty"),
        ({"body": CNT, "content_type": "application/json;ty=-3"}, 400, 4000, "ty"),
        ({"body": CNT, "content_type": "application/json;ty=99"}, 400, 4000, "99"),
        ({"body": "text", "content_type": "application/json;ty=3"}, 400, 4000, "wrapped"),
        ({"body": CNT, "ty": 3, "params": {"bogus": "1"}}, 400, 4000, "bogus"),
        ({"body": CNT, "ty": 3, "params": {"rcn": "x"}}, 400, 4000, "rcn"),
        ({"body": CNT, "ty": 3, "params": {"rcn": "-1"}}, 400, 4000, "rcn"),
        ({"body": CNT, "ty": 3, "params": {"rcn": "42"}}, 400, 4000, "42"),
        ({"body": CNT, "ty": 3, "params": {"rcn": "4"}}, 400, 4000, "result content"),
        ({"body": CNT, "ty": 3, "origin": None}, 400, 4000, "originator"),
        ({"body": CNT, "ty": 3, "ri": None}, 400, 4000, "rqi"),
        ({"body": CNT, "ty": 3, "rvi": None}, 501, 4001, "release"),
        ({"body": CNT, "ty": 3, "rvi": "9"}, 501, 4001, "9"),
        ({"body": CNT, "ty": 3, "headers": {"X-M2M-RET": "soon"}}, 400, 4000, "expiration"),
        ({"body": CNT, "ty": 3, "headers": {"X-M2M-EC": "fast"}}, 400, 4000, "X-M2M-EC"),
    ],
)
async def test_bad_requests(
    meter: M2M, kwargs: dict[str, Any], status: int, rsc: int, words: str
) -> None:
    kwargs.setdefault("origin", AE)
    reply = await meter.call("POST", "/cse-in/meter", **kwargs)
    assert (reply.status, reply.rsc) == (status, rsc), reply.content
    assert words in reply.dbg
    listing = await meter.retrieve("/cse-in/meter", origin=AE, params={"rcn": "6"})
    assert [ref["nm"] for ref in listing.content["m2m:rrl"]["rrf"]] == ["reads"]


async def test_response_type(meter: M2M) -> None:
    blocking = await meter.retrieve("/cse-in/meter?rt=3", origin=AE)
    assert blocking.rsc == RSC.OK
    bad = await meter.retrieve("/cse-in/meter?rt=9", origin=AE)
    assert (bad.status, bad.rsc) == (400, 4000)


async def test_a_non_blocking_request_is_accepted_with_202(
    meter: M2M, cse: CommonServicesEntity
) -> None:
    """TS-0009: 1001 is HTTP 202, with the <request>'s ID in the body and its address in
    Content-Location."""
    body = {"m2m:cnt": {"rn": "nb1"}}
    reply = await meter.create("/cse-in/meter", 3, body, origin=AE, params={"rt": "1"})
    assert (reply.status, reply.rsc) == (202, RSC.ACCEPTED_NON_BLOCKING_REQUEST_SYNCH)
    reference = reply.content["m2m:uri"]
    assert reply.headers["Content-Location"] == f"/cse-in/{reference}"
    async with asyncio.timeout(5):
        await cse.requests.wait_until(lambda: cse.requests.pending == 0)
    record = await meter.retrieve(f"/cse-in/{reference}", origin=AE)
    assert record.content["m2m:req"]["ors"]["rsc"] == RSC.CREATED


async def test_x_m2m_rtu_names_where_an_rt_2_result_goes(meter: M2M) -> None:
    async with NotificationReceiver() as receiver:
        reply = await meter.retrieve(
            "/cse-in/meter",
            origin=AE,
            params={"rt": "2"},
            headers={"X-M2M-RTU": f"{receiver.url}&{receiver.url}?second"},
        )
        assert (reply.status, reply.rsc) == (202, RSC.ACCEPTED_NON_BLOCKING_REQUEST_ASYNCH)
        received = await receiver.wait_for(2)
    assert [item["body"]["m2m:rsp"]["rsc"] for item in received] == [2000, 2000]


async def test_an_ae_long_polls_its_channel_and_answers_over_http(m2m: M2M) -> None:
    """TS-0001 10.2.5.12 over TS-0009: GET of pcu returns the request meant for the AE (here
    a NOTIFY relayed to it); the AE POSTs its m2m:rsp to pcu, which answers the sender."""
    sleeper = ae_body("sleeper", rr=False)
    assert (await m2m.create("/cse-in", 2, sleeper, origin="Csleeper")).rsc == RSC.CREATED
    channel = {"m2m:pch": {"rn": "channel"}}
    assert (await m2m.create("/cse-in/sleeper", 15, channel, origin="Csleeper")).rsc == 2001
    notify = asyncio.create_task(
        m2m.call("POST", "/cse-in/sleeper", ri="wake-1", body={"m2m:sgn": {"sur": "x"}})
    )
    polled = await m2m.retrieve("/cse-in/sleeper/channel/pcu", origin="Csleeper")
    assert (polled.status, polled.rsc) == (200, RSC.OK)
    relayed = polled.content["m2m:rqp"]
    assert (relayed["op"], relayed["rqi"], relayed["pc"]) == (
        5,
        "wake-1",
        {"m2m:sgn": {"sur": "x"}},
    )
    answer = {"m2m:rsp": {"rsc": 2000, "rqi": "wake-1"}}
    reply = await m2m.call("POST", "/cse-in/sleeper/channel/pcu", origin="Csleeper", body=answer)
    assert reply.rsc == RSC.OK
    assert (await notify).rsc == RSC.OK


@pytest.mark.parametrize(
    "query",
    [
        "fu=3",
        "fo=5",
        "ty=x",
        "lim=-1",
        "lim=1.5",
        "lvl=%2B1",
        "crb=yesterday",
        "drt=3",
        "unknown=1",
        "fu=1&ty=99999999999999999999999",
    ],
)
async def test_bad_query_parameters(meter: M2M, query: str) -> None:
    reply = await meter.retrieve(f"/cse-in?{query}", origin=AE)
    assert (reply.status, reply.rsc) == (400, 4000), reply.content


async def test_ty_only_in_a_create(meter: M2M) -> None:
    for method in ("GET", "PUT", "DELETE"):
        reply = await meter.call(
            method, "/cse-in/meter/reads", origin=AE, raw=b"", content_type="application/json;ty=3"
        )
        assert (reply.status, reply.rsc) == (400, 4000), method


async def test_ae_registration_without_an_originator(m2m: M2M) -> None:
    reply = await m2m.create("/cse-in", 2, ae_body("anon"), origin=None)
    assert reply.rsc == RSC.CREATED
    assert reply.content["m2m:ae"]["aei"].startswith("C")


@pytest.fixture
async def small_server(cse: CommonServicesEntity) -> AsyncIterator[HttpServer]:
    async with HttpServer(cse, "127.0.0.1", 0, max_body_size=128, trust=Trust.INSECURE) as running:
        yield running


def _sized(size: int) -> bytes:
    """A valid contentInstance body of exactly `size` bytes."""
    body = orjson.dumps(cin(""))
    return orjson.dumps(cin("x" * (size - len(body))))


async def test_body_size_limit(
    meter: M2M, session: aiohttp.ClientSession, small_server: HttpServer
) -> None:
    small = M2M(session, small_server)
    path = "/cse-in/meter/reads"
    json_cin = "application/json;ty=4"
    fits = await small.call("POST", path, origin=AE, raw=_sized(128), content_type=json_cin)
    assert fits.rsc == RSC.CREATED
    too_big = await small.call("POST", path, origin=AE, raw=_sized(129), content_type=json_cin)
    assert (too_big.status, too_big.rsc) == (413, 4000)
    assert "128" in too_big.dbg

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 100

    headers = {
        "X-M2M-Origin": AE,
        "X-M2M-RI": "chunked",
        "X-M2M-RVI": "3",
        "Content-Type": json_cin,
    }
    async with session.post(small.base + path, data=chunks(), headers=headers) as response:
        assert (response.status, response.headers["X-M2M-RSC"]) == (413, "4000")
        assert response.headers["X-M2M-RI"] == "chunked"
        assert "m2m:dbg" in await response.json()
    cnt = await small.retrieve(path, origin=AE)
    assert cnt.content["m2m:cnt"]["cni"] == 1  # only the one that fitted


# ---- raw HTTP: what a library client would never send -----------------------------------------


async def _raw(
    server: HttpServer, head: bytes, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head + b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    header_block, _, payload = data.partition(b"\r\n\r\n")
    status_line, *lines = header_block.decode("utf-8", "replace").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, payload


@pytest.mark.parametrize(
    "head",
    [
        b"GET /cse-in HTTP/1.1\r\nX-M2M-Origin: C\xff\xfe\r\nX-M2M-RI: 1\r\nX-M2M-RVI: 3\r\n",
        b"GET /cse-in HTTP/1.1\r\nX-M2M-Origin: CAdmin\r\nX-M2M-RI: 1\r\nX-M2M-RVI: \xff\r\n",
        b"GET /cse-in HTTP/1.1\r\nX-M2M-Origin: CAdmin\r\nX-M2M-RI: \xc3\r\nX-M2M-RVI: 3\r\n",
        b"GET /cse-in?lbl=%ff&fu=1 HTTP/1.1\r\nX-M2M-Origin: CAdmin\r\nX-M2M-RI: 1\r\n"
        b"X-M2M-RVI: 3\r\n",
        b"GET /cse-in?%ff=1 HTTP/1.1\r\nX-M2M-Origin: CAdmin\r\nX-M2M-RI: 1\r\nX-M2M-RVI: 3\r\n",
        b"GET /%ff%fe HTTP/1.1\r\nX-M2M-Origin: CAdmin\r\nX-M2M-RI: 1\r\nX-M2M-RVI: 3\r\n",
        b"OPTIONS * HTTP/1.1\r\nX-M2M-Origin: CAdmin\r\nX-M2M-RI: 1\r\nX-M2M-RVI: 3\r\n",
        b"HEAD /cse-in HTTP/1.1\r\nX-M2M-Origin: CAdmin\r\nX-M2M-RI: 1\r\nX-M2M-RVI: 3\r\n",
    ],
)
async def test_undecodable_headers_and_odd_requests(server: HttpServer, head: bytes) -> None:
    status, headers, payload = await _raw(server, head + b"Host: x\r\n")
    assert status != 500, payload
    assert "x-m2m-rsc" in headers, (status, payload)
    assert http_status(int(headers["x-m2m-rsc"])) == status
    if status >= 400 and not head.startswith(b"HEAD"):
        assert isinstance(orjson.loads(payload)["m2m:dbg"], str)


# ---- connections -----------------------------------------------------------------------------


async def test_keep_alive_serves_many_requests_on_one_connection(
    server: HttpServer, cse: CommonServicesEntity
) -> None:
    created = SimpleNamespace(count=0)
    reused = SimpleNamespace(count=0)

    async def on_create(*_: object) -> None:
        created.count += 1

    async def on_reuse(*_: object) -> None:
        reused.count += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    trace.on_connection_reuseconn.append(on_reuse)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(
        connector=connector, trace_configs=[trace], skip_auto_headers=["Content-Type"]
    ) as session:
        m2m = M2M(session, server)
        await m2m.create("/cse-in", 2, ae_body("meter"), origin=AE)
        await m2m.create("/cse-in/meter", 3, CNT, origin=AE)
        for value in range(5):
            await m2m.create("/cse-in/meter/reads", 4, cin(str(value)), origin=AE)
        # Error replies keep the connection open too.
        await m2m.retrieve("/cse-in/nothing", origin=AE)
        await m2m.call(
            "POST", "/cse-in/meter", origin=AE, raw=b"{", content_type="application/json;ty=3"
        )
        await m2m.call("PATCH", "/cse-in/meter", origin=AE)
        latest = await m2m.retrieve("/cse-in/meter/reads/la", origin=AE, accept="application/cbor")
        assert latest.content["m2m:cin"]["con"] == "4"
    assert created.count == 1
    assert reused.count == 10


async def test_concurrent_requests(m2m: M2M) -> None:
    await m2m.create("/cse-in", 2, ae_body("meter"), origin=AE)
    await m2m.create("/cse-in/meter", 3, CNT, origin=AE)
    replies = await asyncio.gather(
        *(m2m.create("/cse-in/meter/reads", 4, cin(str(i)), origin=AE) for i in range(20))
    )
    assert all(reply.rsc == RSC.CREATED for reply in replies)
    cnt = await m2m.retrieve("/cse-in/meter/reads", origin=AE)
    assert cnt.content["m2m:cnt"]["cni"] == 20


# ---- the HTTP client against the server ---------------------------------------------------------


def _request(operation: Operation, to: str, **kw: Any) -> Request:
    return Request(operation, to, kw.pop("originator", AE), f"cl-{to}-{operation}", "3", **kw)


@pytest.mark.parametrize("serialization", ["json", "cbor"])
async def test_http_client_against_the_server(server: HttpServer, serialization: str) -> None:
    async with HttpClient(timeout=5, serialization=serialization) as client:
        ae = await client.send(
            server.url,
            _request(Operation.CREATE, "cse-in", resource_type=2, content=ae_body("meter")),
        )
        assert ae.status == RSC.CREATED and ae.location == "cse-in/meter"
        assert ae.content["m2m:ae"]["aei"] == AE
        assert ae.release_version == "3"
        cnt = await client.send(
            server.url,
            _request(
                Operation.CREATE,
                "/id-in/cse-in/meter",
                resource_type=3,
                content=CNT,
                result_content=ResultContent.HIERARCHICAL_ADDRESS,
            ),
        )
        assert cnt.content == {"m2m:uri": "cse-in/meter/reads"}
        await client.send(
            server.url,
            _request(Operation.CREATE, "cse-in/meter/reads", resource_type=4, content=cin("5")),
        )
        latest = await client.send(
            server.url, _request(Operation.RETRIEVE, "cse-in/meter/reads/la")
        )
        assert latest.status == RSC.OK and latest.content["m2m:cin"]["con"] == "5"
        found = await client.send(
            server.url,
            _request(
                Operation.RETRIEVE,
                "//sp.example/id-in/cse-in",
                filter_criteria=FilterCriteria(filter_usage=1, labels=("kind:energy",)),
                discovery_result_type=1,
            ),
        )
        assert found.content == {"m2m:uril": ["cse-in/meter/reads"]}
        partial = await client.send(
            server.url,
            _request(Operation.RETRIEVE, "cse-in/meter/reads", attribute_list=("rn", "cni")),
        )
        assert partial.content == {"m2m:cnt": {"rn": "reads", "cni": 1}}
        updated = await client.send(
            server.url,
            _request(Operation.UPDATE, "cse-in/meter/reads", content={"m2m:cnt": {"mni": 3}}),
        )
        assert updated.status == RSC.UPDATED and updated.content["m2m:cnt"]["mni"] == 3
        denied = await client.send(
            server.url, _request(Operation.RETRIEVE, "cse-in/meter", originator="Cnobody")
        )
        assert denied.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        assert "Cnobody" in denied.content["m2m:dbg"]
        no_body = await client.send(
            server.url, _request(Operation.CREATE, "cse-in/meter", resource_type=3)
        )
        assert no_body.status == RSC.BAD_REQUEST  # a CREATE stays a CREATE without content
        gone = await client.send(server.url, _request(Operation.DELETE, "cse-in/meter"))
        assert gone.status == RSC.DELETED and gone.content is None
        non_blocking = await client.send(
            server.url, _request(Operation.RETRIEVE, "cse-in", originator=ADMIN, response_type=1)
        )
        assert non_blocking.status == RSC.ACCEPTED_NON_BLOCKING_REQUEST_SYNCH
        assert non_blocking.location == f"cse-in/{non_blocking.content['m2m:uri']}"
        expired = await client.send(
            server.url,
            _request(Operation.RETRIEVE, "cse-in", request_expiration="20000101T000000"),
        )
        assert expired.status == RSC.REQUEST_TIMEOUT


async def test_http_client_reports_unreachable_servers() -> None:
    from cse.core.notifications import DeliveryError

    async with HttpClient(timeout=2) as client:
        with pytest.raises(DeliveryError):
            await client.send("http://127.0.0.1:9", _request(Operation.RETRIEVE, "cse-in"))
        with pytest.raises(DeliveryError):  # a value JSON cannot carry
            await client.send(
                "http://127.0.0.1:9",
                _request(Operation.CREATE, "cse-in", resource_type=3, content={"x": 2**70}),
            )


async def test_http_client_decodes_the_serialization_it_asked_for(server: HttpServer) -> None:
    async with HttpClient(timeout=5, serialization=CBOR) as client:
        response = await client.send(
            server.url, _request(Operation.RETRIEVE, "cse-in", originator="CAdmin")
        )
        assert response.status == RSC.OK and response.content["m2m:cb"]["csi"] == "/id-in"


def test_a_flexcontainer_is_discovered_by_its_definition_not_by_its_data_points() -> None:
    # cnd is an attribute of every flexContainer; a model's data points are not query
    # parameters (ACME refuses them too).
    cnd = "org.onem2m.common.moduleclass.energyConsumption"
    assert filter_from_query({"fu": ["1"], "cnd": [cnd]}) == FilterCriteria(
        filter_usage=1, attributes=(("cnd", cnd),)
    )
    with pytest.raises(BadRequest):
        filter_from_query({"fu": ["1"], "abECn": ["12.5"]})


def test_query_errors_are_bad_requests() -> None:
    with pytest.raises(BadRequest):
        filter_from_query({"lim": ["1e3"]})
    assert filter_from_query({"rcn": ["1"], "lbl": ["a b", "c"]}) == FilterCriteria(
        labels=("a", "b", "c")
    )


def test_check_reply_rejects_a_missing_rsc() -> None:
    """The helper the tests rely on must itself fail on a bare HTTP error."""
    from multidict import CIMultiDict, CIMultiDictProxy

    reply = Reply(404, CIMultiDictProxy(CIMultiDict()), b"404: Not Found", None)
    with pytest.raises(AssertionError):
        check_reply(reply, {}, "GET")
