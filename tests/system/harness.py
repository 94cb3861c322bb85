"""Real `gridm2m headend` and `gridm2m gateway` processes on loopback, and meters beside them.

    async with System(tmp_path, broker) as system:      # head-end + gateway, registered
        meter = await system.meter("mtr-1", "coap")      # the agent code, on this loop
        await system.wait_for_messages(lambda m: ...)     # polls the head-end's API
        issued = await system.command("mtr-1", {"cmd": "read"})

Processes are started with their own config files in the test's directory and report where
they listen on the line they print. The gateway and the head-end talk HTTPS with mutual TLS
(a lab PKI in the test's directory, each side pinned in the other's credential store), and
the head-end's API is called with an admin token, as in a deployment. Waiting on another
process's state polls its HTTP API with a short backoff and always ends in a timeout with
what was seen, never a bare sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from cse.config_files import merge_tables
from device_agents.agent.agent import Agent
from gridm2m.broker import Broker, free_port, free_udp_port
from gridm2m.processes import (
    Child,
    pinned_client,
    provision_lab,
    spawn,
    tls_tables,
    toml_text,
    upstream_tls,
)
from gridm2m.processes import stop as stop_child

TIMEOUT = 60.0
T0 = 1767225600  # meter clocks start at 2026-01-01 00:00 UTC


async def until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll another process's state with a short backoff until `condition` holds; fail with
    `what` on timeout."""
    delay = 0.02
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(delay)  # a poll interval, bounded by the timeout
                delay = min(delay * 2, 0.5)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


class Part:
    """One `python -m gridm2m <part> --config FILE` process, started and stopped the way
    gridm2m/processes.py runs every part; it can be started again after a stop or a kill."""

    def __init__(self, name: str, config: Path, log: Path, *options: str) -> None:
        self.name = name
        self.config = config
        self.log = log
        self.options = options  # more command-line options, e.g. --worker
        self.log_level = "INFO"
        self.child: Child | None = None

    async def start(self) -> str:
        args = [self.name, "--config", str(self.config), "--log-level", self.log_level]
        args += self.options
        try:
            self.child = await spawn(self.log.stem, args, self.log.parent, "listening on")
        except RuntimeError as error:
            raise RuntimeError(f"{error}: {self.log.read_text()[-3000:]}") from None
        return self.child.banner

    async def stop(self, how: signal.Signals = signal.SIGTERM) -> None:
        if self.child is not None:
            await stop_child(self.child, how)

    async def kill(self) -> None:
        await self.stop(signal.SIGKILL)

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.process.pid


