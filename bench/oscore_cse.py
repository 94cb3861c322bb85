"""A CSE whose CoAP server takes plain and OSCORE-protected requests, for bench_security.

    python -m bench.oscore_cse --db DIR/cse.db --meters 32 --seed S

`gridm2m cse` has no keyring of its own yet (the gateway's credential store will give it one),
so this runs the same parts in one process: SQLite storage, the core, a CoapServer with
`trust=Trust.INSECURE` and a MemoryKeyring holding `--meters` bench meters whose keys derive from
`--seed` (`bench_keys`, which the load generator uses too). It prints
"listening on coap://127.0.0.1:<port>" and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
from pathlib import Path
from typing import Any

from bench.limits import LIMITS_OFF
from cse.bindings.coap import CoapServer
from cse.bindings.coap.oscore import MemoryKeyring, OscoreKeys
from cse.core.config import CSELimits, CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.identity import Principal, Role, Trust
from cse.storage.sqlite import SQLiteStorage


def meter_name(index: int) -> str:
    return f"sec{index}"


def bench_keys(seed: str, index: int) -> OscoreKeys:
    """Meter `index`'s keys: derived from the seed, so both bench processes know them."""
    material = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    name = meter_name(index)
    principal = Principal(Role.DEVICE, name, "C" + name, "oscore")
    return OscoreKeys((index + 1).to_bytes(2, "big"), material[:16], material[16:24], principal)


async def serve(db: Path, meters: int, seed: str) -> None:
    keyring = MemoryKeyring(*(bench_keys(seed, index) for index in range(meters)))
    # As in every bench (bench/limits.py): no per-client limits, which exist to stop one
    # client speaking for many, as this load does.
    unlimited = CSELimits(**{name.lower(): None for name in LIMITS_OFF})
    cse = CommonServicesEntity(SQLiteStorage(db), CSESettings(limits=unlimited))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with cse, CoapServer(cse, "127.0.0.1", 0, oscore=keyring, trust=Trust.INSECURE) as server:
        print(f"listening on {server.url}", flush=True)
        await stop.wait()


def event_loop_runner() -> Any:
    """uvloop's run where installed (what `gridm2m` runs on), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--meters", type=int, default=32)
    parser.add_argument("--seed", default="bench")
    args = parser.parse_args()
    event_loop_runner()(serve(args.db, args.meters, args.seed))


if __name__ == "__main__":
    main()
