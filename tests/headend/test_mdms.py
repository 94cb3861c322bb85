"""The MDMS AE on a running head-end: what it keys a meter message by.

A DAP registers with the IN-CSE and mirrors instances into its containers (here through the
IN-CSE's request handler, as the DAP's binding would hand them over); the MDMS hears of them
by its subscriptions, in process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cse.app import CSEConfig, HttpConfig
from cse.core.types import ResourceType
from cse.core.types import ResponseStatusCode as RSC
from headend.app import RunningHeadend, running_headend
from headend.config import DashboardConfig, HeadendConfig, MdmsConfig
from tests.helpers import ADMIN, create, delete
from tests.processes import GUARD

DAP = "/id-dap1"
DAP_PATH = "cse-in/id-dap1"


@pytest.fixture
async def headend(tmp_path: Path) -> AsyncIterator[RunningHeadend]:
    config = HeadendConfig(
        cse=CSEConfig(
            db=str(tmp_path / "in.db"),
            http=HttpConfig(port=0),
            remote_cses=[DAP],
        ),
        mdms=MdmsConfig(db=str(tmp_path / "mdms.db"), esi={"esi-1": ["gas-1"]}),
        dashboard=DashboardConfig(port=0, password="a password for the tests"),
    )
    async with running_headend(config) as running:
        yield running


async def as_dap(headend: RunningHeadend, to: str, ty: ResourceType, body: Any) -> None:
    reply = await headend.cse.cse.handle(create(to, int(ty), body, DAP))
    assert reply.status == RSC.CREATED, reply.content
    await notified(headend)


async def notified(headend: RunningHeadend) -> None:
    """Until the IN-CSE has delivered every notification (the MDMS has taken them)."""
    notifier = headend.cse.cse.notifier
    await notifier.wait_until(lambda: notifier.pending_count() == 0)


def mirrored(
    name: str, flow: str, ptype: str, seq: int, meter: str = "m1", **members: Any
) -> dict[str, Any]:
    content = {"flow": flow, "type": ptype, "seq": seq, "ts": 1_767_225_600, **members}
    labels = [f"meter:{meter}", "created:20260101T000000,000000"]
    return {"m2m:cin": {"rn": name, "lbl": labels, "con": orjson.dumps(content).decode()}}


async def test_the_key_is_the_instance_path_so_a_name_reused_in_another_container_counts(
    headend: RunningHeadend,
) -> None:
    csr = {"m2m:csr": {"csi": DAP, "cb": f"{DAP}/dap1", "rr": False, "srv": ["3"]}}
    await as_dap(headend, "cse-in", ResourceType.REMOTE_CSE, csr)
    for family in ("reading", "event"):
        await as_dap(headend, DAP_PATH, ResourceType.CONTAINER, {"m2m:cnt": {"rn": family}})
    # A DAP of another make may reuse an instance name across its containers: two messages.
    await as_dap(headend, f"{DAP_PATH}/reading", ResourceType.CONTENT_INSTANCE,
                 mirrored("x1", "mr-ondemand", "resp-data", 1))  # fmt: skip
    await as_dap(headend, f"{DAP_PATH}/event", ResourceType.CONTENT_INSTANCE,
                 mirrored("x1", "ev-fault", "alarm", 2))  # fmt: skip
    stored = await headend.store.recent_messages()
    assert sorted(m["key"] for m in stored) == ["id-dap1/event/x1", "id-dap1/reading/x1"]

    # The MDMS subscribes afresh (as after its subscription was lost) and reads the container
    # again: what it already has is not stored or counted twice.
    gone = await headend.cse.cse.handle(delete(f"{DAP_PATH}/reading/mdms-sub", ADMIN))
    assert gone.status == RSC.DELETED, gone.content
    await headend.mdms.start()
    await notified(headend)
    assert len(await headend.store.recent_messages()) == 2
    assert (await headend.store.meter("m1") or {})["messages"] == 2


async def test_a_message_the_store_refuses_is_dropped_and_does_not_hold_back_the_others(
    headend: RunningHeadend,
) -> None:
    csr = {"m2m:csr": {"csi": DAP, "cb": f"{DAP}/dap1", "rr": False, "srv": ["3"]}}
    await as_dap(headend, "cse-in", ResourceType.REMOTE_CSE, csr)
    await as_dap(headend, DAP_PATH, ResourceType.CONTAINER, {"m2m:cnt": {"rn": "event"}})
    # A message without a payload type passes the MDMS's first look but not the store's checks.
    # Were the notification refused, the IN-CSE would redeliver it for ever: `notified` would
    # never return, and the good message behind it would never be stored.
    async with asyncio.timeout(GUARD):
        await as_dap(headend, f"{DAP_PATH}/event", ResourceType.CONTENT_INSTANCE,
                     mirrored("bad", "ev-fault", "", 1))  # fmt: skip
        await as_dap(headend, f"{DAP_PATH}/event", ResourceType.CONTENT_INSTANCE,
                     mirrored("good", "ev-fault", "alarm", 2))  # fmt: skip
    stored = await headend.store.recent_messages()
    assert [m["key"] for m in stored] == ["id-dap1/event/good"]


async def dap_with(headend: RunningHeadend, *families: str) -> None:
    csr = {"m2m:csr": {"csi": DAP, "cb": f"{DAP}/dap1", "rr": False, "srv": ["3"]}}
    await as_dap(headend, "cse-in", ResourceType.REMOTE_CSE, csr)
    for family in families:
        await as_dap(headend, DAP_PATH, ResourceType.CONTAINER, {"m2m:cnt": {"rn": family}})


RECORD = {"recs": [{"t": 1_767_226_500, "vm": 100, "vb": 103}], "rx": 1_767_226_560}


async def test_a_gas_record_relayed_by_its_esi_is_the_gas_meters(
    headend: RunningHeadend,
) -> None:
    await dap_with(headend, "esi")
    relayed = mirrored("e1", "gas-interval-4h", "resp-data", 7, "esi-1", gm="gas-1",
                       via="esi-meter", **RECORD)  # fmt: skip
    await as_dap(headend, f"{DAP_PATH}/esi", ResourceType.CONTENT_INSTANCE, relayed)
    stored = await headend.store.recent_messages()
    assert [(m["meter"], m["flow"], m["seq"]) for m in stored] == [("gas-1", "gas-interval-4h", 7)]
    # Its size is the gas meter's data: what the ESI adds is framing, like the envelope.
    plain = {"recs": RECORD["recs"]}
    assert stored[0]["size"] == len(orjson.dumps(plain))
    assert await headend.store.meter("esi-1") is None
    assert headend.mdms.relays_refused == 0


async def test_a_meter_relaying_another_meters_gas_data_puts_nothing_in_its_account(
    headend: RunningHeadend,
) -> None:
    """The attack: an ordinary meter (m1), or an ESI that is not gas-2's, writes records into
    its own container naming another gas meter. Nothing is stored for that gas meter, nor
    for the writer; its own messages are still its own."""
    await dap_with(headend, "reading", "esi")
    forged = [
        ("f1", "m1", "gas-1"),  # an ordinary meter, for a gas meter that has an ESI
        ("f2", "m1", "gas-2"),  # ... for a gas meter that has none
        ("f3", "esi-1", "gas-2"),  # an ESI, for a gas meter not its own
    ]
    for name, writer, victim in forged:
        body = mirrored(name, "gas-interval-4h", "resp-data", 1, writer, gm=victim,
                        via="esi-meter", **RECORD)  # fmt: skip
        await as_dap(headend, f"{DAP_PATH}/esi", ResourceType.CONTENT_INSTANCE, body)
    await as_dap(headend, f"{DAP_PATH}/reading", ResourceType.CONTENT_INSTANCE,
                 mirrored("own", "mr-ondemand", "resp-data", 2))  # fmt: skip
    stored = await headend.store.recent_messages()
    assert [(m["meter"], m["flow"]) for m in stored] == [("m1", "mr-ondemand")]
    for victim in ("gas-1", "gas-2"):
        assert await headend.store.meter(victim) is None
    assert headend.mdms.relays_refused == 3


def test_the_esi_mapping_is_checked_at_load() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        MdmsConfig(esi={"esi-1": [""]})
    with pytest.raises(ValueError, match="itself"):
        MdmsConfig(esi={"esi-1": ["esi-1"]})
