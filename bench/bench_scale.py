"""How GridM2M's costs change with the amount of stored data.

Grows one container to 100,000 contentInstances and one CSE to 10,000 AEs, and at each size
measures contentInstance creation (requests/s, p50/p99 at concurrency 32) and retrieval of
`la` (p50/p99 at concurrency 8), against a real `gridm2m cse` process with its SQLite file.
A gateway that runs for months must not slow down as data piles up.

    python -m bench.bench_scale [--instances 100000] [--aes 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.limits import switch_limits_off
from bench.rawhttp import LoadResult, build_request, run_load

_LISTENING = re.compile(r"listening on https?://([\d.]+):(\d+)")
ORIGIN = "Cscale"
CONTENT = "x" * 100


def _headers(rqi: str, ty: int | None = None, origin: str = ORIGIN) -> dict[str, str]:
    headers = {"X-M2M-Origin": origin, "X-M2M-RI": rqi, "X-M2M-RVI": "3"}
    if ty is not None:
        headers["Content-Type"] = f"application/json;ty={ty}"
    return headers


def create_instance(path: str) -> callable:  # type: ignore[valid-type]
    body = json.dumps({"m2m:cin": {"cnf": "text/plain:0", "con": CONTENT}}).encode()

    def make(number: int) -> bytes:
        return build_request("POST", path, _headers(f"c{number}", 4), body)

    return make


def retrieve(path: str) -> callable:  # type: ignore[valid-type]
    def make(number: int) -> bytes:
        return build_request("GET", path, _headers(f"r{number}"))

    return make


class Server:
    def __init__(self, db: Path) -> None:
        self.process = subprocess.Popen(
            # Lab mode (claimed AE-IDs believed): this measures the store, not authentication.
            [
                sys.executable,
                "-m",
                "gridm2m",
                "cse",
                "--http-port",
                "0",
                "--db",
                str(db),
                "--trust",
                "claimed",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = _LISTENING.search(line)
        if not match:
            self.process.kill()
            raise RuntimeError(f"CSE did not start: {line!r}")
        self.host, self.port = match.group(1), int(match.group(2))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


async def _one(server: Server, request: bytes, expect: int) -> None:
    result = await run_load(
        server.host, server.port, lambda _n: request, total=1, concurrency=1, expect=expect
    )
    if result.failures:
        raise RuntimeError(f"set-up request failed: {request[:80]!r}")


async def _register(server: Server, first: int, last: int) -> None:
    """AEs C0000…, each with a container `reads`, created with concurrency 32."""

    def make_ae(number: int) -> bytes:
        index = first + number // 2
        if number % 2 == 0:
            body = json.dumps(
                {"m2m:ae": {"rn": f"m{index}", "api": "Nmeter", "rr": False, "srv": ["3"]}}
            ).encode()
            return build_request("POST", "/cse-in", _headers(f"a{number}", 2, f"Cm{index}"), body)
        body = json.dumps({"m2m:cnt": {"rn": "reads"}}).encode()
        return build_request(
            "POST", f"/cse-in/m{index}", _headers(f"b{number}", 3, f"Cm{index}"), body
        )

    # AE first, then its container: do them in two passes so the order holds.
    count = last - first
    ae_only = lambda n: make_ae(2 * n)  # noqa: E731
    cnt_only = lambda n: make_ae(2 * n + 1)  # noqa: E731
    for maker in (ae_only, cnt_only):
        result = await run_load(
            server.host, server.port, maker, total=count, concurrency=32, expect=201
        )
        if result.failures:
            raise RuntimeError(f"{result.failures} registrations failed")


def _row(label: str, create: LoadResult, latest: LoadResult) -> str:
    return (
        f"{label:>22} | {create.rate:9.0f} {create.p50_ms:7.2f} {create.p99_ms:7.2f} |"
        f" {latest.rate:9.0f} {latest.p50_ms:7.3f} {latest.p99_ms:7.3f}"
    )


async def _measure(server: Server, container: str, origin: str) -> tuple[LoadResult, LoadResult]:
    make = create_instance(container)
    if origin != ORIGIN:
        body = json.dumps({"m2m:cin": {"cnf": "text/plain:0", "con": CONTENT}}).encode()

        def make(number: int) -> bytes:
            return build_request("POST", container, _headers(f"c{number}", 4, origin), body)

    create = await run_load(server.host, server.port, make, total=3000, concurrency=32, expect=201)
    get_latest = lambda n: build_request("GET", container + "/la", _headers(f"r{n}", None, origin))  # noqa: E731
    latest = await run_load(
        server.host, server.port, get_latest, total=5000, concurrency=8, expect=200
    )
    for result in (create, latest):
        if result.failures:
            raise RuntimeError(f"{result.failures} requests failed during a measurement")
    return create, latest


async def main_async(instances: int, aes: int) -> None:
    header = (
        f"{'size':>22} | {'create/s':>9} {'p50 ms':>7} {'p99 ms':>7} |"
        f" {'la GET/s':>9} {'p50 ms':>7} {'p99 ms':>7}"
    )
    with tempfile.TemporaryDirectory(prefix="gridm2m-scale-") as workdir:
        server = Server(Path(workdir) / "cse.db")
        try:
            await _one(
                server,
                build_request(
                    "POST",
                    "/cse-in",
                    _headers("s1", 2),
                    json.dumps(
                        {"m2m:ae": {"rn": "scale", "api": "Nscale", "rr": False, "srv": ["3"]}}
                    ).encode(),
                ),
                201,
            )
            await _one(
                server,
                build_request(
                    "POST",
                    "/cse-in/scale",
                    _headers("s2", 3),
                    json.dumps({"m2m:cnt": {"rn": "big"}}).encode(),
                ),
                201,
            )
            container = "/cse-in/scale/big"
            print("One container growing (each measurement adds 3,000 instances):")
            print(header)
            stored = 0
            rows: list[tuple[int, LoadResult, LoadResult]] = []
            for target in sorted({1_000, 10_000, instances}):
                fill = target - stored
                if fill > 0:
                    await run_load(
                        server.host,
                        server.port,
                        create_instance(container),
                        total=fill,
                        concurrency=32,
                        expect=201,
                    )
                    stored += fill
                create, latest = await _measure(server, container, ORIGIN)
                stored += create.requests
                rows.append((target, create, latest))
                print(_row(f"{target:,} instances", create, latest), flush=True)
            _ratio(rows)

            print(f"\nA CSE growing to {aes:,} AEs (each with one container):")
            print(header)
            registered = 0
            rows = []
            for target in sorted({100, 1_000, aes}):
                await _register(server, registered, target)
                registered = target
                create, latest = await _measure(server, "/cse-in/m0/reads", "Cm0")
                rows.append((target, create, latest))
                print(_row(f"{target:,} AEs", create, latest), flush=True)
            _ratio(rows)
        finally:
            server.stop()


def _ratio(rows: list[tuple[int, LoadResult, LoadResult]]) -> None:
    (small, c0, l0), (large, c1, l1) = rows[0], rows[-1]
    print(
        f"{large:,} vs {small:,}: creation rate {c1.rate / c0.rate:.2f}x,"
        f" la p50 {l1.p50_ms / l0.p50_ms:.2f}x, la rate {l1.rate / l0.rate:.2f}x"
    )


def main() -> None:
    switch_limits_off()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--aes", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(main_async(args.instances, args.aes))


if __name__ == "__main__":
    main()
