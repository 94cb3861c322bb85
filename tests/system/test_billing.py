"""CIS/Billing's bulk reads through the whole chain: CIS → MDMS → head-end → DAP → meters →
MDMS → CIS, with real `gridm2m headend` and `gridm2m gateway` processes and meters running
the agent code, read back through the head-end's API as the interop runner reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from headend.bulk_reads import NO_ANSWER
from tests.system.harness import T0, System

pytestmark = pytest.mark.slow

METERS = ["mtr-b1", "mtr-b2", "mtr-b3"]
SILENT = "mtr-b4"  # registered, then stopped: it never answers


async def cis_request(system: System, cycle: str) -> dict[str, Any]:
    """Have CIS send a request for `cycle` now, and wait for its answer."""
    assert system._session is not None
    async with system._session.post(
        f"{system.api}/api/apps/cis/requests", json={"cycle": cycle}, headers=system.api_headers
    ) as reply:
        sent = await reply.json()
        assert reply.status == 202, sent
    found = await system.poll(
        f"the answer to CIS request {sent['id']}",
        lambda: system.get(f"{system.api}/api/apps/cis/requests/{sent['id']}"),
        lambda found: (found.get("request") or {}).get("data_received_at") is not None,
    )
    return dict(found["request"])


async def test_cis_gets_every_meters_reads_and_the_silent_meter_is_listed_at_the_deadline(
    tmp_path: Path,
) -> None:
    extra = {"mdms": {"bulk_read_deadline": 5.0}}  # the silent meter is not waited for long
    async with System(tmp_path, headend_extra=extra) as system:
        for meter in [*METERS, SILENT]:
            await system.meter(meter, "coap", prepay=False)
        # Every meter is registered and known to the MDMS (each answers a read).
        for meter in [*METERS, SILENT]:
            issued = await system.command(meter, {"cmd": "read"})
            await system.command_result(issued["id"])
        silent = next(agent for agent in system.meters if agent.config["meter_id"] == SILENT)
        silent.stop()
        assert system._session is not None
        schedule = {
            "meters": [*METERS, SILENT],
            "batch_size": 3,  # c1: the three meters, c2: the silent one
            "batches_per_day": 0,  # no schedule: the test asks
            "clock": {"speed": 1, "start_ts": T0 + 20 * 3600},  # 20:00, in the window
        }
        async with system._session.post(
            f"{system.api}/api/apps/cis/schedule", json=schedule, headers=system.api_headers
        ) as reply:
            assert reply.status == 200, await reply.text()

        complete = await cis_request(system, "c1")
        partial = await cis_request(system, "c2")

    assert complete["status"] == "answered" and complete["mdms_status"] == "complete"
    assert sorted(complete["reads"]) == METERS and complete["missing"] == {}
    for meter, read in complete["reads"].items():
        channel = read["ch"][0]
        assert read["n"] == 96 and len(channel["v"]) == 96, meter  # a day of 15 min
        assert channel["r0"] > 0
    assert complete["segments"] == complete["mdms_segments"] == 1
    assert complete["data_size"] == complete["mdms_data_size"]
    sent_at, taken_at = complete["sent_at"], complete["mdms_received_at"]
    assert sent_at <= taken_at <= complete["mdms_answered_at"] <= complete["data_received_at"]

    assert partial["mdms_status"] == "partial" and partial["reads"] == {}
    assert partial["missing"] == {SILENT: NO_ANSWER}
    assert partial["mdms_ready_at"] >= partial["mdms_deadline_at"]
