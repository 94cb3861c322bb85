"""`gridm2m command`: issue a command through the head-end's API and print the answers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

_POLL_S = 0.5


class CommandLineError(Exception):
    """Arguments that do not make a command, or a head-end that cannot be reached."""


def parse_fields(fields: Sequence[str]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for field in fields:
        name, sep, value = field.partition("=")
        if not sep or not name:
            raise CommandLineError(f"field {field!r} is not name=value")
        number = value.lstrip("-")
        body[name] = int(value) if number.isdigit() and len(number) < 16 else value
    return body


def send_command(
    headend: str,
    meters: Sequence[str],
    name: str,
    fields: Sequence[str],
    *,
    dap: str | None,
    wait: float,
    token: str | None = None,
) -> int:
    body: dict[str, Any] = {"cmd": name, **parse_fields(fields), "issued_by": "cli"}
    meters = [m for m in meters if m]
    if not meters:
        raise CommandLineError("give at least one meter id")
    if len(meters) == 1:
        body["meter"] = meters[0]
    else:
        body["meters"] = list(meters)
    if dap:
        body["dap"] = dap
    if not token:
        raise CommandLineError(
            "the head-end's API needs an admin token: set GRIDM2M_HEADEND_TOKEN (make one with "
            "gridm2m credentials --config configs/headend.toml add-admin NAME)"
        )
    return asyncio.run(_send(headend.rstrip("/"), body, wait, token))


async def _send(headend: str, body: dict[str, Any], wait: float, token: str) -> int:
    timeout = aiohttp.ClientTimeout(total=30)
    # The session talks to the head-end only, so every request may carry the token.
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            async with session.post(f"{headend}/api/commands", json=body) as reply:
                if reply.status == 401:
                    raise CommandLineError("the head-end refused the token (revoked, or not "
                                           "an admin token of this head-end)")  # fmt: skip
                issued = await reply.json(content_type=None)
            if reply.status >= 400:
                print(json.dumps(issued))
                return 1
            print(json.dumps(issued))
            meters = issued["meters"]
            ids = [issued["id"]] if len(meters) == 1 else [f"{issued['id']}@{m}" for m in meters]
            if wait <= 0:
                return 0
            return await _await_answers(session, headend, ids, wait)
    except (aiohttp.ClientError, TimeoutError) as error:
        raise CommandLineError(f"cannot reach the head-end at {headend}: {error}") from error


async def _await_answers(
    session: aiohttp.ClientSession, headend: str, ids: list[str], wait: float
) -> int:
    deadline = time.monotonic() + wait
    pending = list(ids)
    failed = 0
    while pending and time.monotonic() < deadline:
        still: list[str] = []
        for command_id in pending:
            async with session.get(f"{headend}/api/commands/{command_id}") as reply:
                found = await reply.json(content_type=None)
            record = found.get("command") if isinstance(found, dict) else None
            status = record.get("status") if isinstance(record, dict) else None
            if status in (None, "pending", "sent"):
                still.append(command_id)
                continue
            print(json.dumps(record))
            failed += status != "answered"
        pending = still
        if pending:
            await asyncio.sleep(_POLL_S)  # polling an HTTP API for a human at a terminal
    for command_id in pending:
        print(json.dumps({"id": command_id, "status": "no answer", "waited_s": wait}))
    return 1 if failed or pending else 0
