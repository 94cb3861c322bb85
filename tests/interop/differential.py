"""Differential conformance: the same scripted oneM2M requests to ACME and to GridM2M's CSE.

Each case is a short sequence of requests over HTTP (TS-0009) in a part of the resource tree of
its own (its own AE, named after the case). For every step the comparison takes the response
status code (`X-M2M-RSC`) and the shape of the returned content: the wrapper keys and the
attribute short names of the resource (`m2m:cnt/mni`), not their values, since `ri`, `ct`,
`lt`, `et`, `pi` naturally differ. A step may also name a few attributes whose values must
agree (`cni` after an eviction, a discovery's `m2m:uril`); the CSEs' own names (CSEBase name,
CSE-ID, SP-ID) are written back as placeholders before those values are compared.

The two CSEs run with different names (ACME `/id-in`, `cse-in`; GridM2M `/id-gm`, `cse-gm`),
so a case writes its targets with placeholders that a per-CSE `Profile` fills in: `{cb}` the
CSEBase name, `{csi}` the SP-relative CSE-ID, `{sp}` the SP-ID's domain, `{admin}`, and per
case `{ae}` (the case's AE resource name) and `{orig}` (the case's AE-ID).

`run_cases` runs every case on one CSE; `differences` compares two runs. `DELIBERATE` lists the
steps where GridM2M knowingly answers otherwise (docs/conformance.md), `PENDING` the
differences not yet fixed; `tests/interop/test_differential.py` holds both lists to the truth.

    python -m tests.interop.differential     # starts both CSEs, prints the differences
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cse.app import CSEConfig, running_cse
from tests.interop.acme_cse import ADMIN, CSE_ID, CSE_NAME, AcmeClient, AcmeCSE

TY_ACP, TY_AE, TY_CNT, TY_CIN, TY_GRP, TY_SUB = 1, 2, 3, 4, 9, 23
METHODS = {"create": "POST", "retrieve": "GET", "update": "PUT", "delete": "DELETE"}

# ---------------------------------------------------------------------------------------------
# The CSEs


@dataclass(frozen=True)
class Profile:
    """What differs between two CSEs before any request: their names."""

    label: str
    cse_id: str  # SP-relative, "/id-in"
    cse_name: str  # CSEBase resource name, "cse-in"
    sp_id: str  # the SP-ID's domain, without the leading "//"
    admin: str

    def names(self) -> dict[str, str]:
        return {"cb": self.cse_name, "csi": self.cse_id, "sp": self.sp_id, "admin": self.admin}


ACME = Profile("ACME", CSE_ID, CSE_NAME, "acme.example.com", ADMIN)
GRIDM2M = Profile("GridM2M", "/id-gm", "cse-gm", "gridm2m.example.com", "CAdmin")


@contextlib.asynccontextmanager
async def gridm2m_cse(profile: Profile = GRIDM2M) -> AsyncIterator[str]:
    """GridM2M's CSE in this process on a free loopback port; yields its base URL.

    Its HTTP listener believes every `X-M2M-Origin`, as ACME does here (trust "insecure",
    docs/interop.md): the comparison is about oneM2M behaviour, not about proving originators.
    """
    config = CSEConfig.model_validate(
        {
            "cse_id": profile.cse_id,
            "cse_name": profile.cse_name,
            "sp_id": profile.sp_id,
            "admin_originator": profile.admin,
            "db": ":memory:",
            "http": {"port": 0, "trust": "insecure"},
        }
    )
    async with running_cse(config) as running:
        yield running.http.url


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class Step:
    """One request. `to` is a oneM2M ID (CSE-relative, `/csi/...` SP-relative or `//sp/...`
    absolute); strings in `to`, `fr`, `body` and `query` may hold `{placeholders}`."""

    name: str
    op: str  # create, retrieve, update, delete
    to: str
    fr: str = "{orig}"
    ty: int | None = None
    body: dict[str, Any] | None = None
    query: dict[str, str] | None = None
    compare: tuple[str, ...] = ()  # attributes whose values must agree, too
    # Values to wait for before comparing: ACME applies some effects after answering (its
    # delete-event handler drops a deleted member from groups in another thread), so the step
    # reads again, for a bounded time, until they hold. A CSE that never settles still differs.
    settle: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Case:
    name: str
    steps: tuple[Step, ...]


def register(name: str = "register", fr: str = "{orig}", **ae: Any) -> Step:
    """An AE registration (TS-0001 10.2.2.2) under the case's name; `ae` adds or replaces
    attributes, None removes one."""
    body = {"rn": "{ae}", "api": "Ndifftest", "rr": False, "srv": ["3"], **ae}
    body = {key: value for key, value in body.items() if value is not None}
    return Step(name, "create", "{cb}", fr, TY_AE, {"m2m:ae": body})


def create(name: str, to: str, ty: int, body: dict[str, Any], **kw: Any) -> Step:
    return Step(name, "create", to, ty=ty, body=body, **kw)


def retrieve(name: str, to: str, **kw: Any) -> Step:
    return Step(name, "retrieve", to, **kw)


def update(name: str, to: str, body: dict[str, Any], **kw: Any) -> Step:
    return Step(name, "update", to, body=body, **kw)


def delete(name: str, to: str, **kw: Any) -> Step:
    return Step(name, "delete", to, **kw)


def cnt(rn: str, **attributes: Any) -> dict[str, Any]:
    return {"m2m:cnt": {"rn": rn, **attributes}}


def cin(con: str, **attributes: Any) -> dict[str, Any]:
    return {"m2m:cin": {"con": con, **attributes}}


AE = "{cb}/{ae}"
RULES = {"acr": [{"acor": ["{orig}"], "acop": 63}]}

CASES: tuple[Case, ...] = (
    Case("ae-registration", (
        register(),
        retrieve("retrieve", AE),
        register("missing-api", fr="Cae-registration-2", rn="{ae}-2", api=None),
        register("bad-api", fr="Cae-registration-3", rn="{ae}-3", api="xdifftest"),
        register("same-originator", rn="{ae}-4"),
        register("missing-rr", fr="Cae-registration-5", rn="{ae}-5", rr=None),
        register("assigned-id", fr="C", rn="{ae}-6"),
        register("sp-assigned-id", fr="S", rn="{ae}-7"),
        register("no-originator", fr="", rn="{ae}-8"),
        delete("deregister", AE),
        retrieve("retrieve-deregistered", AE, fr="{admin}"),
    )),
    Case("unregistered-originator", (
        register(),
        retrieve("retrieve-csebase", "{cb}", fr="Cnobody"),
        retrieve("retrieve-ae", AE, fr="Cnobody"),
        create("create-under-ae", AE, TY_CNT, cnt("intruder"), fr="Cnobody"),
    )),
    Case("container", (
        register(),
        create("create", AE, TY_CNT, cnt("cnt", mni=10, lbl=["a:1"])),
        retrieve("retrieve", AE + "/cnt"),
        update("update-lbl", AE + "/cnt", {"m2m:cnt": {"lbl": ["a:2"]}}),
        update("update-empty", AE + "/cnt", {"m2m:cnt": {}}),
        retrieve("retrieve-after", AE + "/cnt", compare=("lbl", "st", "mni")),
        update("update-cni", AE + "/cnt", {"m2m:cnt": {"cni": 3}}),
        create("duplicate-name", AE, TY_CNT, cnt("cnt")),
        create("past-et", AE, TY_CNT, cnt("old", et="20200101T000000")),
        update("update-rcn-0", AE + "/cnt", {"m2m:cnt": {"mni": 9}}, query={"rcn": "0"}),
        update("update-rcn-9", AE + "/cnt", {"m2m:cnt": {"mni": 8}}, query={"rcn": "9"}),
        retrieve("partial", AE + "/cnt", query={"atrl": "mni+lbl"}),
        delete("delete", AE + "/cnt"),
        retrieve("retrieve-deleted", AE + "/cnt"),
    )),
    Case("content-instances", (
        register(),
        create("create-cnt", AE, TY_CNT, cnt("cnt", mni=2)),
        retrieve("la-empty", AE + "/cnt/la"),
        create("cin-1", AE + "/cnt", TY_CIN, cin("one", rn="c1")),
        create("cin-2", AE + "/cnt", TY_CIN, cin("two", rn="c2", cnf="text/plain:0")),
        create("cin-3", AE + "/cnt", TY_CIN, cin("three", rn="c3")),
        retrieve("cnt-after-eviction", AE + "/cnt", compare=("cni", "cbs")),
        retrieve("evicted", AE + "/cnt/c1"),
        retrieve("la", AE + "/cnt/la", compare=("con",)),
        retrieve("ol", AE + "/cnt/ol", compare=("con",)),
        update("update-cin", AE + "/cnt/c3", {"m2m:cin": {"con": "changed"}}),
        create("cin-missing-con", AE + "/cnt", TY_CIN, {"m2m:cin": {"rn": "c4"}}),
        create("cnt-mbs", AE, TY_CNT, cnt("small", mbs=4)),
        create("cin-over-mbs", AE + "/small", TY_CIN, cin("too long")),
        delete("delete-la", AE + "/cnt/la"),
        retrieve("cnt-after-delete-la", AE + "/cnt", compare=("cni",)),
    )),
    Case("csebase", (
        retrieve("retrieve", "{cb}", fr="{admin}"),
        update("update", "{cb}", {"m2m:cb": {"lbl": ["x"]}}, fr="{admin}"),
        delete("delete", "{cb}", fr="{admin}"),
    )),
    Case("ae-attributes", (
        register(csz=["application/json", "application/cbor"], lbl=["k:v"], apn="difftest"),
        retrieve("retrieve", AE, compare=("csz",)),
        update("update-rr", AE, {"m2m:ae": {"rr": True}}),
        update("update-aei", AE, {"m2m:ae": {"aei": "Cother"}}),
        register("empty-poa", fr="Cae-attributes-2", rn="{ae}-2", poa=[]),
        register("bad-csz", fr="Cae-attributes-3", rn="{ae}-3", csz=["text/plain"]),
    )),
    Case("creator", (
        register(),
        create("cr-null", AE, TY_CNT, cnt("withcr", cr=None)),
        retrieve("retrieve", AE + "/withcr", compare=("cr",)),
        create("cr-value", AE, TY_CNT, cnt("badcr", cr="Csomeoneelse")),
        create("no-cr", AE, TY_CNT, cnt("nocr")),
    )),
    Case("disr", (
        register(),
        create("create-cnt", AE, TY_CNT, cnt("cnt", disr=True)),
        create("create-cin", AE + "/cnt", TY_CIN, cin("hidden", rn="c1")),
        retrieve("retrieve-cin", AE + "/cnt/c1"),
        retrieve("retrieve-la", AE + "/cnt/la"),
        update("allow", AE + "/cnt", {"m2m:cnt": {"disr": False}}, compare=("cni",)),
        retrieve("retrieve-cin-allowed", AE + "/cnt/c1"),
    )),
    Case("subscription", (
        register(),
        create("create-cnt", AE, TY_CNT, cnt("cnt")),
        create("create", AE + "/cnt", TY_SUB, {"m2m:sub": {"rn": "sub", "nu": ["{orig}"]}}),
        retrieve("retrieve", AE + "/cnt/sub", compare=("nct", "enc")),
        create("bad-nct", AE + "/cnt", TY_SUB,
               {"m2m:sub": {"rn": "sub2", "nu": ["{orig}"], "enc": {"net": [3]}, "nct": 2}}),
        create("on-cin", AE + "/cnt/la", TY_SUB, {"m2m:sub": {"rn": "sub3", "nu": ["{orig}"]}}),
        create("unreachable-nu", AE + "/cnt", TY_SUB,
               {"m2m:sub": {"rn": "sub4", "nu": ["http://127.0.0.1:9/notify"]}}),
    )),
    Case("acp", (
        register(),
        create("create", AE, TY_ACP, {"m2m:acp": {"rn": "acp", "pv": RULES, "pvs": RULES}}),
        retrieve("retrieve", AE + "/acp"),
        create("create-empty-pv", AE, TY_ACP, {"m2m:acp": {"rn": "acp2", "pv": {}, "pvs": RULES}}),
        update("update-empty-pv", AE + "/acp", {"m2m:acp": {"pv": {}}}),
        retrieve("retrieve-after", AE + "/acp"),
        create("missing-pvs", AE, TY_ACP, {"m2m:acp": {"rn": "acp3", "pv": RULES}}),
    )),
    Case("group", (
        register(),
        create("member-a", AE, TY_CNT, cnt("a")),
        create("member-b", AE, TY_CNT, cnt("b")),
        create("create", AE, TY_GRP,
               {"m2m:grp": {"rn": "grp", "mnm": 5, "mid": [AE + "/a", AE + "/b"]}}),
        retrieve("retrieve", AE + "/grp", compare=("cnm", "mt", "csy")),
        retrieve("fanout", AE + "/grp/fopt"),
        delete("delete-member", AE + "/a"),
        retrieve("retrieve-after-delete", AE + "/grp", compare=("cnm",), settle=(("cnm", 1),)),
        create("too-many", AE, TY_GRP,
               {"m2m:grp": {"rn": "grp2", "mnm": 1, "mid": [AE + "/b", AE]}}),
    )),
    Case("discovery", (
        register(),
        create("cnt-x", AE, TY_CNT, cnt("x", lbl=["tag"])),
        create("cnt-y", AE, TY_CNT, cnt("y")),
        create("cnt-x-z", AE + "/x", TY_CNT, cnt("z", lbl=["tag"])),
        create("cin", AE + "/x", TY_CIN, cin("v")),
        retrieve("ty-3", AE, query={"fu": "1", "ty": "3"}, compare=("m2m:uril",)),
        retrieve("lbl", AE, query={"fu": "1", "lbl": "tag"}, compare=("m2m:uril",)),
        retrieve("lvl-1", AE, query={"fu": "1", "ty": "3", "lvl": "1"}, compare=("m2m:uril",)),
        retrieve("none", AE, query={"fu": "1", "ty": "9"}, compare=("m2m:uril",)),
        retrieve("drt-2", AE, query={"fu": "1", "ty": "3", "drt": "2"}),
        retrieve("rcn-6", AE, query={"fu": "1", "ty": "3", "rcn": "6"}),
    )),
    Case("addressing", (
        register(),
        retrieve("sp-relative", "{csi}/" + AE),
        retrieve("absolute", "//{sp}{csi}/" + AE),
        retrieve("cse-alias", "-/{ae}"),
        retrieve("wrong-sp-absolute", "//wrong-sp{csi}/" + AE),
        retrieve("wrong-cse-sp-relative", "/id-wrong/" + AE),
        retrieve("wrong-cse-absolute", "//{sp}/id-wrong/" + AE),
        retrieve("unknown-name", AE + "/nothing"),
    )),
    Case("unknown-type", (
        register(),
        create("ty-999", AE, 999, {"m2m:xyz": {"rn": "x"}}),
        create("wrong-child-type", AE, TY_CIN, cin("v")),
        create("wrapper-mismatch", AE, TY_CNT, {"m2m:cin": {"rn": "y", "con": "v"}}),
    )),
    Case("create-rcn", (
        register(),
        *(
            create(f"rcn-{rcn}", AE, TY_CNT, cnt(f"r{rcn}"), query={"rcn": str(rcn)})
            for rcn in (0, 1, 2, 3, 9)
        ),
        create("rcn-4", AE, TY_CNT, cnt("r4"), query={"rcn": "4"}),
        retrieve("retrieve-rcn-4", AE, query={"rcn": "4"}),
    )),
)  # fmt: skip

# What GridM2M knowingly answers otherwise, per (case, step): docs/conformance.md says why.
DELIBERATE: dict[tuple[str, str], str] = {
    ("content-instances", "cin-missing-con"): "con is mandatory (TS-0001 Release 3); ACME "
    "takes an instance without it (its Release 4 policy). docs/conformance.md, 'con'",
    ("content-instances", "delete-la"): "DELETE answers with nothing unless rcn asks (rcn's "
    "default for DELETE); ACME returns the deleted instance. docs/conformance.md, 'DELETE'",
    ("csebase", "retrieve"): "no ici/spi on the CSEBase (the SP-ID is configuration, the CSE-ID "
    "is csi); ACME shows both. docs/conformance.md, 'CSEBase'",
}

# Every other difference today: not (yet) decided or fixed, per (case, step). Remove an entry
# when the difference goes; move it to DELIBERATE once docs/conformance.md says why it stays.
PENDING: dict[tuple[str, str], str] = {}


# ---------------------------------------------------------------------------------------------
# Running and comparing


@dataclass(frozen=True)
class StepResult:
    case: str
    step: str
    rsc: int
    shape: frozenset[str]  # wrapper keys and attribute names, "m2m:cnt/mni"
    values: dict[str, Any] = field(default_factory=dict)  # the step's `compare` attributes
    dbg: str = field(default="", compare=False)  # the error text, for people only


@dataclass(frozen=True)
class Difference:
    case: str
    step: str
    theirs: StepResult  # the reference (ACME)
    ours: StepResult

    @property
    def key(self) -> tuple[str, str]:
        return (self.case, self.step)

    def describe(self) -> str:
        parts = []
        if self.theirs.rsc != self.ours.rsc:
            parts.append(f"rsc {self.theirs.rsc} vs {self.ours.rsc}")
        if only := subtree_roots(self.theirs.shape - self.ours.shape):
            parts.append("only ACME: " + " ".join(only))
        if only := subtree_roots(self.ours.shape - self.theirs.shape):
            parts.append("only GridM2M: " + " ".join(only))
        for name in sorted(set(self.theirs.values) | set(self.ours.values)):
            mine, other = self.ours.values.get(name), self.theirs.values.get(name)
            if mine != other:
                parts.append(f"{name}: {other!r} vs {mine!r}")
        return "; ".join(parts)


def subtree_roots(paths: frozenset[str]) -> list[str]:
    """`paths` without those whose parent is in it too: `m2m:cin`, not each of its keys."""
    return sorted(path for path in paths if path.rpartition("/")[0] not in paths)


def fill(template: Any, names: dict[str, str]) -> Any:
    """`template` with every `{placeholder}` in its strings (keys too) filled in."""
    if isinstance(template, str):
        return template.format(**names)
    if isinstance(template, list):
        return [fill(item, names) for item in template]
    if isinstance(template, dict):
        return {fill(key, names): fill(value, names) for key, value in template.items()}
    return template


def unfill(value: Any, profile: Profile) -> Any:
    """A returned value with the CSE's own names written back as placeholders; lists sorted,
    since no case asks for an order."""
    if isinstance(value, str):
        for name, text in (("sp", profile.sp_id), ("csi", profile.cse_id)):
            value = value.replace(text, "{" + name + "}")
        return "/".join("{cb}" if part == profile.cse_name else part for part in value.split("/"))
    if isinstance(value, list):
        return sorted((unfill(item, profile) for item in value), key=repr)
    if isinstance(value, dict):
        return {key: unfill(item, profile) for key, item in value.items()}
    return value


def http_path(to: str) -> str:
    """TS-0009 6.2.1: CSE-relative `/to`, SP-relative `/~/to`, absolute `/_/to`."""
    if to.startswith("//"):
        return "/_/" + to[2:]
    if to.startswith("/"):
        return "/~" + to
    return "/" + to


def shape(content: dict[str, Any]) -> frozenset[str]:
    """The keys of a response's content: top-level keys, and inside every `m2m:` object its
    keys, as paths (`m2m:rce/m2m:cnt/rn`); values are left out."""
    found: set[str] = set()

    def walk(prefix: str, obj: dict[str, Any]) -> None:
        for key, value in obj.items():
            path = prefix + key
            found.add(path)
            if isinstance(value, dict) and key.startswith("m2m:"):
                walk(path + "/", value)

    walk("", content)
    return frozenset(found)


def compared_values(
    content: dict[str, Any], names: Iterable[str], profile: Profile
) -> dict[str, Any]:
    """The named attributes of the one resource in `content` (or top-level keys such as
    `m2m:uril`), normalized by `unfill`; missing ones are None."""
    only = next(iter(content.values())) if len(content) == 1 else None
    inner: dict[str, Any] = only if isinstance(only, dict) else {}
    return {name: unfill(content.get(name, inner.get(name)), profile) for name in names}


async def run_case(client: AcmeClient, profile: Profile, case: Case) -> list[StepResult]:
    names = {**profile.names(), "ae": case.name, "orig": "C" + case.name}
    results = []
    for step in case.steps:
        path = http_path(fill(step.to, names))
        if step.query:
            # TS-0009 separates list values by a literal "+", which a params dict would escape.
            path += "?" + urllib.parse.urlencode(fill(step.query, names), safe="+")

        async def send(path: str = path, step: Step = step) -> tuple[int, dict[str, Any]]:
            return await client.request(
                METHODS[step.op],
                path,
                ty=step.ty,
                body=fill(step.body, names),
                originator=fill(step.fr, names),
            )

        rsc, content = await send()
        deadline = time.monotonic() + 10.0
        wanted = dict(step.settle)
        while wanted and compared_values(content, tuple(wanted), profile) != wanted:
            if time.monotonic() > deadline:
                break  # compared as it stands: the difference is reported below
            await asyncio.sleep(0.05)  # a bounded poll of the other process's state
            rsc, content = await send()
        values = compared_values(content, step.compare, profile)
        dbg = str(content.get("m2m:dbg", ""))
        results.append(StepResult(case.name, step.name, rsc, shape(content), values, dbg))
    return results


async def run_cases(
    base_url: str, profile: Profile, cases: Iterable[Case] = CASES
) -> list[StepResult]:
    """Every case, in order, against the CSE at `base_url`."""
    client = AcmeClient(base_url, profile.admin)
    try:
        return [result for case in cases for result in await run_case(client, profile, case)]
    finally:
        await client.close()


def differences(theirs: list[StepResult], ours: list[StepResult]) -> list[Difference]:
    """Steps whose status code, content shape or compared values differ."""
    found = []
    for their, our in zip(theirs, ours, strict=True):
        assert (their.case, their.step) == (our.case, our.step)
        if (their.rsc, their.shape, their.values) != (our.rsc, our.shape, our.values):
            found.append(Difference(their.case, their.step, their, our))
    return found


def listed(key: tuple[str, str]) -> str:
    """Where a difference is listed, with its reason; "NEW" when it is not."""
    if key in DELIBERATE:
        return "deliberate: " + DELIBERATE[key]
    if key in PENDING:
        return "pending: " + PENDING[key]
    return "NEW"


def table(theirs: list[StepResult], ours: list[StepResult], *, every_step: bool = False) -> str:
    """The differences (every step with `every_step`) as plain text: case, step, both status
    codes, what differs and where it is listed; with `every_step` also both `m2m:dbg` texts."""
    found = {difference.key: difference for difference in differences(theirs, ours)}
    rows = [("case", "step", "ACME", "GridM2M", "difference [listed]")]
    for their, our in zip(theirs, ours, strict=True):
        difference = found.get((their.case, their.step))
        if difference is None and not every_step:
            continue
        what = f"{difference.describe()} [{listed(difference.key)}]" if difference else ""
        if every_step and (their.dbg or our.dbg):
            what += f" (ACME: {their.dbg!r}; GridM2M: {our.dbg!r})"
        rows.append((their.case, their.step, str(their.rsc), str(our.rsc), what.strip()))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join(
        "  ".join(
            [*(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)), row[4]]
        ).rstrip()
        for row in rows
    )


async def run_both(workdir: Path) -> tuple[list[StepResult], list[StepResult]]:
    """Start ACME and GridM2M, run every case on each; (ACME's results, GridM2M's)."""
    async with AcmeCSE(workdir / "acme") as acme, gridm2m_cse() as ours:
        theirs = await run_cases(acme.url, ACME)
        mine = await run_cases(ours, GRIDM2M)
    return theirs, mine


async def main(arguments: list[str]) -> int:
    """Print the differences (`-v`: every step); exit 1 if one is not listed."""
    with tempfile.TemporaryDirectory(prefix="differential-") as workdir:
        started = time.monotonic()
        theirs, ours = await run_both(Path(workdir))
    found = differences(theirs, ours)
    print(table(theirs, ours, every_step="-v" in arguments))
    new = [difference for difference in found if listed(difference.key) == "NEW"]
    elapsed = time.monotonic() - started
    print(
        f"\n{len(theirs)} steps, {len(found)} differences, {len(new)} not listed ({elapsed:.1f} s)"
    )
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
