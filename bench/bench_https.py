"""What proving the caller costs: contentInstance CREATEs over HTTP and HTTPS, side by side.

    python -m bench.bench_https                     # 3 rounds of 3 x 5 s, 8 connections
    python -m bench.bench_https --duration 10 --connections 32 --rounds 5

Each variant starts its own `gridm2m cse` (SQLite file in a temporary folder) with a credential
listener, as a deployment runs it, and a lab PKI made with `gridm2m.pki`:

  http+token    plain HTTP, `Authorization: Bearer` of a device credential (`Cbench`)
  https+token   HTTPS (server certificate checked), the same token
  https+mtls    HTTPS with a client certificate pinned to the credential (mutual TLS)

The client is aiohttp on this machine's other core: N connections kept alive for the whole
run, each sending its next CREATE as soon as the last one is answered, for `--duration`
seconds (after one warm-up second). TLS handshakes happen once per connection, so the figure
is the steady cost of encryption and of looking the credential up per request. The variants
take turns, `--rounds` times, each with a fresh CSE, and the table gives each one's median
round: on a shared machine one round says little. Only loopback is used.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

if __package__ in (None, ""):  # run as ``python bench/bench_https.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.limits import switch_limits_off
from cse.security.credentials import CredentialStore
from cse.security.pki import LabCA, client_context
from gridm2m.processes import toml_text

_LISTENING = re.compile(r"listening on (https?://\S+)")
BODY = b'{"m2m:cin":{"cnf":"text/plain:0","con":"' + b"x" * 100 + b'"}}'


@dataclass
class Result:
    variant: str
    creates: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rate(self) -> float:
        return self.creates / self.seconds


class Variant:
    """One CSE process and the client settings that go with it."""

    def __init__(self, name: str, folder: Path, *, tls: bool, certificate: bool) -> None:
        self.name, self.folder, self.tls, self.certificate = name, folder, tls, certificate
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""

    def configure(self, ca: LabCA) -> tuple[Path, ssl.SSLContext | None, str | None]:
        """Config file, client TLS context and token for this variant."""
        self.folder.mkdir(parents=True)
        http: dict[str, object] = {"port": 0}
        context = None
        token = None
        with CredentialStore(self.folder / "credentials.db") as store:
            store.add_device("bench", mqtt=False, oscore=False)
            if self.tls:
                server = ca.issue_server(self.folder, "server", ["127.0.0.1"])
                http["tls"] = {
                    "cert": str(server.cert),
                    "key": str(server.key),
                    "client_ca": str(ca.cert_path),
                }
            if self.certificate:
                client = ca.issue_client(self.folder / "client", "bench")
                store.pin_certificate("bench", client.der())
                context = client_context(ca.cert_path, client.cert, client.key)
            else:
                token = store.new_token("bench")
                context = client_context(ca.cert_path) if self.tls else None
        config = {
            "db": str(self.folder / "cse.db"),
            "credentials": str(self.folder / "credentials.db"),
            "http": http,
        }
        path = self.folder / "cse.toml"
        path.write_text(toml_text("cse", config))
        return path, context, token

    async def start(self, config: Path) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridm2m", "cse", "--config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert self.process.stdout is not None
        async with asyncio.timeout(30):
            while not self.url:
                line = (await self.process.stdout.readline()).decode()
                if not line:
                    raise RuntimeError(f"{self.name}: the CSE did not start")
                if match := _LISTENING.search(line):
                    self.url = match.group(1)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


_request_ids = iter(range(1, 1 << 62))


async def _request(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], ty: int, body: bytes
) -> int:
    sent = {
        **headers,
        "Content-Type": f"application/json;ty={ty}",
        "X-M2M-RI": f"b{next(_request_ids)}",
    }
    async with session.post(url, data=body, headers=sent) as reply:
        await reply.read()
        return int(reply.headers.get("X-M2M-RSC", "0"))


async def measure(variant: Variant, ca: LabCA, duration: float, connections: int) -> Result:
    config, context, token = variant.configure(ca)
    await variant.start(config)
    headers = {"X-M2M-Origin": "Cbench", "X-M2M-RVI": "3", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connector = aiohttp.TCPConnector(limit=connections, ssl=context if context else False)
    latencies: list[float] = []
    errors = 0
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            base = f"{variant.url}/cse-in"
            ae = b'{"m2m:ae":{"rn":"bench","api":"Nbench","rr":false,"srv":["3"]}}'
            assert await _request(session, base, headers, 2, ae) == 2001
            cnt = b'{"m2m:cnt":{"rn":"cnt","mni":100000000,"mbs":10000000000}}'
            assert await _request(session, f"{base}/bench", headers, 3, cnt) == 2001
            target = f"{base}/bench/cnt"
            warm_until = time.monotonic() + 1.0
            end = warm_until + duration

            async def worker() -> None:
                nonlocal errors
                while (now := time.monotonic()) < end:
                    started = now
                    rsc = await _request(session, target, headers, 4, BODY)
                    if started >= warm_until:
                        if rsc == 2001:
                            latencies.append(time.monotonic() - started)
                        else:
                            errors += 1

            await asyncio.gather(*(worker() for _ in range(connections)))
    finally:
        await variant.stop()
    latencies.sort()
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return Result(
        variant.name, len(latencies), duration, quantiles[49] * 1000, quantiles[98] * 1000, errors
    )


async def run(duration: float, connections: int, rounds: int) -> list[Result]:
    """Each variant's median round (by rate)."""
    names = [("http+token", False, False), ("https+token", True, False), ("https+mtls", True, True)]
    measured: dict[str, list[Result]] = {name: [] for name, _, _ in names}
    with tempfile.TemporaryDirectory(prefix="gridm2m-https-") as work:
        folder = Path(work)
        ca = LabCA.create(folder / "ca")
        for round_number in range(rounds):
            for name, tls, certificate in names:
                variant = Variant(name, folder / f"{name}-{round_number}", tls=tls,
                                  certificate=certificate)  # fmt: skip
                measured[name].append(await measure(variant, ca, duration, connections))
    return [
        sorted(results, key=lambda r: r.rate)[len(results) // 2] for results in measured.values()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per variant")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections")
    parser.add_argument("--rounds", type=int, default=3, help="turns of the three variants")
    args = parser.parse_args(argv)
    switch_limits_off()
    results = asyncio.run(run(args.duration, args.connections, args.rounds))
    base = results[0].rate
    print(f"contentInstance CREATE (100 B), {args.connections} keep-alive connections, "
          f"{args.duration:g} s each, median of {args.rounds} rounds")  # fmt: skip
    print(f"{'variant':<13} {'creates/s':>10} {'vs http':>8} {'p50 ms':>8} {'p99 ms':>8} errors")
    for result in results:
        print(
            f"{result.variant:<13} {result.rate:>10.0f} {result.rate / base:>8.2f} "
            f"{result.p50_ms:>8.2f} {result.p99_ms:>8.2f} {result.errors:>6}"
        )
    return 0 if all(result.errors == 0 for result in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
