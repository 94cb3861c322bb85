"""Property tests: whatever arrives, the CSE answers with a oneM2M code and keeps its tree sound.

(a) sequences of random request primitives straight into `CommonServicesEntity.handle()`,
    each example on a fresh CSE, followed by a consistency check of the whole tree;
(b) random bytes through `cse.serialization.decode` as JSON and as CBOR;
(c) random requests over a real loopback HTTP server.

Every example runs its own event loop (`asyncio.run`), so nothing leaks between examples.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from typing import Any

import aiohttp
import cbor2
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from yarl import URL

from cse.bindings.http import HttpServer
from cse.bindings.http.mapping import http_status
from cse.core.clock import ManualClock
from cse.core.config import CSESettings
from cse.core.errors import BadRequest
from cse.core.handler import CommonServicesEntity
from cse.core.identity import Trust
from cse.core.primitives import FilterCriteria, Request, Response
from cse.core.registry import SPECS, SPECS_BY_KEY, Kind, ResourceSpec, spec_of
from cse.core.types import Operation, ResultContent
from cse.core.types import ResponseStatusCode as RSC
from cse.serialization import CBOR, JSON, decode, encode
from cse.storage.base import Resource
from cse.storage.memory import MemoryStorage

CORE = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DECODE = settings(max_examples=300, deadline=None, database=None)
HTTP = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ADMIN = "CAdmin"
AE = "Cmeter"
NAMES = ("a", "b", "c")
BAD_NAMES = ("la", "ol", "", "a/b", "ü", "meter")
_ids = itertools.count(1)

# ---- strategies: values ----------------------------------------------------------------------

EDGE_INTEGERS = st.sampled_from(
    [0, 1, -1, 2, 7, 255, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1]
)
TIMESTAMPS = st.sampled_from(
    [
        "20260101T000000",
        "20260101T000001",
        "20270101T000000,5",
        "20300101T000000Z",
        "20300101T000000.123",
        "19700101T000000",
        "00010101T000000",
        "99991231T235959",
        "99991231T235959,999999999",
        "20261301T000000",
        "2026-01-01T00:00:00",
        "T",
        "",
    ]
)
ID_LIKE = st.sampled_from(
    [
        AE,
        ADMIN,
        "cse-in",
        "cse-in/meter",
        "cse-in/meter/reads",
        "cse-in/meter/acp",
        "/id-in/cse-in/meter/reads",
        "/id-mn/cse-mn",
        "//sp.example/id-in/cse-in",
        "http://127.0.0.1:9/notify",
        "mqtt://x/y",
        "",
        "/",
        "la",
    ]
)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | EDGE_INTEGERS
    | st.floats()
    | st.text(max_size=12)
    | TIMESTAMPS
    | ID_LIKE
)
JSON_VALUES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=6) | st.sampled_from(["acr", "net", "num"]), children, max_size=4
        )
    ),
    max_leaves=20,
)

# The spec a request of each type is drawn from: a flexContainer as one of its models.
FUZZ_SPECS: dict[int, ResourceSpec] = {**SPECS, 28: SPECS_BY_KEY["cod:eneCn"]}
ATTRIBUTE_NAMES = sorted({name for spec in SPECS.values() for name in spec.attributes})
OBJECTS = st.one_of(
    st.builds(
        lambda acor, acop: {"acr": [{"acor": acor, "acop": acop}]},
        st.lists(ID_LIKE | st.just("all"), max_size=2),
        st.integers(-1, 70) | st.text(max_size=2),
    ),
    st.just({"acr": []}),
    st.builds(lambda net: {"net": net}, st.lists(st.integers(-1, 9) | st.booleans(), max_size=3)),
    st.builds(lambda chty: {"net": [3], "chty": chty}, st.lists(st.integers(0, 30), max_size=2)),
    st.fixed_dictionaries(
        {},
        optional={
            "num": st.integers(-1, 5) | st.booleans(),
            "dur": st.sampled_from(["PT1S", "PT0S", "9" * 20, "P", 5, 1e308, "1" * 5000]),
        },
    ),
    st.dictionaries(st.text(max_size=4), LEAVES, max_size=2),
)
TYPED_VALUES: dict[Kind, st.SearchStrategy[Any]] = {
    Kind.STRING: ID_LIKE | st.text(max_size=8) | st.sampled_from(["text/plain:0", "a/b:3"]),
    Kind.COUNT: st.integers(0, 6) | EDGE_INTEGERS,
    Kind.POSITIVE: st.integers(1, 6) | EDGE_INTEGERS,
    Kind.INTEGER: st.integers(-2, 6) | EDGE_INTEGERS,
    Kind.NUMBER: st.integers(-2, 6) | st.floats() | EDGE_INTEGERS,
    Kind.BOOLEAN: st.booleans(),
    Kind.STRINGS: st.lists(ID_LIKE | st.text(max_size=6), max_size=3),
    Kind.OBJECT: OBJECTS,
    Kind.TIMESTAMP: TIMESTAMPS,
    Kind.TIME: TIMESTAMPS | st.integers(-2, 10**6) | st.sampled_from(["42", "-1", "4 2"]),
    Kind.ANY: JSON_VALUES,
}


def usually(
    common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], odds: int = 8
) -> st.SearchStrategy[Any]:
    """`common`, and one time in odds + 1 `rare`: most requests must get far enough to matter."""
    # (st.one_of would merge repeated branches, so the odds are set by a sampled flag.)
    return st.sampled_from([False] * odds + [True]).flatmap(lambda odd: rare if odd else common)


def attribute_values(kind: Kind, *, create: bool) -> st.SearchStrategy[Any]:
    """Mostly the right kind of value (so checks pass and deeper code runs), sometimes not.

    null is common in an UPDATE (it removes an attribute) and rare in a CREATE (refused).
    """
    if create:
        return usually(TYPED_VALUES[kind], st.none() | LEAVES, 4)
    tier = st.sampled_from(["typed", "typed", "null", "other"])
    choices = {"typed": TYPED_VALUES[kind], "null": st.none(), "other": LEAVES}
    return tier.flatmap(choices.__getitem__)


def attributes_of(
    ty: int | None, max_size: int = 4, *, create: bool = False
) -> st.SearchStrategy[dict[str, Any]]:
    if ty not in SPECS:
        return st.dictionaries(st.sampled_from(ATTRIBUTE_NAMES), LEAVES, max_size=max_size)
    spec = FUZZ_SPECS[ty]
    writable = sorted(
        name
        for name, policy in spec.attributes.items()
        if (policy.create if create else policy.update) != "NP"
    )
    # Attributes a CREATE must carry are special in an UPDATE too: they get extra weight.
    mandatory = [name for name in writable if spec.attributes[name].create == "M"]
    names = usually(
        st.sampled_from(writable + mandatory * 2),
        st.sampled_from([*sorted(spec.attributes), "bogus"]),
    )
    pairs = names.flatmap(
        lambda name: st.tuples(
            st.just(name),
            attribute_values(spec.attributes[name].kind, create=create)
            if name in spec.attributes
            else LEAVES,
        )
    )
    return st.lists(pairs, min_size=0 if create else 1, max_size=max_size).map(dict)


# A valid body per resource type; examples start from one and change some attributes, so
# that deep code paths (eviction, group checks, subscriptions) are reached, not only 4000s.
TEMPLATES: dict[int, dict[str, Any]] = {
    1: {"pv": {"acr": [{"acor": [AE], "acop": 63}]}, "pvs": {"acr": [{"acor": [AE], "acop": 63}]}},
    2: {"api": "Nfuzz", "rr": True, "srv": ["3"]},
    3: {},
    4: {"con": "12.5", "cnf": "text/plain:0"},
    9: {"mnm": 3, "mid": ["cse-in/meter/reads"]},
    14: {"ni": "fuzz"},
    16: {"cb": "/id-mn/cse-mn", "csi": "/id-mn", "rr": True, "srv": ["3"]},
    23: {"nu": [AE]},
    28: {"cnd": "org.onem2m.common.moduleclass.energyConsumption", "abECn": 1.5},
}
WRAPPER_KEYS = [spec.key for spec in SPECS.values()] + ["m2m:fcnt", "m2m:ts", "cnt", ""]


@st.composite
def bodies(draw: st.DrawFn, ty: int | None, *, create: bool = True) -> Any:
    """A content for a CREATE (from a template) or an UPDATE (a few attributes) of type ty."""
    kind = draw(st.integers(0, 9))
    if kind <= 6 and ty in SPECS:
        attributes = dict(TEMPLATES.get(ty, {})) if create else {}
        if create and draw(st.booleans()):
            attributes["rn"] = draw(usually(st.sampled_from(NAMES), st.sampled_from(BAD_NAMES)))
        attributes.update(draw(attributes_of(ty, max_size=2 if create else 4, create=create)))
        if create and attributes and not draw(st.integers(0, 4)):
            attributes.pop(draw(st.sampled_from(sorted(attributes))))
        key = FUZZ_SPECS[ty].key if kind else draw(st.sampled_from(WRAPPER_KEYS))
        return {key: attributes}
    if kind <= 8:
        return {draw(st.sampled_from(WRAPPER_KEYS)): draw(attributes_of(ty) | JSON_VALUES)}
    return draw(JSON_VALUES)


# What the seeded tree holds, by type: requests mostly aim at these (or at children they create).
SUBJECTS: dict[str, int] = {
    "cse-in": 5,
    "cse-in/meter": 2,
    "cse-in/meter/reads": 3,
    "cse-in/meter/reads/la": 4,
    "cse-in/meter/reads/ol": 4,
    "cse-in/meter/reads/watch": 23,
    "cse-in/meter/grp": 9,
    "cse-in/meter/acp": 1,
    "cse-in/meter/energy": 28,
}
OTHER_TARGETS = st.one_of(
    st.sampled_from(
        [
            "cse-in/meter/grp/fopt",
            "cse-in/meter/grp/fopt/la",
            "cse-in/meter/grp/fopt/fopt",
            "-/meter/reads",
            "/id-in/cse-in/meter/reads",
            "//sp.example/id-in/cse-in/meter/reads/la",
            "/id-in",
            "/id-mn/cse-mn",
            "id-in",
            AE,
            "cse-in//x",
            "",
            "/",
            "//",
        ]
    ),
    st.builds(
        lambda parent, name, tail: f"{parent}/{name}{tail}",
        st.sampled_from(["cse-in", "cse-in/meter", "cse-in/meter/reads", "cse-in/meter/a"]),
        st.sampled_from(NAMES),
        st.sampled_from(["", "", "/la", "/ol", "/fopt", "/a", "/b/la"]),
    ),
    st.text(max_size=12),
)
ORIGINATORS = st.one_of(
    st.sampled_from(
        [
            ADMIN,
            AE,
            AE,
            AE,
            "Cother",
            "",
            None,
            "C",
            "S",
            "Cnew",
            "/id-in",
            "/id-mn",
            "/id-in/Cmeter",
        ]
    ),
    st.text(max_size=8),
)
JUNK_TYPES = st.one_of(st.integers(1, 30), st.sampled_from([0, -1, 10002, 2**31, 2**70]), st.none())
FILTERS = st.builds(
    FilterCriteria,
    filter_usage=st.sampled_from([None, 1, 2]),
    resource_types=st.lists(st.integers(0, 30), max_size=2).map(tuple),
    labels=st.lists(st.text(max_size=4), max_size=2).map(tuple),
    created_before=st.none() | TIMESTAMPS,
    modified_since=st.none() | TIMESTAMPS,
    state_tag_bigger=st.none() | st.integers(0, 2**64),
    size_below=st.none() | st.integers(0, 2**64),
    content_types=st.lists(st.text(max_size=4), max_size=1).map(tuple),
    attributes=st.lists(
        st.tuples(st.sampled_from(ATTRIBUTE_NAMES), st.text(max_size=4)), max_size=2
    ).map(tuple),
    filter_operation=st.sampled_from([1, 2]),
    limit=st.none() | st.integers(0, 2**64),
    level=st.none() | st.integers(0, 2**64),
    offset=st.none() | st.integers(0, 2**64),
)
VALID_RCN = {
    Operation.CREATE: [0, 1, 2, 3, 9],
    Operation.RETRIEVE: [1, 4, 5, 6, 8],
    Operation.UPDATE: [0, 1, 9],
    Operation.DELETE: [0, 1],
    Operation.NOTIFY: [1],
}
OPERATIONS = st.sampled_from(
    [Operation.CREATE] * 4
    + [Operation.UPDATE] * 4
    + [Operation.RETRIEVE, Operation.DELETE]
    + [Operation.NOTIFY]
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    operation = draw(OPERATIONS)
    if draw(st.integers(0, 4)):
        to = draw(st.sampled_from(sorted(SUBJECTS)))
        subject: int | None = SUBJECTS[to]
    else:
        to, subject = draw(OTHER_TARGETS), None
    ty: int | None = None
    content: Any = None
    if operation == Operation.CREATE:
        children = sorted(int(t) for t in SPECS[subject].children) if subject in SPECS else []
        ty = draw(usually(st.sampled_from(children or sorted(TEMPLATES)), JUNK_TYPES, 4))
        content = draw(bodies(ty))
    elif operation == Operation.UPDATE:
        content = draw(
            bodies(subject if draw(st.integers(0, 4)) else draw(JUNK_TYPES), create=False)
        )
    elif operation in (Operation.RETRIEVE, Operation.NOTIFY):
        content = draw(st.none() | JSON_VALUES)
    retrieve = operation == Operation.RETRIEVE
    if draw(usually(st.just(True), st.just(False), 4)):  # a well-formed envelope
        return Request(
            operation=operation,
            to=to,
            originator=draw(st.sampled_from([AE, AE, ADMIN])),
            request_id=f"rq{next(_ids)}",
            release_version="3",
            resource_type=ty,
            content=content,
            result_content=draw(usually(st.none(), st.sampled_from(VALID_RCN[operation]), 2)),
            filter_criteria=draw(usually(st.none(), FILTERS, 1 if retrieve else 12)),
        )
    return Request(
        operation=operation,
        to=to,
        originator=draw(ORIGINATORS),
        request_id=draw(st.sampled_from(["rq", ""])) + str(next(_ids)),
        release_version=draw(st.sampled_from(["3", "2a", "5", None, "", "1"])),
        resource_type=draw(usually(st.just(ty), JUNK_TYPES, 2)),
        content=content,
        result_content=draw(st.none() | st.sampled_from(list(ResultContent))),
        filter_criteria=draw(st.none() | FILTERS),
        discovery_result_type=draw(st.sampled_from([None, 1, 2, 0, 7])),
        request_expiration=draw(st.none() | TIMESTAMPS | st.sampled_from(["1000", "-5", "x"])),
        attribute_list=tuple(draw(st.lists(st.sampled_from([*ATTRIBUTE_NAMES, "zz"])))),
    )


# A step is a request, or time passing (then the expiry sweeper runs).
STEPS = usually(requests(), st.floats(1, 10 * 365 * 24 * 3600), 5)


# ---- the CSE under test and the invariants -----------------------------------------------------


def _settings() -> CSESettings:
    return CSESettings(expiry_check_interval=3600, notification_timeout=0.5)


async def _must(cse: CommonServicesEntity, request: Request) -> Response:
    response = await cse.handle(request)
    assert response.status in (RSC.CREATED, RSC.OK, RSC.UPDATED), response.content
    return response


def _create(to: str, ty: int, body: dict[str, Any], originator: str = AE) -> Request:
    return Request(Operation.CREATE, to, originator, f"seed-{next(_ids)}", "3", ty, body)


async def _seed(cse: CommonServicesEntity) -> None:
    """meter (AE) / reads (CNT, 2 CINs, a SUB) + grp (GRP) + acp (ACP) + energy (FCNT)."""
    body = {"m2m:ae": {"rn": "meter", "api": "Nmeter", "rr": True, "srv": ["3"]}}
    await _must(cse, _create("cse-in", 2, body))
    await _must(cse, _create("cse-in/meter", 3, {"m2m:cnt": {"rn": "reads", "mni": 5}}))
    for value in ("1", "22"):
        await _must(cse, _create("cse-in/meter/reads", 4, {"m2m:cin": {"con": value}}))
    await _must(cse, _create("cse-in/meter/reads", 23, {"m2m:sub": {"rn": "watch", "nu": [AE]}}))
    grp = {"m2m:grp": {"rn": "grp", "mnm": 5, "mid": ["cse-in/meter/reads"]}}
    await _must(cse, _create("cse-in/meter", 9, grp))
    acp = {
        "m2m:acp": {"rn": "acp", "pv": {"acr": []}, "pvs": {"acr": [{"acor": [AE], "acop": 63}]}}
    }
    await _must(cse, _create("cse-in/meter", 1, acp))
    energy = {"rn": "energy", **TEMPLATES[28]}
    await _must(cse, _create("cse-in/meter", 28, {FUZZ_SPECS[28].key: energy}))


def check_response(response: Response) -> None:
    assert isinstance(response.status, RSC), response
    assert response.status != RSC.INTERNAL_SERVER_ERROR, response.content
    if not response.status.is_success:
        assert isinstance(response.content, dict) and set(response.content) == {"m2m:dbg"}
        assert isinstance(response.content["m2m:dbg"], str) and response.content["m2m:dbg"]
    # Whatever the core answers must be sendable in both serializations.
    encode(response.content, JSON)
    encode(response.content, CBOR)


async def check_tree(cse: CommonServicesEntity) -> None:
    storage = cse.storage
    base = await storage.get_by_path("cse-in")
    assert base is not None and base.ri == "id-in"
    everything: list[Resource] = await storage.descendants("cse-in")
    for resource in everything:
        attributes = resource.attributes
        spec = spec_of(resource)
        assert (await storage.get(resource.ri)) is not None
        by_path = await storage.get_by_path(resource.path)
        assert by_path is not None and by_path.ri == resource.ri, resource
        parent = await storage.get(resource.pi)
        assert parent is not None, resource
        assert resource.path == f"{parent.path}/{resource.rn}"
        assert resource.ty in SPECS[parent.ty].children, (resource, parent)
        assert set(attributes) <= set(spec.attributes), resource
        assert attributes["ri"] == resource.ri and attributes["ty"] == resource.ty
        orjson.dumps(attributes)
        cbor2.dumps(attributes)
        for name, policy in spec.attributes.items():
            if policy.create == "M":
                assert attributes.get(name) is not None, (resource, name)
        if resource.ty == 3:
            instances = await storage.children(resource.ri, [4])
            assert attributes["cni"] == len(instances), resource
            assert attributes["cbs"] == sum(i.attributes["cs"] for i in instances), resource
            if "mni" in attributes:
                assert attributes["cni"] <= attributes["mni"]
            if "mbs" in attributes:
                assert attributes["cbs"] <= attributes["mbs"]
            assert all(i.attributes["st"] <= attributes["st"] for i in instances)
        elif resource.ty == 9:
            assert attributes["cnm"] == len(attributes["mid"]) <= attributes["mnm"]
        elif resource.ty == 2:
            assert attributes["aei"] == resource.ri
        # Every resource can be read back and sent out.
        read = await cse.handle(
            Request(Operation.RETRIEVE, resource.ri, ADMIN, f"check-{next(_ids)}", "3")
        )
        if resource.ty == 4 and parent.attributes.get("disr"):
            assert read.status == RSC.OPERATION_NOT_ALLOWED, (resource, read.content)
        else:
            assert read.status == RSC.OK, (resource, read.content)
        check_response(read)


@CORE
@given(st.lists(STEPS, min_size=1, max_size=6))
def test_random_requests_never_break_the_core(steps: list[Request | float]) -> None:
    async def scenario() -> None:
        clock = ManualClock()
        async with CommonServicesEntity(MemoryStorage(), _settings(), clock=clock) as cse:
            await _seed(cse)
            for step in steps:
                if isinstance(step, Request):
                    response = await cse.handle(step)
                    event(f"{step.operation.name} -> {response.status.name}")
                    check_response(response)
                else:
                    clock.advance(step)
                    await cse.expiry.sweep()
            await cse.expiry.sweep()
            await check_tree(cse)

    asyncio.run(scenario())


@CORE
@given(
    st.lists(
        st.sampled_from([3, 4, 4, 4]).flatmap(lambda ty: st.tuples(st.just(ty), attributes_of(ty))),
        min_size=1,
        max_size=12,
    ),
    st.lists(st.sampled_from(["la", "ol", "reads"]), max_size=3),
)
def test_container_counters_survive_random_traffic(
    posts: list[tuple[int, dict[str, Any]]], deletions: list[str]
) -> None:
    """A narrower stream: container updates, instance creations and deletions."""

    async def scenario() -> None:
        async with CommonServicesEntity(MemoryStorage(), _settings(), clock=ManualClock()) as cse:
            await _seed(cse)
            for ty, attributes in posts:
                if ty == 4:
                    body = {"m2m:cin": {"con": "v", **attributes}}
                    request = _create("cse-in/meter/reads", 4, body)
                else:
                    body = {"m2m:cnt": attributes}
                    request = Request(
                        Operation.UPDATE,
                        "cse-in/meter/reads",
                        AE,
                        f"u{next(_ids)}",
                        "3",
                        content=body,
                    )
                check_response(await cse.handle(request))
            for name in deletions:
                to = "cse-in/meter/reads" + ("" if name == "reads" else f"/{name}")
                request = Request(Operation.DELETE, to, AE, f"d{next(_ids)}", "3")
                check_response(await cse.handle(request))
            await check_tree(cse)

    asyncio.run(scenario())


# ---- every attribute of every type, with every awkward value ---------------------------------

EDGE_VALUES: list[Any] = [
    None, -1, 0, 1, 2**63 - 1, 2**64 - 1, 1.5, True, "", "x", "99991231T235959,9999999",
    "20000101T000000", [], ["x"], [1], {}, {"acr": None}, {"net": [9]}, {"num": True, "dur": "P"},
]  # fmt: skip
PARENTS = {1: "cse-in/meter", 2: "cse-in", 3: "cse-in/meter", 4: "cse-in/meter/reads",
           9: "cse-in/meter", 14: "cse-in", 16: "cse-in", 23: "cse-in/meter/reads",
           28: "cse-in/meter"}  # fmt: skip


async def _follow_up(cse: CommonServicesEntity) -> None:
    """Traffic after a change: instances, a child (notifications), reads, a delete, expiry."""
    for request in (
        _create("cse-in/meter/reads", 4, {"m2m:cin": {"con": "after"}}),
        _create("cse-in/meter/reads", 3, {"m2m:cnt": {"rn": "child"}}),
        Request(Operation.RETRIEVE, "cse-in/meter/reads/la", AE, "f1", "3"),
        Request(Operation.RETRIEVE, "cse-in/meter/grp/fopt", AE, "f2", "3"),
        Request(Operation.RETRIEVE, "cse-in", ADMIN, "f3", "3", filter_criteria=FilterCriteria(1)),
        Request(Operation.DELETE, "cse-in/meter/reads/ol", AE, "f4", "3"),
    ):
        check_response(await cse.handle(request))
    assert isinstance(cse.clock, ManualClock)
    cse.clock.advance(3600)
    await cse.expiry.sweep()


@pytest.mark.parametrize("path", sorted(SUBJECTS))
def test_updating_any_attribute_to_any_value(path: str) -> None:
    spec = FUZZ_SPECS[SUBJECTS[path]]

    async def scenario() -> None:
        for name in [*sorted(spec.attributes), "bogus"]:
            for value in EDGE_VALUES:
                async with CommonServicesEntity(
                    MemoryStorage(), _settings(), clock=ManualClock()
                ) as cse:
                    await _seed(cse)
                    body = {spec.key: {name: value}}
                    request = Request(Operation.UPDATE, path, AE, "u", "3", content=body)
                    check_response(await cse.handle(request))
                    await _follow_up(cse)
                    await check_tree(cse)

    asyncio.run(scenario())


@pytest.mark.parametrize("ty", sorted(TEMPLATES))
def test_creating_with_any_attribute_set_to_any_value(ty: int) -> None:
    spec = FUZZ_SPECS[ty]

    async def scenario() -> None:
        for name in [*sorted(spec.attributes), "bogus"]:
            for value in EDGE_VALUES:
                async with CommonServicesEntity(
                    MemoryStorage(), _settings(), clock=ManualClock()
                ) as cse:
                    await _seed(cse)
                    attributes = {**TEMPLATES[ty], "rn": "new", name: value}
                    # Who may make one: an AE registers itself, a CSE itself, a node the admin.
                    originator = {2: "Cnew", 14: ADMIN, 16: "/id-mn"}.get(ty, AE)
                    request = _create(PARENTS[ty], ty, {spec.key: attributes}, originator)
                    check_response(await cse.handle(request))
                    await _follow_up(cse)
                    await check_tree(cse)

    asyncio.run(scenario())


# ---- (b) decoding ----------------------------------------------------------------------------


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for extra, size, fmt in ((24, 1, ">B"), (25, 2, ">H"), (26, 4, ">I"), (27, 8, ">Q")):
        if value < 1 << (8 * size):
            return bytes([major << 5 | extra]) + struct.pack(fmt, value)
    raise ValueError(value)


CBOR_TAGS = [
    0,
    1,
    2,
    3,
    4,
    5,
    21,
    22,
    23,
    24,
    25,
    28,
    29,
    30,
    32,
    33,
    34,
    35,
    36,
    37,
    38,
    256,
    258,
    260,
    261,
    262,
    263,
    1004,
    55799,
    2**32,
]


@st.composite
def cbor_items(draw: st.DrawFn, depth: int = 0) -> bytes:
    """Well-formed-ish CBOR with the tags, floats and indefinite lengths decoders trip on."""
    choice = draw(st.integers(0, 11 if depth < 4 else 5))
    if choice == 0:
        return _head(draw(st.sampled_from([0, 1])), draw(st.integers(0, 2**64 - 1)))
    if choice == 1:
        return _head(2, 0) if draw(st.booleans()) else _bytes_item(draw(st.binary(max_size=20)))
    if choice == 2:
        raw = draw(st.binary(max_size=12) | st.text(max_size=8).map(str.encode))
        return _head(3, len(raw)) + raw
    if choice == 3:
        return (
            bytes([0xF9]) + draw(st.binary(min_size=2, max_size=2))
            if draw(st.booleans())
            else bytes([0xFB]) + struct.pack(">d", draw(st.floats()))
        )
    if choice == 4:
        return bytes([draw(st.sampled_from([0xF4, 0xF5, 0xF6, 0xF7, 0xF0, 0xF8, 0xFF]))])
    if choice == 5:
        return draw(st.binary(max_size=4))  # garbage
    if choice in (6, 7):
        items = draw(st.lists(cbor_items(depth + 1), max_size=3))
        if draw(st.booleans()):
            return bytes([0x9F]) + b"".join(items) + b"\xff"
        return _head(4, len(items)) + b"".join(items)
    if choice in (8, 9):
        pairs = draw(st.lists(st.tuples(cbor_items(depth + 1), cbor_items(depth + 1)), max_size=3))
        return _head(5, len(pairs)) + b"".join(k + v for k, v in pairs)
    tag = draw(st.sampled_from(CBOR_TAGS) | st.integers(0, 2**64 - 1))
    return _head(6, tag) + draw(cbor_items(depth + 1))


def _bytes_item(raw: bytes) -> bytes:
    return _head(2, len(raw)) + raw


JSON_TOKENS = st.sampled_from(
    [
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        '"m2m:cnt"',
        '"a"',
        "1",
        "-0",
        "1e999",
        "1.5e-400",
        "true",
        "null",
        "NaN",
        '"\\ud800"',
        '"\\u0000"',
        '"\\x"',
        " ",
        "18446744073709551616",
        "\x00",
        '"\xff"',
        "[" * 200,
        "]" * 200,
    ]
)


def _decodes_or_bad_request(body: bytes, serialization: str) -> None:
    try:
        decode(body, serialization)
    except BadRequest as error:
        assert error.status == RSC.BAD_REQUEST and error.message


@DECODE
@given(st.binary(max_size=200) | st.lists(cbor_items(), min_size=1, max_size=2).map(b"".join))
def test_cbor_decoding_never_raises_anything_but_bad_request(body: bytes) -> None:
    _decodes_or_bad_request(body, CBOR)


@DECODE
@given(
    st.binary(max_size=200)
    | st.lists(JSON_TOKENS, min_size=1, max_size=12).map(
        lambda t: "".join(t).encode("utf-8", "surrogatepass")
    )
)
def test_json_decoding_never_raises_anything_but_bad_request(body: bytes) -> None:
    _decodes_or_bad_request(body, JSON)


def test_pathological_bodies_are_bad_requests() -> None:
    for body in (b"[" * 100_000, b"\x81" * 100_000, b"\x9f" * 100_000, b"\xa1\x61a" * 50_000):
        for serialization in (JSON, CBOR):
            _decodes_or_bad_request(body, serialization)


PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@DECODE
@given(PLAIN.filter(lambda value: value is not None))
def test_plain_values_survive_a_round_trip(value: Any) -> None:
    assert decode(encode(value, JSON), JSON) == value
    assert decode(encode(value, CBOR), CBOR) == value
    assert encode(None, JSON) == encode(None, CBOR) == b""  # no content: no body


# ---- (c) over HTTP ---------------------------------------------------------------------------

CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/json;ty=3",
        "application/json; ty=4",
        "application/json;ty=2",
        "application/cbor;ty=3",
        "application/cbor",
        "application/vnd.onem2m-res+json;ty=23",
        "application/json;ty=abc",
        "application/json;ty=",
        "application/json;ty=-1",
        "application/json;ty=99999999999999999999",
        "application/json;charset=utf-8",
        "application/xml",
        "text/plain",
        "application/octet-stream",
        ";ty=3",
        "",
        "é;ty=3",
    ]
)
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=12
)
PATHS = st.one_of(
    st.sampled_from(
        [
            "/cse-in",
            "/cse-in/meter",
            "/cse-in/meter/reads",
            "/cse-in/meter/reads/la",
            "/cse-in/meter/grp/fopt",
            "/~/id-in/cse-in/meter",
            "/_/sp.example/id-in/cse-in/meter/reads",
            "/~/id-mn/cse-mn",
            "/",
            "/~",
            "/_/",
            "/%ff%fe",
            "/cse-in/%2e%2e",
            "/cse-in//x",
        ]
    ),
    st.text(st.sampled_from("abc-_.~/%20"), max_size=12).map(lambda p: "/" + p),
)
QUERIES = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "fu",
                "ty",
                "lbl",
                "lim",
                "lvl",
                "ofst",
                "rcn",
                "drt",
                "atrl",
                "crb",
                "fo",
                "rn",
                "sza",
                "rt",
                "zz",
                "c.ty",
                "%ff",
            ]
        ),
        st.sampled_from(
            ["1", "2", "3", "-1", "a+b", "x", "", "99999999999999999999", "20260101T000000"]
        ),
    ),
    max_size=4,
)
METHODS = st.sampled_from(["GET", "POST", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])


HttpCall = tuple[str, str, dict[str, str], bytes]
WELL_FORMED_PATHS = {
    "/cse-in": 5,
    "/cse-in/meter": 2,
    "/~/id-in/cse-in/meter/reads": 3,
    "/_/sp.example/id-in/cse-in/meter/reads": 3,
    "/cse-in/meter/reads/la": 4,
    "/cse-in/meter/grp": 9,
    "/cse-in/meter/acp": 1,
    "/cse-in/meter/reads/watch": 23,
}


@st.composite
def well_formed_calls(draw: st.DrawFn) -> HttpCall:
    """A proper oneM2M request over HTTP, with a fuzzed body (and sometimes a query)."""
    path = draw(st.sampled_from(sorted(WELL_FORMED_PATHS)))
    subject = WELL_FORMED_PATHS[path]
    serialization = draw(st.sampled_from([JSON, CBOR]))
    media = f"application/{serialization}"
    headers = {
        "X-M2M-Origin": draw(st.sampled_from([AE, ADMIN])),
        "X-M2M-RI": "w",
        "X-M2M-RVI": "3",
    }
    method = draw(st.sampled_from(["POST", "POST", "PUT", "PUT", "GET", "DELETE"]))
    body = b""
    if method == "POST":
        children = sorted(int(t) for t in SPECS[subject].children) or sorted(TEMPLATES)
        ty = draw(st.sampled_from(children))
        headers["Content-Type"] = f"{media};ty={ty}"
        content = draw(bodies(ty))
    elif method == "PUT":
        headers["Content-Type"] = media
        content = draw(bodies(subject, create=False))
    else:
        content = None
    try:
        body = encode(content, serialization)
    except (TypeError, ValueError):  # e.g. a 65-bit integer in JSON: send what CBOR makes
        body = encode(content, CBOR)
    if draw(st.booleans()):
        headers["Accept"] = draw(st.sampled_from(["application/json", "application/cbor"]))
    query = draw(usually(st.just([]), QUERIES, 3))
    text = "&".join(f"{k}={v}" for k, v in query)
    return method, path + ("?" + text if text else ""), headers, body


@st.composite
def junk_calls(draw: st.DrawFn) -> HttpCall:
    """Any method, path, query, headers and bytes."""
    headers = {"X-M2M-Origin": AE, "X-M2M-RI": "fz", "X-M2M-RVI": "3"}
    headers.update(
        draw(
            st.dictionaries(
                st.sampled_from(["X-M2M-Origin", "X-M2M-RI", "X-M2M-RVI", "X-M2M-RET", "X-M2M-EC"]),
                HEADER_TEXT,
                max_size=3,
            )
        )
    )
    content_type = draw(CONTENT_TYPES)
    if content_type is not None:
        headers["Content-Type"] = content_type
    accept = draw(st.sampled_from([None, "application/json", "*/*", "text/html", "x", ""]))
    if accept is not None:
        headers["Accept"] = accept
    text = "&".join(f"{k}={v}" for k, v in draw(QUERIES))
    path = draw(PATHS) + ("?" + text if text else "")
    return draw(METHODS), path, headers, draw(st.binary(max_size=64))


@HTTP
@given(usually(well_formed_calls(), junk_calls(), 2))
def test_random_http_requests_get_onem2m_answers(call: HttpCall) -> None:
    method, url_tail, headers, body = call

    async def scenario() -> None:
        async with (
            CommonServicesEntity(MemoryStorage(), _settings(), clock=ManualClock()) as cse,
            HttpServer(cse, "127.0.0.1", 0, max_body_size=4096, trust=Trust.INSECURE) as server,
            aiohttp.ClientSession(skip_auto_headers=["Content-Type", "Accept"]) as session,
        ):
            await _seed(cse)
            url = URL(server.url + url_tail, encoded=True)
            async with session.request(method, url, data=body or None, headers=headers) as reply:
                payload = await reply.read()
                assert "X-M2M-RSC" in reply.headers, (reply.status, payload)
                rsc = RSC(int(reply.headers["X-M2M-RSC"]))
                event(f"{method} -> {rsc.name}")
                assert rsc != RSC.INTERNAL_SERVER_ERROR, payload
                assert reply.status != 500 or rsc == RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED
                assert reply.status == http_status(rsc) or (reply.status, rsc) == (413, 4000)
                if not rsc.is_success and method != "HEAD":
                    serialization = CBOR if "cbor" in reply.content_type else JSON
                    content = decode(payload, serialization)
                    assert isinstance(content["m2m:dbg"], str) and content["m2m:dbg"]
            await check_tree(cse)

    asyncio.run(scenario())
