"""CoAP meters on a real gateway (`gridm2m gateway` as gridm2m/processes.py starts it, CoAP
OSCORE only, keys from its credential store): a board bundle from `gridm2m agent build
--credentials <the gateway's store>` run by the MicroPython unix port registers and its reads
reach the MDMS; `gridm2m credentials revoke` cuts it off at its next request; and a meter with
valid keys cannot register as another meter."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from device_agents.agent import compat, onem2m
from device_agents.fleet.emulator import SequenceInMemory
from device_agents.provisioning import meter_secrets
from gridm2m.cli import main
from gridm2m.processes import Stack
from tests.device_agents.mp import BundleRun, needs_micropython
from tests.device_agents.test_oscore import OSCORE_HEAP

TIMEOUT_S = 60.0
VICTIM, THIEF, BOARD = "mtr-victim", "mtr-thief", "mtr-board"
# One stack for the module (starting two processes is the slow part): one event loop too.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("stack"))
    running.meters = [VICTIM, THIEF]  # BOARD is not: its build provisions it
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        try:
            await running.start(session)
            yield running
        finally:
            await running.stop()


async def eventually(what: str, check: Callable[[], Awaitable[Any]], alive: Any = None) -> Any:
    """Poll `check()` (another process's state) until it returns something true."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        if alive is not None and not alive():
            raise AssertionError(f"gave up waiting for {what}: the meter ended")
        await asyncio.sleep(0.2)  # polling another process's state
    raise AssertionError(f"timed out waiting for {what}")


def stored_instances(stack: Stack, meter: str) -> int:
    """contentInstances of `meter` in the gateway's database (read-only)."""
    with sqlite3.connect(f"file:{stack.gateway_db}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT count(*) FROM resources WHERE ty = 4 AND path LIKE ?", (f"dap1/{meter}/%",)
        ).fetchone()
    return int(row[0])


def meter_registered(stack: Stack, meter: str) -> bool:
    with sqlite3.connect(f"file:{stack.gateway_db}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT count(*) FROM resources WHERE ty = 2 AND path = ?", (f"dap1/{meter}",)
        ).fetchone()
    return bool(row[0])


@pytest.mark.slow
@needs_micropython
async def test_a_built_oscore_meter_reports_until_its_credential_is_revoked(
    stack: Stack, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    args = ["agent", "build", "--out", str(bundle), "--meter-id", BOARD, "--transport", "coap"]
    args += ["--dap", f"127.0.0.1:{stack.coap_port}", "--credentials", stack.gateway_store]
    args += ["--cse-id", "/id-dap1", "--cse-name", "dap1", "--listen-port", "0"]
    # Gas C/I reports every 6 hours of meter time: at 7200x, one every 3 s.
    args += ["--kind", "gas", "--clock-speed", "7200"]
    assert main(args) == 0
    config = json.loads((bundle / "config.json").read_text())
    assert set(config["oscore"]) == {"kid", "secret", "salt"}
    # verbose: the meter prints why its link went down (the gateway's refusal).
    (bundle / "config.json").write_text(json.dumps({**config, "gas_period_h": 6, "verbose": True}))
    async with BundleRun(bundle, OSCORE_HEAP) as meter:
        await _report_until_revoked(stack, meter)


async def _report_until_revoked(stack: Stack, meter: BundleRun) -> None:
    printed, running = meter.printed, meter.running
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

            async def at_the_mdms() -> list[Any]:
                url = f"{stack.dashboard}/api/messages?meter={BOARD}"
                async with session.get(url, headers=stack.api_headers) as reply:
                    return list((await reply.json()).get("messages", []))

            messages = await eventually("the meter's reads at the MDMS", at_the_mdms, running)
        assert messages[0]["meter"] == BOARD

        revoked = subprocess.run(
            [sys.executable, "-m", "gridm2m", "credentials", "--store", stack.gateway_store,
             "revoke", BOARD],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert revoked.returncode == 0, revoked.stderr
        since = len(printed)

        def refusals() -> int:
            return sum("4.01" in line for line in printed[since:] if "link down" in line)

        async def refused(count: int) -> bool:
            return refusals() >= count

        # Its next request is refused (the gateway's store follows the CLI's commit) ...
        await eventually("a refusal", lambda: refused(1), running)
        stored, seen = stored_instances(stack, BOARD), refusals()
        # ... and so is the one after: nothing more is stored.
        await eventually("another refusal", lambda: refused(seen + 1), running)
        assert stored_instances(stack, BOARD) == stored
    except AssertionError as failure:
        raise meter.failure(failure) from None


async def test_a_meter_with_valid_keys_cannot_register_as_another(stack: Stack) -> None:
    """The thief's keys are its own and valid: the gateway knows it is the thief, whatever
    originator its requests name (4103), and the victim's name stays free."""
    secrets, _ = meter_secrets(stack.gateway_store, {THIEF: "coap"}, provision=False)
    config = {
        "meter_id": VICTIM,  # so the agent names Cmtr-victim as its originator
        "transport": "coap",
        "dap_host": "127.0.0.1",
        "dap_port": stack.coap_port,
        "cse_id": "/id-dap1",
        "cse_name": "dap1",
        "listen_port": 0,
        "poa_host": "127.0.0.1",
        **secrets[THIEF],
        "oscore_state": SequenceInMemory(),
    }
    dap = onem2m.Dap(config)
    await dap.connect()
    try:
        with pytest.raises(compat.LinkError, match="4103"):
            await dap.register()
    finally:
        await dap.close()
    assert not meter_registered(stack, VICTIM)
