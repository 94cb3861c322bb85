"""The ACME oneM2M CSE (PyPI `acmecse`) as an IN-CSE for interop tests, and a oneM2M HTTP client.

    async with AcmeCSE(tmp_path / "acme", mqtt_port=broker.port) as acme:
        headend = AcmeClient(acme.url, "Cheadend")
        rsc, body = await headend.request("GET", "/cse-in")

ACME is installed with pip into a virtualenv of its own, next to the one the benchmarks use
(`bench/acme.py`): `$GRIDM2M_BENCH_VENVS/acme-<version>`, default `bench/.venvs/acme-<version>`,
made once. The version is pinned (`ACME_VERSION`; `GRIDM2M_INTEROP_ACME_VERSION` tries another),
because the tests also record where ACME departs from the specification, and a new release may
change that. `acme_python()` raises `AcmeUnavailable` when the package cannot be installed (no
way to reach the package index), which the tests turn into a skip.

The generated `acme.ini` makes ACME an IN-CSE `/id-in` with CSEBase `cse-in` on a free loopback
port: HTTP always, MQTT through the given broker when `mqtt_port` is set, no CoAP, WebSocket,
web UI or console. Remote CSE handling is on (it is what a registering MN-CSE needs) and the
CSE-IDs in `registrees` may create a remoteCSE (`[cse.registration] allowedCSROriginators`,
empty by default, so ACME refuses every CSE registration out of the box). Access control stays
on. The database is TinyDB in memory, reset at every start. ACME logs at `info` level (or
`$GRIDM2M_ACME_LOG_LEVEL`) to `<workdir>/logs/`; its own stdout/stderr go to `<workdir>/acme.out`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench.acme import READY_MARKER, acme_version, venv_python, venvs_dir
from cse.bindings.mqtt import MqttSettings
from cse.bindings.mqtt.client import MqttClient, MqttClientError
from gridm2m.broker import HOST, free_port

ACME_VERSION = os.environ.get("GRIDM2M_INTEROP_ACME_VERSION", "2026.5.3")
CSE_ID = "/id-in"
CSE_NAME = "cse-in"
ADMIN = "CAdmin"
START_TIMEOUT = 90.0
LOG_LEVEL_ENV = "GRIDM2M_ACME_LOG_LEVEL"  # debug, info, warning, error

T = TypeVar("T")


class AcmeUnavailable(Exception):
    """acmecse could not be installed here (no package index, no venv support)."""


def acme_python() -> Path:
    """The interpreter of the pinned ACME's virtualenv; installs it on first use.

    A venv counts as complete once the marker written after a successful install exists; a
    half-built one is removed and made again."""
    venv = venvs_dir() / f"acme-{ACME_VERSION}"
    python = venv_python(venv)
    if (venv / READY_MARKER).is_file() and python.exists():
        return python
    try:
        if venv.exists():
            shutil.rmtree(venv)
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        spec = f"acmecse=={ACME_VERSION}"
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", spec]
        done = subprocess.run(pip, check=False, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as error:
        raise AcmeUnavailable(f"cannot make a virtualenv for ACME: {error}") from error
    if done.returncode != 0:
        raise AcmeUnavailable(f"pip install {spec} failed: {(done.stdout + done.stderr)[-1500:]}")
    (venv / READY_MARKER).write_text(f"{spec}\n")
    return python


async def poll(
    what: str,
    read: Callable[[], Awaitable[T]],
    check: Callable[[T], bool],
    timeout: float = 60.0,
) -> T:
    """Read another process's state until `check` holds; fail with the last reading.

    The pause between readings grows from 20 ms to 0.5 s; the whole wait is bounded."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        seen = await read()
        if check(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last seen: {str(seen)[:2000]}")
        await asyncio.sleep(delay)  # a poll interval with backoff, bounded by the timeout
        delay = min(delay * 1.5, 0.5)


def render_ini(
    workdir: Path,
    http_port: int,
    *,
    mqtt_port: int | None = None,
    registrees: tuple[str, ...] = ("/id-dap1",),
    liveliness_interval: int = 60,
    log_level: str = "info",
) -> str:
    """The `acme.ini` text (see the module docstring)."""
    mqtt = "true" if mqtt_port is not None else "false"
    return f"""\
; Written by tests/interop/acme_cse.py: ACME as the IN-CSE of an interop test.
[basic.config]
cseType=IN
cseID={CSE_ID.lstrip("/")}
cseName={CSE_NAME}
adminID={ADMIN}
networkInterface={HOST}
cseHost={HOST}
httpPort={http_port}
databaseType=memory
logLevel={log_level}
consoleTheme=dark
consoleType=simple

[cse]
enableRemoteCSE=true

[cse.registration]
allowedCSROriginators={",".join(registrees)}
checkLiveliness=true
checkInterval={liveliness_interval}

[cse.statistics]
enable=false

[cse.operation.requests]
enable=false

[http]
enable=true
root=/

[http.wsgi]
enable=true
threadPoolSize=4
connectionLimit=100

[mqtt]
enable={mqtt}
address={HOST}
port={mqtt_port or 1883}
keepalive=60

[mqtt.security]
username=acme

[coap]
enable=false

[websocket]
enable=false

[database]
resetOnStartup=true

[logging]
enableScreenLogging=false
enableFileLogging=true
path={workdir / "logs"}
level={log_level}

[console]
headless=true
confirmQuit=false

[textui]
enable=false
startWithTUI=false

[webui]
enable=false

[scripting]
fileMonitoringInterval=0
"""


class AcmeClient:
    """oneM2M requests to a CSE over HTTP (TS-0009) as one originator; raw rsc and body."""

    def __init__(self, base_url: str, originator: str, *, timeout: float = 15.0) -> None:
        self.base_url = base_url
        self.originator = originator
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
        self._ids = itertools.count(1)

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        ty: int | None = None,
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
        rvi: str = "3",
        originator: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """One request; `path` is the HTTP path (`/cse-in/x`, or `/~/id-dap1/...`).
        `originator` sends this one request as someone else than the client's originator."""
        originator = self.originator if originator is None else originator
        headers = {
            "X-M2M-Origin": originator,
            "X-M2M-RI": f"{originator}-{next(self._ids)}",
            "X-M2M-RVI": rvi,
            "Accept": "application/json",
        }
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json" + (f";ty={ty}" if ty else "")
            data = json.dumps(body)
        async with self._session.request(
            method, self.base_url + path, headers=headers, data=data, params=query
        ) as reply:
            text = await reply.text()
            rsc = int(reply.headers.get("X-M2M-RSC", "0"))
        content = json.loads(text) if text.strip() else {}
        return rsc, content if isinstance(content, dict) else {"": content}

    async def create(self, path: str, ty: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return await self.request("POST", path, ty=ty, body=body)

    async def retrieve(
        self, path: str, query: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        return await self.request("GET", path, query=query)

    async def update(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return await self.request("PUT", path, body=body)


class AcmeCSE:
    """One ACME process; `async with` starts it, waits until it answers, and stops it."""

    def __init__(
        self,
        workdir: Path,
        *,
        mqtt_port: int | None = None,
        registrees: tuple[str, ...] = ("/id-dap1",),
        liveliness_interval: int = 60,
    ) -> None:
        self.log_level = os.environ.get(LOG_LEVEL_ENV, "info")
        self.workdir = workdir.resolve()
        self.mqtt_port = mqtt_port
        self.registrees = registrees
        self.liveliness_interval = liveliness_interval
        self.port = 0
        self.version = ""
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        """The end of ACME's log file (named after its SP-ID and CSE-ID) or of its output."""
        for path in [*sorted(self.workdir.glob("logs/*.log")), self.workdir / "acme.out"]:
            if path.is_file():
                return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no ACME log)"

    async def __aenter__(self) -> AcmeCSE:
        python = await asyncio.to_thread(acme_python)
        self.version = await asyncio.to_thread(acme_version, python)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        ini = render_ini(
            self.workdir,
            self.port,
            mqtt_port=self.mqtt_port,
            registrees=self.registrees,
            liveliness_interval=self.liveliness_interval,
            log_level=self.log_level,
        )
        (self.workdir / "acme.ini").write_text(ini)
        with (self.workdir / "acme.out").open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                str(python),
                "-m",
                "acmecse",
                "--base-directory",
                str(self.workdir),
                "--config",
                "acme.ini",
                "--headless",
                cwd=self.workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            await self._wait_until_answering()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _wait_until_answering(self) -> None:
        """Poll ACME until it answers 2000 to a RETRIEVE of its CSEBase as the admin: over
        HTTP, and with MQTT on, also through the broker (ACME subscribes there some time after
        its HTTP server is up). Ends when it answers, exits, or the time is up."""
        client = AcmeClient(self.url, ADMIN, timeout=2.0)
        probe = None
        if self.mqtt_port is not None:
            settings = MqttSettings(f"mqtt://{HOST}:{self.mqtt_port}", username="acme-probe")
            probe = MqttClient(settings, ADMIN, timeout=1.0)
        deadline = time.monotonic() + START_TIMEOUT
        delay = 0.05
        try:
            while True:
                assert self.process is not None
                if self.process.returncode is not None:
                    raise RuntimeError(f"ACME exited while starting:\n{self.log_tail()}")
                if await self._answers(client, probe):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ACME did not answer in time:\n{self.log_tail()}")
                await asyncio.sleep(delay)  # a poll interval with backoff, bounded above
                delay = min(delay * 1.5, 0.5)
        finally:
            await client.close()
            if probe is not None:
                await probe.close()

    async def _answers(self, client: AcmeClient, probe: MqttClient | None) -> bool:
        try:
            rsc, _ = await client.retrieve(f"/{CSE_NAME}")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False
        if rsc != 2000:
            return False
        if probe is None:
            return True
        primitive = {"op": 2, "to": CSE_NAME, "fr": ADMIN, "rqi": uuid.uuid4().hex, "rvi": "3"}
        try:
            reply = await probe.request(CSE_ID, primitive)
        except MqttClientError:
            return False
        return reply.get("rsc") == 2000

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)  # ACME shuts down cleanly on SIGTERM
        try:
            async with asyncio.timeout(20):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