class System:
    def __init__(
        self,
        directory: Path,
        broker: Broker | None = None,
        *,
        upstream_mqtt: bool = False,
        headend_extra: dict[str, Any] | None = None,
        gateway_extra: dict[str, Any] | None = None,
    ) -> None:
        self.directory = directory
        self.broker = broker
        self.upstream_mqtt = upstream_mqtt
        self.headend_extra = headend_extra or {}  # merged into the [headend] section
        self.gateway_extra = gateway_extra or {}  # merged into the [gateway] section
        directory.mkdir(parents=True, exist_ok=True)
        self._configure()
        self.headend = Part("headend", directory / "headend.toml", directory / "headend.log")
        self.gateway = Part("gateway", directory / "gateway.toml", directory / "gateway.log")
        self.meters: list[Agent] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def _configure(self) -> None:
        """Pick free ports and write both parts' configs."""
        directory, broker, upstream_mqtt = self.directory, self.broker, self.upstream_mqtt
        self.headend_port = free_port()
        self.dashboard_port = free_port()
        self.gateway_port = free_port()
        self.ops_port = free_port()
        self.coap_port = free_udp_port()
        pki = directory / "pki"
        headend_tls, headend_client = tls_tables(pki, "headend", "id-in")
        gateway_tls, gateway_client = tls_tables(pki, "gateway", "id-dap1")
        # Every part on loopback: each CSE reaches the others' points of access there.
        headend_cse: dict[str, Any] = {
            "db": str(directory / "in.db"),
            "http": {"port": self.headend_port, "tls": headend_tls, "client": headend_client},
            "remote_cses": ["/id-dap1"],
            "egress": {"loopback_peers": True},
        }
        gateway_cse: dict[str, Any] = {
            "db": str(directory / "dap.db"),
            "http": {"port": self.gateway_port, "tls": gateway_tls, "client": gateway_client},
            "coap": {"port": self.coap_port, "trust": "claimed"},
            "egress": {"loopback_peers": True},
        }
        upstream = f"https://127.0.0.1:{self.headend_port}"
        link: dict[str, Any] = upstream_tls(gateway_client)
        if broker is not None:
            # The test broker holds nobody to their topics, and the CSEs talk through it as
            # CSE-IDs: an insecure lab listener (tests/deploy has the secured broker).
            lab = {"url": broker.url, "trust": "insecure"}
            gateway_cse["mqtt"] = {**lab, "username": "gateway"}
            headend_cse["mqtt"] = {**lab, "username": "headend"}
            if upstream_mqtt:
                upstream, link = broker.url, {}
        headend = {
            "cse": headend_cse,
            "mdms": {"db": str(directory / "mdms.db")},
            "dashboard": {"port": self.dashboard_port},
        }
        (directory / "headend.toml").write_text(
            toml_text("headend", merge_tables(headend, self.headend_extra))
        )
        (directory / "gateway.toml").write_text(
            toml_text(
                "gateway",
                merge_tables(
                    {
                        "cse": gateway_cse,
                        "upstream": {
                            "url": upstream,
                            "username": "gateway",
                            "check_interval": 2.0,
                            **link,
                        },
                        "outbox": {"retry_min": 0.1, "retry_max": 1.0},
                        "mirror": {"status_interval": 1.0},
                        "ops": {"port": self.ops_port},
                    },
                    self.gateway_extra,
                ),
            )
        )
        self.api = f"http://127.0.0.1:{self.dashboard_port}"
        self.ops = f"http://127.0.0.1:{self.ops_port}"
        token, _ = provision_lab(pki, directory / "headend.toml", directory / "gateway.toml")
        self.api_headers = {"Authorization": f"Bearer {token}"}
        self.gateway_url = f"https://127.0.0.1:{self.gateway_port}"

    def meter_tls(self, name: str) -> ssl.SSLContext:
        """A client certificate for meter `name`, pinned in the gateway's credential store:
        what a meter talking HTTPS to the gateway proves itself with."""
        store = self.directory / "id-dap1-credentials.db"
        return pinned_client(self.directory / "pki", str(store), name)

    async def __aenter__(self) -> System:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            await self._start()
        except BaseException:
            # Nothing may outlive a test that could not start its system.
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        for attempt in range(3):
            try:
                await self.headend.start()
                await self.gateway.start()
                break
            except RuntimeError as error:
                # A port picked as free was taken before the part bound it: pick again.
                if "Address already in use" not in str(error) or attempt == 2:
                    raise
                await self.gateway.stop()
                await self.headend.stop()
                for part in (self.headend, self.gateway):
                    part.log.unlink(missing_ok=True)
                self._configure()
        await self.wait_registered()

    async def __aexit__(self, *exc_info: object) -> None:
        for meter in self.meters:
            meter.stop()
        for task in self._tasks:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await task
        await self.gateway.stop()
        await self.headend.stop()
        if self._session is not None:
            await self._session.close()

    # ---- HTTP helpers --------------------------------------------------------------------

    async def get(self, url: str) -> Any:
        assert self._session is not None
        headers = self.api_headers if url.startswith(self.api) else None
        try:
            async with self._session.get(url, headers=headers) as reply:
                return await reply.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def poll(self, what: str, read: Callable[[], Any], check: Callable[[Any], bool]) -> Any:
        """Read another process's state until `check` holds; fail with the last reading."""
        deadline = time.monotonic() + TIMEOUT
        delay = 0.02
        seen: Any = None
        while time.monotonic() < deadline:
            seen = await read()
            if seen is not None and check(seen):
                return seen
            await asyncio.sleep(delay)  # a poll interval with backoff, bounded by TIMEOUT
            delay = min(delay * 1.5, 0.5)
        raise AssertionError(f"timed out waiting for {what}; last seen: {str(seen)[:2000]}")

    async def health(self) -> Any:
        return await self.get(f"{self.ops}/health")

    async def wait_registered(self) -> None:
        await self.poll("registration", self.health, lambda h: bool(h.get("registered")))

    async def messages(self, limit: int = 1000) -> list[dict[str, Any]]:
        found = await self.get(f"{self.api}/api/messages?limit={limit}")
        if isinstance(found, dict):
            found = found.get("messages", [])
        return list(found or [])

    async def wait_for_messages(
        self, check: Callable[[list[dict[str, Any]]], bool], what: str = "messages"
    ) -> list[dict[str, Any]]:
        return list(await self.poll(what, self.messages, check))

    async def command(self, meter: str | list[str], body: dict[str, Any]) -> dict[str, Any]:
        assert self._session is not None
        request = dict(body)
        if isinstance(meter, list):
            request["meters"] = meter
        else:
            request["meter"] = meter
        async with self._session.post(
            f"{self.api}/api/commands", json=request, headers=self.api_headers
        ) as reply:
            answer = await reply.json(content_type=None)
            assert reply.status == 202, answer
            return dict(answer)

    async def command_result(self, command_id: str) -> dict[str, Any]:
        found = await self.poll(
            f"the answer to {command_id}",
            lambda: self.get(f"{self.api}/api/commands/{command_id}"),
            lambda c: (c.get("command") or {}).get("status") in ("answered", "failed"),
        )
        return dict(found["command"])

    # ---- meters --------------------------------------------------------------------------

    def meter_config(self, meter_id: str, transport: str, **extra: Any) -> dict[str, Any]:
        if transport == "mqtt":
            assert self.broker is not None, "MQTT meters need a broker"
            port = self.broker.port
        else:
            port = self.coap_port
        config = {
            "meter_id": meter_id,
            "kind": "electric",
            "transport": transport,
            "dap_host": "127.0.0.1",
            "dap_port": port,
            "cse_id": "/id-dap1",
            "cse_name": "dap1",
            "serialization": "json",
            "listen_port": 0,
            "poa_host": "127.0.0.1",
            "clock_speed": 60,
            "start_ts": T0 + 10 * 3600,
            "rate_scale": 0.0001,  # nearly quiet: tests drive the flows they check
            "prepay": True,
            "seed": abs(hash(meter_id)) % 1000,
            "buffer_max": 10000,
            "buffer_bytes": 4_000_000,
        }
        config.update(extra)
        return config

    async def meter(self, meter_id: str, transport: str = "coap", **extra: Any) -> Agent:
        agent = Agent(self.meter_config(meter_id, transport, **extra))
        await agent.start()
        self.meters.append(agent)
        self._tasks.append(asyncio.create_task(agent.run()))
        return agent


