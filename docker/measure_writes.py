"""How many bytes a CSE or the gateway writes to storage per contentInstance (SD card wear).

Starts `gridm2m cse` (or `gridm2m headend` and `gridm2m gateway` uplinked to it) on free
ports with fresh databases, registers one AE with one container, creates COUNT
contentInstances over HTTP (CONCURRENCY at a time) and reads `/proc/<pid>/io` of the CSE or
gateway process before and after. For the gateway, "after" is once its outbox has delivered
everything to the head-end, so the outbox's inserts and deletes count too. `write_bytes` is
what the process sent to the storage layer (pages dirtied: a page written twice before the
kernel writes it back counts once), `wchar` what it passed to write(). Linux only; from the
repository root with the project's virtualenv:

    .venv/bin/python docker/measure_writes.py --count 1000 --concurrency 1
    .venv/bin/python docker/measure_writes.py --target gateway --count 1000 --concurrency 1

The file system's own journal is not counted (the kernel does that work, not the process);
`/sys/block/<dev>/stat` on an otherwise idle machine shows the device's total.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ORIGINATOR = "Cwearmeter"
HEADERS = {"X-M2M-Origin": ORIGINATOR, "X-M2M-RVI": "3", "Accept": "application/json"}
# About the size of an interval reading from device_agents (a JSON object of ~80 bytes).
READING = {"flow": "interval", "ts": 1767225600, "kWh": 123456, "kvarh": 2345, "seq": 0}


@dataclass(frozen=True)
class IoCounters:
    write_bytes: int
    wchar: int

    @classmethod
    def of(cls, pid: int) -> IoCounters:
        lines = Path(f"/proc/{pid}/io").read_text().splitlines()
        fields = dict(line.split(": ") for line in lines)
        return cls(int(fields["write_bytes"]), int(fields["wchar"]))


@dataclass(frozen=True)
class Running:
    pid: int
    urls: list[str]  # every http:// URL of the line it printed once listening


@contextlib.asynccontextmanager
async def running(*args: str, environ: dict[str, str]) -> AsyncIterator[Running]:
    """`python -m gridm2m ARGS` until the end of the block, then SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridm2m", *args, stdout=asyncio.subprocess.PIPE, env=environ
    )
    try:
        assert process.stdout is not None
        # Each part prints one line saying where it listens once it accepts requests.
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        urls = [url.rstrip("/;") for url in re.findall(r"http://[^\s;]+", line)]
        if not urls:
            raise RuntimeError(f"gridm2m {args[0]} did not start: {line!r}")
        yield Running(process.pid, urls)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await process.wait()


async def create(
    session: aiohttp.ClientSession, url: str, ty: int, body: object, request_id: str
) -> None:
    headers = dict(HEADERS, **{"X-M2M-RI": request_id, "Content-Type": f"application/json;ty={ty}"})
    async with session.post(url, data=json.dumps(body), headers=headers) as response:
        if response.headers.get("X-M2M-RSC") != "2001":
            text = await response.text()
            raise RuntimeError(f"POST {url}: {response.status} {text[:200]}")


async def wait_for_health(session: aiohttp.ClientSession, url: str, ready: str) -> None:
    """Poll the gateway's /health until `ready` says so (registered; outbox drained)."""
    deadline = time.monotonic() + 120
    while True:
        async with session.get(url) as response:
            status = await response.json()
        if ready == "registered" and status["registered"]:
            return
        if ready == "drained" and not any(status["outbox"].values()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway is not {ready}: {status}")
        await asyncio.sleep(0.2)  # a poll interval of a tool, not a synchronisation


async def create_instances(
    session: aiohttp.ClientSession, container: str, count: int, concurrency: int
) -> None:
    numbers = iter(range(count))

    async def worker() -> None:
        for number in numbers:
            content = json.dumps(dict(READING, seq=number))
            cin = {"m2m:cin": {"cnf": "application/json:0", "con": content}}
            await create(session, container, 4, cin, f"r{number}")

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())


async def measure(args: argparse.Namespace, directory: Path) -> str:
    environ = dict(os.environ, GRIDM2M_DATA_DIR=str(directory))
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        if args.target == "cse":
            environ["GRIDM2M_CSE__SYNCHRONOUS"] = args.synchronous
            cse = await stack.enter_async_context(
                running("cse", "--http-port", "0", environ=environ)
            )
            measured, base, health = cse, f"{cse.urls[0]}/cse-in", None
        else:
            environ["GRIDM2M_GATEWAY__CSE__SYNCHRONOUS"] = args.synchronous
            headend = await stack.enter_async_context(
                running("headend", "--http-port", "0", "--dashboard-port", "0", environ=environ)
            )
            gateway = await stack.enter_async_context(
                running(
                    *("gateway", "--upstream-url", headend.urls[0], "--http-port", "0"),
                    *("--coap-port", "0", "--ops-port", "0"),
                    environ=environ,
                )
            )
            measured, base, health = gateway, f"{gateway.urls[0]}/dap1", f"{gateway.urls[-1]}"
            await wait_for_health(session, f"{health}/health", "registered")
        ae = {"m2m:ae": {"rn": "wearmeter", "api": "Nwear", "rr": False, "srv": ["3"]}}
        await create(session, base, 2, ae, "ae")
        cnt = {"m2m:cnt": {"rn": "reading", "mni": args.count + 1}}
        await create(session, f"{base}/wearmeter", 3, cnt, "cnt")
        if health is not None:  # the registration's own writes are not the readings'
            await wait_for_health(session, f"{health}/health", "drained")
        before = IoCounters.of(measured.pid)
        await create_instances(session, f"{base}/wearmeter/reading", args.count, args.concurrency)
        if health is not None:
            await wait_for_health(session, f"{health}/health", "drained")
        after = IoCounters.of(measured.pid)
    written, passed = after.write_bytes - before.write_bytes, after.wchar - before.wchar
    each = args.count
    return (
        f"{args.target}: {args.count} contentInstances, {args.concurrency} at a time, "
        f"synchronous={args.synchronous}: write_bytes {written:,} ({written / each:,.0f} B each), "
        f"wchar {passed:,} ({passed / each:,.0f} B each)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="Bytes written per contentInstance.")
    parser.add_argument("--target", choices=["cse", "gateway"], default="cse")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument("--dir", help="where the databases go (default: a temp dir)")
    args = parser.parse_args()
    if args.count < 1 or args.concurrency < 1:
        parser.error("--count and --concurrency must be at least 1")
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        print(asyncio.run(measure(args, Path(directory))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
