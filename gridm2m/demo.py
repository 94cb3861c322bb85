"""`gridm2m demo`: the whole system on one machine, on embedded defaults.

It starts, as separate processes so each has a core to itself where there are several:
an MQTT broker (Mosquitto if installed, secured as a DAP's: TLS, a password per meter and the
ACL, all from the gateway's credential store; without it every meter speaks CoAP), the head-end
(`gridm2m headend`), a gateway (`gridm2m gateway`) registered with it, and a fleet of meters
(`gridm2m fleet`) on an accelerated clock, half over CoAP (OSCORE, each meter with its own
keys from the gateway's credential store) and half over MQTT. It prints a
progress line every few seconds and the dashboard URL (a wanted port that is busy is said
so, with the one taken). Ctrl-C (or `--duration`) stops the fleet, lets the gateway deliver
what it still holds, then prints a summary (`Outcome`): meters registered and heard from,
messages the gateway acknowledged per flow family, what reached the MDMS, what is still
queued, what was shed, and what was lost — and exits 1 if anything acknowledged was lost.
Databases, keys and logs go to a temporary folder, removed at the end unless `--keep` is
given or the run failed (its logs are then there to read), or to `--data-dir`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gridm2m.broker import mosquitto_binary
from gridm2m.processes import Child, Stack, get_json, toml_text
from gridm2m.processes import stop as stop_child

PROGRESS_EVERY_S = 3.0
DRAIN_TIMEOUT_S = 60.0


@dataclass
class DemoOptions:
    meters: int = 100
    duration: float | None = None  # None: until Ctrl-C
    clock_speed: float = 1440.0  # a day a minute
    rate_scale: float = 60.0
    dashboard_port: int = 8090
    data_dir: Path | None = None
    broker: str = "auto"  # auto (Mosquitto if installed), mosquitto, or none (CoAP only)
    keep: bool = False  # keep the temporary folder (databases, keys, logs) at the end


@dataclass
class Outcome:
    """The summary's counts, taken once the gateway's queue is empty.

    Every message a meter sent is, at the end, in one place: at the MDMS, still queued at
    the gateway, shed by it (disk budget), or lost. So `acknowledged + unconfirmed ==
    delivered + queued + shed + lost`, where `unconfirmed` are messages the gateway took but
    whose answer their meter had not yet had when the fleet stopped (the meter counts only
    what it heard acknowledged).
    """

    registered: int = 0  # meters registered at the gateway (the fleet's count)
    heard: int = 0  # meters the MDMS has a message from
    acknowledged: dict[str, int] = field(default_factory=dict)  # per family, as meters counted
    delivered: dict[str, int] = field(default_factory=dict)  # per family, at the MDMS
    queued: int = 0
    shed: int = 0

    @property
    def lost(self) -> int:
        """Acknowledged messages found nowhere: what the families lack at the MDMS, less what
        is queued or was shed. One family's surplus never makes up another's shortfall."""
        short = sum(max(0, n - self.delivered.get(f, 0)) for f, n in self.acknowledged.items())
        return max(0, short - self.queued - self.shed)

    @property
    def unconfirmed(self) -> int:
        """Messages the gateway holds or passed on beyond those the meters counted as
        acknowledged: what balances the two sides."""
        held = sum(self.delivered.values()) + self.queued + self.shed + self.lost
        return held - sum(self.acknowledged.values())


@dataclass
class RunFolder:
    """Where a run keeps its databases, keys and logs: `--data-dir` (always kept), or a new
    temporary folder, removed at the end unless kept (`--keep`, or a failed run)."""

    path: Path
    temporary: bool
    keep: bool

    @classmethod
    def make(cls, data_dir: Path | None, keep: bool, parent: Path | None = None) -> RunFolder:
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            print(f"gridm2m demo: data and logs in {data_dir}", flush=True)
            return cls(data_dir, temporary=False, keep=True)
        path = Path(tempfile.mkdtemp(prefix="gridm2m-demo-", dir=parent))
        then = "kept (--keep)" if keep else "removed at the end; --keep keeps them"
        print(f"gridm2m demo: data and logs in {path} ({then})", flush=True)
        return cls(path, temporary=True, keep=keep)

    def close(self, failed: bool) -> None:
        if not self.temporary:
            return
        if self.keep or failed:
            why = "--keep" if self.keep else "the run failed: its logs are there"
            print(f"gridm2m demo: {self.path} kept ({why})", flush=True)
            return
        shutil.rmtree(self.path, ignore_errors=True)


async def run_demo(options: DemoOptions) -> int:
    folder = RunFolder.make(options.data_dir, options.keep)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    code = 1
    try:
        code = await _run_parts(options, folder.path, stop)
        return code
    finally:
        folder.close(failed=code != 0)


def _use_mqtt(choice: str) -> bool:
    """MQTT meters need a broker that logs each one in: Mosquitto (TLS, a password per meter,
    the ACL). Without one every meter speaks CoAP."""
    if choice == "none":
        return False
    if mosquitto_binary() is None:
        if choice == "mosquitto":
            raise RuntimeError("--broker mosquitto: no mosquitto program is installed")
        print(
            "  (Mosquitto is not installed: every meter speaks CoAP; "
            "apt install mosquitto for the MQTT half)",
            flush=True,
        )
        return False
    return True


async def _run_parts(options: DemoOptions, directory: Path, stop: asyncio.Event) -> int:
    try:
        mqtt = _use_mqtt(options.broker)
    except RuntimeError as error:
        print(f"gridm2m demo: {error}", file=sys.stderr)
        return 2
    meters = [f"mtr-{number:06d}" for number in range(1, options.meters + 1)]
    stack = Stack(directory, secure_broker=mqtt, dashboard_port=options.dashboard_port)
    say_moved_ports(stack)
    # Each gets its OSCORE keys and MQTT password in the gateway's store, the only place the
    # fleet (`credentials`) and the gateway and broker take them from.
    stack.meters = meters
    dap: dict[str, Any] = {"coap_port": stack.coap_port}
    if mqtt:
        dap.update(mqtt_port=stack.broker_port, mqtt_ca=str(stack.ca_file))
    fleet_toml = directory / "fleet.toml"
    fleet_toml.write_text(
        toml_text(
            "fleet",
            {
                "meters": options.meters,
                "duration": options.duration or 10 * 365 * 86400.0,
                "clock_speed": options.clock_speed,
                "rate_scale": options.rate_scale,
                "ramp": max(2.0, options.meters / 100),
                "cse_id": "/id-dap1",
                "cse_name": "dap1",
                "credentials": stack.gateway_store,
                "transports": {"coap": 0.5, "mqtt": 0.5} if mqtt else {"coap": 1.0},
                "dap": dap,
            },
        )
    )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            wanted = stack.dashboard_port
            await stack.start(session)
            if stack.dashboard_port != wanted:  # taken meanwhile: the stack chose again
                say_moved_ports(stack)
            _print_listeners(stack)
            api = stack.api_headers
            summary_file = directory / "fleet-summary.json"
            fleet = await stack.spawn(
                "fleet", ["fleet", "--config", str(fleet_toml), "--json", str(summary_file)]
            )
            started = time.monotonic()
            await _show_progress(
                session, (stack.dashboard, api), stack.health_url, fleet, stop, started, meters
            )
            await stop_child(fleet)
            outcome = await _settle(session, (stack.dashboard, api), stack.health_url, summary_file)
    except RuntimeError as error:
        print(f"gridm2m demo: {error}", file=sys.stderr)
        return 1
    finally:
        await stack.stop()
    _print_summary(outcome, time.monotonic() - started)
    return 1 if outcome.lost else 0


def say_moved_ports(stack: Stack) -> None:
    """A port asked for (--dashboard-port) that was busy: say so, and which one was taken."""
    if stack.dashboard_note:
        print(f"gridm2m demo: {stack.dashboard_note}", flush=True)


def _print_listeners(stack: Stack) -> None:
    """Where each part listens and what it takes from whom (docs/security.md)."""
    lines = [
        f"  head-end  {stack.headend.banner}",
        "            (mutual TLS: the gateway's certificate, pinned in the head-end's store)",
        f"  gateway   {stack.gateway.banner}",
        "            HTTPS: the head-end's certificate only; " + _coap_takes(stack),
        f"  ops       {stack.health_url} and /metrics (loopback, no credentials: read-only)",
    ]
    if stack.broker is not None:
        lines.append(
            f"  broker    mqtts://127.0.0.1:{stack.broker_port} (TLS, a password per meter, "
            "each held to its own topics)"
        )
    lines += [
        f"  CA        {stack.ca_file} (the lab's; every certificate above is from it)",
        f"  stores    {stack.gateway_store} (meters), {stack.headend_store} (head-end)",
        "",
        f"  dashboard: {stack.dashboard}/  (user admin, password {stack.operator_password})",
        f"  commands:  GRIDM2M_HEADEND_TOKEN={stack.admin_token} gridm2m command "
        f"--headend {stack.dashboard} mtr-000001 read",
        "",
    ]
    print("\n".join(lines), flush=True)


def _coap_takes(stack: Stack) -> str:
    if stack.coap_trust == "credential":
        return "CoAP: OSCORE only, each meter with its own keys"
    return "CoAP: plain, meters taken at their word (a lab)"


# The head-end's web API: its URL and the headers that prove an admin (a bearer token).
WebApi = tuple[str, dict[str, str]]


async def _meters_heard(session: aiohttp.ClientSession, dashboard: WebApi) -> int:
    url, headers = dashboard
    overview = await get_json(session, f"{url}/api/overview", headers)
    meters = overview.get("meters") if isinstance(overview, dict) else None
    return int((meters or {}).get("total", 0))


async def _counts(session: aiohttp.ClientSession, dashboard: WebApi) -> dict[str, int]:
    url, headers = dashboard
    counts = await get_json(session, f"{url}/api/counts", headers)
    by_family = counts.get("by_family") if isinstance(counts, dict) else None
    return {str(k): int(v) for k, v in (by_family or {}).items()}


async def _show_progress(
    session: aiohttp.ClientSession,
    dashboard: WebApi,
    health_url: str,
    fleet: Child,
    stop: asyncio.Event,
    started: float,
    meters: list[str],
) -> None:
    waiter = asyncio.ensure_future(fleet.process.wait())
    stopper = asyncio.ensure_future(stop.wait())
    ticks = 0
    try:
        while not waiter.done() and not stop.is_set():
            await asyncio.wait({waiter, stopper}, timeout=PROGRESS_EVERY_S)
            ticks += 1
            await _play_head_end(session, dashboard, meters, ticks)
            health = await get_json(session, health_url) or {}
            delivered = sum((await _counts(session, dashboard)).values())
            queued = sum((health.get("outbox") or {}).values())
            print(
                f"  {time.monotonic() - started:6.0f} s  registered {health.get('meters', 0):>5}"
                f"  online {health.get('online', 0):>5}  at MDMS {delivered:>7}"
                f"  queued at gateway {queued:>5}",
                flush=True,
            )
    finally:
        stopper.cancel()
        if not waiter.done():
            waiter.cancel()


# What the head-end's applications do during the demo, one step per progress tick, so the
# dashboard shows commands and their answers next to the meters' own flows.
_PLAYBOOK: list[tuple[str, dict[str, Any], int]] = [
    ("commands", {"cmd": "read"}, 1),
    ("apps/dr", {"ev": 0, "dur": 60, "shed": 30}, 10),
    ("commands", {"cmd": "switch", "op": "status"}, 1),
    ("apps/price", {"price": 125000, "tier": 2}, 5),
    ("commands", {"cmd": "read", "n": 8}, 1),
    ("commands", {"cmd": "han-join", "dev": "00124b0001020304"}, 1),
    ("apps/firmware", {"target": "nic", "ver": "3.2.1"}, 3),
]


async def _play_head_end(
    session: aiohttp.ClientSession, dashboard: WebApi, meters: list[str], tick: int
) -> None:
    path, body, count = _PLAYBOOK[tick % len(_PLAYBOOK)]
    chosen = random.sample(meters, min(count, len(meters)))
    request = dict(body)
    if path == "apps/dr":
        request["ev"] = tick
    if path == "commands":
        request["meter"] = chosen[0]
    else:
        request["meters"] = chosen
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        url, headers = dashboard
        async with session.post(f"{url}/api/{path}", json=request, headers=headers) as reply:
            await reply.read()


async def _settle(
    session: aiohttp.ClientSession, dashboard: WebApi, health_url: str, summary_file: Path
) -> Outcome:
    """After the fleet stopped: let the gateway deliver what it holds, then count."""
    outcome = Outcome()
    if summary_file.exists():
        summary = json.loads(summary_file.read_text())
        outcome.registered = int(summary.get("registered", 0))
        outcome.acknowledged = {k: int(v) for k, v in summary.get("sent_by_family", {}).items()}
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = await get_json(session, health_url) or {}
        outcome.delivered = await _counts(session, dashboard)
        outcome.queued = sum((health.get("outbox") or {}).values())
        outcome.shed = sum((health.get("shed") or {}).values())
        if not outcome.queued and not outcome.lost:
            break
        await asyncio.sleep(0.5)  # waiting for the gateway's outbox to drain
    outcome.heard = await _meters_heard(session, dashboard)
    return outcome


def _print_summary(outcome: Outcome, seconds: float) -> None:
    families = sorted(set(outcome.acknowledged) | set(outcome.delivered))
    print(
        f"\nsummary after {seconds:.0f} s: {outcome.registered} meters registered at the "
        f"gateway, {outcome.heard} heard from at the MDMS (a meter is heard from once its "
        "first message arrived)"
    )
    print(f"  {'family':<10} {'acknowledged':>13} {'at MDMS':>9}")
    for family in families:
        print(
            f"  {family:<10} {outcome.acknowledged.get(family, 0):>13}"
            f" {outcome.delivered.get(family, 0):>9}"
        )
    print(
        f"  {'total':<10} {sum(outcome.acknowledged.values()):>13}"
        f" {sum(outcome.delivered.values()):>9}"
    )
    print(f"  still queued at the gateway: {outcome.queued}")
    print(f"  shed by the gateway (disk budget): {outcome.shed}")
    print(f"  lost: {outcome.lost}")
    if outcome.unconfirmed:
        print(
            f"  taken by the gateway, but the fleet stopped before their meter had the "
            f"answer: {outcome.unconfirmed}"
        )
    print(
        f"  acknowledged {sum(outcome.acknowledged.values())} + unconfirmed "
        f"{outcome.unconfirmed} = at MDMS {sum(outcome.delivered.values())} + queued "
        f"{outcome.queued} + shed {outcome.shed} + lost {outcome.lost}"
    )
    print(
        "  (each count is read in turn while messages move: for an instant one may show in "
        "two places or none; these were read once the gateway's queue was empty)"
    )


def main(options: DemoOptions) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return asyncio.run(run_demo(options))