def content_of(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str):
        content = json.loads(content)
    return dict(content or {})


_ids = itertools.count()


class HttpMeter:
    """A meter that posts alarms to the gateway over HTTPS (its own pinned client certificate)
    and remembers what was stored."""

    def __init__(self, session: aiohttp.ClientSession, system: System, name: str) -> None:
        self.session = session
        self.url = system.gateway_url
        self.tls = system.meter_tls(name)
        self.name = name
        self.acknowledged: list[int] = []
        self.refused: list[int] = []  # answered 5000: not stored
        self._seq = 0

    def _headers(self, ty: int | None = None) -> dict[str, str]:
        headers = {"X-M2M-Origin": f"C{self.name}", "X-M2M-RI": f"r{next(_ids)}"}
        headers["X-M2M-RVI"] = "3"
        headers["Content-Type"] = "application/json" + (f";ty={ty}" if ty else "")
        return headers

    async def register(self) -> None:
        ae = {"m2m:ae": {"rn": self.name, "api": "Nmeter", "rr": True, "srv": ["3"]}}
        for path, ty, body in (
            ("dap1", 2, ae),
            (f"dap1/{self.name}", 3, {"m2m:cnt": {"rn": "event"}}),
        ):
            async with self.session.post(
                f"{self.url}/{path}", json=body, headers=self._headers(ty), ssl=self.tls
            ) as reply:
                assert reply.status == 201, await reply.text()

    async def post(self) -> int:
        """Post the next alarm; the oneM2M status code, or 0 if the gateway is gone."""
        self._seq += 1
        seq = self._seq
        con = json.dumps({"flow": "ev-outage", "type": "alarm", "seq": seq, "ts": seq})
        body = {"m2m:cin": {"cnf": "application/json:0", "con": con}}
        try:
            async with self.session.post(
                f"{self.url}/dap1/{self.name}/event",
                json=body,
                headers=self._headers(4),
                ssl=self.tls,
            ) as reply:
                status = int(reply.headers.get("X-M2M-RSC", 0))
        except (aiohttp.ClientError, OSError):
            return 0  # not acknowledged
        if status == 2001:
            self.acknowledged.append(seq)
        elif status == 5000:
            self.refused.append(seq)
        return status

    async def read_container(self) -> int:
        async with self.session.get(
            f"{self.url}/dap1/{self.name}/event", headers=self._headers(), ssl=self.tls
        ) as reply:
            return reply.status
