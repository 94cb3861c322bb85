"""CoAP liveness of a real `gridm2m cse` process, on the event loop it runs in production."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from pathlib import Path

import aiocoap  # type: ignore[import-untyped]
import pytest

from tests.processes import CSEProcess

pytestmark = pytest.mark.slow


async def test_coap_answers_after_datagrams_from_a_socket_closed_at_once(tmp_path: Path) -> None:
    # The datagrams of the report: CON GETs whose answers meet a closed port (ICMP errors).
    cse = CSEProcess(
        "--coap-port", "0", "--coap-trust", "claimed", "--db", str(tmp_path / "cse.db")
    )
    await cse.start()
    try:
        match = re.search(r"coap://127\.0\.0\.1:(\d+)", cse.listening)
        assert match, cse.listening
        port = int(match.group(1))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
            for i in range(30):
                gone.sendto(bytes([0x44, 1, 0, i, 0, 0, 0, i]), ("127.0.0.1", port))
        context = await aiocoap.Context.create_client_context(transports=["simple6"])
        try:
            request = aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{port}/cse-in")
            async with asyncio.timeout(20):
                reply = await context.request(request).response
        finally:
            await context.shutdown()
        # No oneM2M options at all: refused (release version missing), but answered.
        assert reply.code.is_response()
        assert b"release version" in reply.payload
    finally:
        assert await cse.stop() == 0


async def test_a_flood_of_junk_datagrams_writes_a_few_log_lines(tmp_path: Path) -> None:
    # Each unparsable datagram used to be one WARNING line: a log that fills an SD card.
    log_file = tmp_path / "cse.log"
    with log_file.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridm2m", "cse", "--http-port", "0", "--coap-port", "0",
            "--coap-trust", "claimed", "--db", str(tmp_path / "c.db"),
            stdout=asyncio.subprocess.PIPE, stderr=log,
        )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
        match = re.search(r"coap://127\.0\.0\.1:(\d+)", line)
        assert match, line
        port = int(match.group(1))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            for number in range(2000):
                junk = b"\x40\x01" + number.to_bytes(2, "big") + b"\xf0junk"
                attacker.sendto(junk, ("127.0.0.1", port))
        context = await aiocoap.Context.create_client_context(transports=["simple6"])
        try:  # answered after the flood: every junk datagram was read before it
            request = aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{port}/cse-in")
            async with asyncio.timeout(20):
                await context.request(request).response
        finally:
            await context.shutdown()
    finally:
        process.terminate()
        await process.wait()
    junk_lines = [line for line in log_file.read_text().splitlines() if "unparsable" in line]
    assert 1 <= len(junk_lines) <= 5, len(junk_lines)
