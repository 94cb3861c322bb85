"""Running the system's parts as processes on one machine: the demo and the interop runner.

`Stack` writes configs for a head-end and a gateway into a directory, starts
`gridm2m headend` and `gridm2m gateway` as child processes (each reports where it listens on
the line it prints), waits until the gateway is registered, and stops them in reverse order.
`spawn` starts any `gridm2m` subcommand the same way (the fleet, for instance).

The two talk HTTPS with mutual TLS, as the shipped configs do: the stack makes a lab PKI in
`<directory>/pki` and pins each side's client certificate in the other's credential store. It
also makes an admin token for the head-end's web API (`api_headers`) and sets the dashboard's
operator password (`operator_password`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import signal
import socket
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from cse.config_files import merge_tables
from cse.security.credentials import CredentialStore
from cse.security.mosquitto import write_broker_files
from cse.security.pki import LabCA, client_context
from gridm2m.broker import BrokerLogins, MosquittoBroker, free_port, free_udp_port
from gridm2m.pki import client_files, make_lab

START_TIMEOUT_S = 60.0


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    log: Path
    banner: str = ""
    reader: asyncio.Future[None] | None = None


def port_or_free(port: int) -> int:
    """`port` if it can be bound on loopback now, else (or for 0) a free one."""
    if port == 0:
        return free_port()
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def moved_port_note(what: str, wanted: int, taken: int) -> str | None:
    """What to tell the user when `what` could not have the port asked for (None if it did,
    or if any port would do)."""
    if wanted in (0, taken):
        return None
    return f"port {wanted} is busy (another program listens there): the {what} is on {taken}"


def _toml_key(key: str) -> str:
    """A key as TOML takes it: bare when it can be, else quoted (a meter id with a dot)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_text(section: str, values: dict[str, Any]) -> str:
    """A small TOML writer for generated configs: nested tables of scalars and lists."""
    lines: list[str] = []

    def table(name: str, data: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        nested = {k: v for k, v in data.items() if isinstance(v, dict)}
        for key, value in data.items():
            if not isinstance(value, dict):
                lines.append(f"{_toml_key(key)} = {json.dumps(value)}")
        lines.append("")
        for key, value in nested.items():
            table(f"{name}.{key}", value)

    table(section, values)
    return "\n".join(lines)


async def spawn(name: str, args: list[str], directory: Path, marker: str) -> Child:
    """`python -m gridm2m ARGS`, stderr to DIRECTORY/NAME.log; with a marker, wait for the
    line containing it (the part's "listening on" line)."""
    log = directory / f"{name}.log"
    with log.open("ab") as errors:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gridm2m",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
            start_new_session=True,  # Ctrl-C is the parent's to handle, not every child's
        )
    child = Child(name, process, log)
    if marker:
        assert process.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while True:
                    line = await process.stdout.readline()
                    if not line:
                        raise RuntimeError(f"{name} exited while starting; see {log}")
                    text = line.decode(errors="replace").strip()
                    if marker in text:
                        child.banner = text
                        break
        except TimeoutError:
            await stop(child)
            raise RuntimeError(
                f"{name} did not start within {START_TIMEOUT_S:g} s; see {log}"
            ) from None
    # Keep reading what it prints, so a full pipe never blocks it.
    child.reader = asyncio.ensure_future(_drain(process.stdout))
    return child


async def _drain(stream: asyncio.StreamReader | None) -> None:
    if stream is not None:
        while await stream.readline():
            pass


async def stop(child: Child, how: signal.Signals = signal.SIGTERM) -> None:
    if child.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(how)
        try:
            async with asyncio.timeout(20):
                await child.process.wait()
        except TimeoutError:
            child.process.kill()
            await child.process.wait()


async def get_json(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> Any:
    """The JSON at url, or None if it cannot be had right now."""
    try:
        async with session.get(url, headers=headers) as reply:
            return await reply.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


def tls_tables(pki: Path, server: str, client: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A part's [cse.http.tls] and [cse.http.client] tables with the lab files in `pki`
    (`server`: its server certificate's name; `client`: its CSE-ID without the slash)."""
    listener = {
        "cert": str(pki / "server" / f"{server}.pem"),
        "key": str(pki / "server" / f"{server}.key"),
        "client_ca": str(pki / "ca.pem"),
    }
    files = client_files(pki, client)
    sender = {"ca": str(pki / "ca.pem"), "cert": str(files.cert), "key": str(files.key)}
    return listener, sender


def upstream_tls(sender: dict[str, Any]) -> dict[str, Any]:
    """The gateway's [gateway.upstream] TLS keys from its [cse.http.client] table."""
    return {"ca_file": sender["ca"], "cert_file": sender["cert"], "key_file": sender["key"]}


def provision_lab(pki: Path, headend_toml: Path, gateway_toml: Path) -> tuple[str, str]:
    """The lab PKI in `pki` with each side pinned in the other's credential store, and an
    admin token `stack` for the head-end's web API; returns (token, head-end store path)."""
    from gateway.config import load_gateway_config
    from headend.config import load_headend_config

    gateway = load_gateway_config(gateway_toml).cse
    headend = load_headend_config(headend_toml).cse
    make_lab(pki, gateway, headend)
    store_path = str(headend.credentials_path())
    with CredentialStore(store_path) as store:
        if any(credential.name == "stack" for credential in store.all()):
            return store.new_token("stack"), store_path
        return store.add_admin("stack", headend.admin_originator).token or "", store_path


def pinned_client(pki: Path, store_path: str, name: str) -> ssl.SSLContext:
    """A TLS context with a client certificate for the entity `C<name>` (an AE: a meter, an
    application), issued by the lab CA in `pki` and pinned to its credential in the store."""
    ca = LabCA(pki)
    files = client_files(pki, name)
    if not files.cert.exists():
        files = ca.issue_client(pki / "client", name)
    with CredentialStore(store_path) as store:
        if not any(credential.name == name for credential in store.all()):
            store.add_device(name, mqtt=False, oscore=False)
        store.pin_certificate(name, files.der())
    return client_context(ca.cert_path, files.cert, files.key)


@dataclass(frozen=True)
class BrokerTls:
    """The broker's certificate files (what MosquittoBroker's `tls` takes)."""

    ca: Path
    certificate: Path
    key: Path


@dataclass
class Stack:
    """A head-end and a gateway on loopback, configured into `directory`.

    CoAP: the gateway takes OSCORE only, with the keys of its store (`coap_trust`
    "credential"): the meters in `meters`, provisioned there before the start, are the only
    ones that may register (their keys: `gateway_store`). A test may ask for a lab gateway
    instead (`coap_trust="claimed"`: plain CoAP meters taken at their word).

    MQTT: with `broker_url` the gateway serves through a lab broker that authenticates nobody
    (its meters are taken at their word: trust "claimed"); with `secure_broker` the stack runs
    its own Mosquitto as a DAP does (docker/mosquitto): TLS, a password per meter and the ACL,
    both made from the gateway's credential store, and the gateway believes a request's topic
    only as far as that store says (trust "credential")."""

    directory: Path
    broker_url: str | None = None
    secure_broker: bool = False
    dashboard_port: int = 0
    coap_trust: str = "credential"
    headend_extra: dict[str, Any] = field(default_factory=dict)
    gateway_extra: dict[str, Any] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._wanted_dashboard_port = self.dashboard_port
        self._pick_ports()
        self.mdms_db = self.directory / "mdms.db"
        self.gateway_db = self.directory / "id-dap1.db"
        self.headend_db = self.directory / "id-in.db"
        self.pki_dir = self.directory / "pki"
        self.admin_token = ""
        self.headend_store = ""
        self.operator_password = secrets.token_urlsafe(12)
        self.broker: MosquittoBroker | None = None
        self.broker_port = free_port() if self.secure_broker else 0
        self.meters: list[str] = []  # provisioned in the gateway's store before the start

    def _pick_ports(self) -> None:
        self.headend_port = free_port()
        self.gateway_port = free_port()
        self.ops_port = free_port()
        self.coap_port = free_udp_port()
        self.dashboard_port = port_or_free(self._wanted_dashboard_port)
        self.dashboard_note = moved_port_note(
            "dashboard", self._wanted_dashboard_port, self.dashboard_port
        )
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.health_url = f"http://127.0.0.1:{self.ops_port}/health"
        self.gateway_url = f"https://127.0.0.1:{self.gateway_port}"
        self.headend_url = f"https://127.0.0.1:{self.headend_port}"

    @property
    def api_headers(self) -> dict[str, str]:
        """What a script sends to the head-end's web API (an admin token)."""
        return {"Authorization": f"Bearer {self.admin_token}"}

    def write_configs(self) -> tuple[Path, Path]:
        directory = self.directory
        headend_tls, headend_client = tls_tables(self.pki_dir, "headend", "id-in")
        gateway_tls, gateway_client = tls_tables(self.pki_dir, "gateway", "id-dap1")
        # Every part on loopback: each CSE reaches the others' points of access there
        # (loopback_peers), and the head-end accepts the gateway's CSE-ID as a remoteCSE.
        headend: dict[str, Any] = {
            "cse": {
                "db": str(self.headend_db),
                "http": {"port": self.headend_port, "tls": headend_tls, "client": headend_client},
                "remote_cses": ["/id-dap1"],
                "egress": {"loopback_peers": True},
            },
            "mdms": {"db": str(self.mdms_db)},
            "dashboard": {"port": self.dashboard_port, "password": self.operator_password},
        }
        gateway: dict[str, Any] = {
            "cse": {
                "db": str(self.gateway_db),
                "http": {"port": self.gateway_port, "tls": gateway_tls, "client": gateway_client},
                "coap": {"port": self.coap_port, "trust": self.coap_trust},
                "egress": {"loopback_peers": True},
            },
            "upstream": {"url": self.headend_url, **upstream_tls(gateway_client)},
            "mirror": {"status_interval": 2.0},
            "ops": {"port": self.ops_port},
        }
        if self.secure_broker:
            gateway["cse"]["mqtt"] = {
                "url": f"mqtts://127.0.0.1:{self.broker_port}",
                "ca_file": str(self.pki_dir / "ca.pem"),
            }
        elif self.broker_url:
            # A lab broker lets anyone in and holds nobody to their topics, so an MQTT topic
            # proves nothing: meters are taken at their word, never a privileged identity.
            gateway["cse"]["mqtt"] = {"url": self.broker_url, "trust": "claimed"}
        headend_toml = directory / "headend.toml"
        headend_toml.write_text(toml_text("headend", merge_tables(headend, self.headend_extra)))
        gateway_toml = directory / "gateway.toml"
        gateway_toml.write_text(toml_text("gateway", merge_tables(gateway, self.gateway_extra)))
        self._provision(headend_toml, gateway_toml)
        return headend_toml, gateway_toml

    def _provision(self, headend_toml: Path, gateway_toml: Path) -> None:
        self.admin_token, self.headend_store = provision_lab(
            self.pki_dir, headend_toml, gateway_toml
        )
        with CredentialStore(self.gateway_store) as store:
            store.add_devices(self.meters)

    @property
    def gateway_store(self) -> str:
        """The gateway's credential store: its meters' OSCORE keys and MQTT passwords."""
        return str(self.directory / "id-dap1-credentials.db")

    @property
    def ca_file(self) -> Path:
        return self.pki_dir / "ca.pem"

    async def _start_broker(self) -> None:
        """Mosquitto with TLS, the meters' passwords and the ACL from the gateway's store."""
        directory = self.directory / "broker"
        server = LabCA(self.pki_dir).issue_server(
            directory, "mosquitto", ["127.0.0.1", "localhost"]
        )
        logins = BrokerLogins(directory / "passwd", directory / "acl")
        with CredentialStore(self.gateway_store) as store:
            write_broker_files(store, "/id-dap1", logins.password_file, logins.acl_file)
        tls = BrokerTls(self.ca_file, server.cert, server.key)
        self.broker = MosquittoBroker(directory, self.broker_port, tls=tls, logins=logins)
        await self.broker.start()

    def app_tls(self, name: str) -> ssl.SSLContext:
        """A client certificate for an application `C<name>` on the head-end's IN-CSE (as a
        utility's application outside the head-end gets one), pinned in its store."""
        return pinned_client(self.pki_dir, self.headend_store, name)

    async def start(self, session: aiohttp.ClientSession) -> None:
        for attempt in range(3):
            try:
                await self._start_parts()
                break
            except RuntimeError:
                # A port picked as free may have been taken before the part bound it.
                await self.stop()
                if attempt == 2:
                    raise
                self._pick_ports()
        await self.wait_registered(session)

    async def _start_parts(self) -> None:
        headend_toml, gateway_toml = self.write_configs()
        if self.secure_broker:
            await self._start_broker()
        marker = "listening on"
        self.headend = await spawn(
            "headend", ["headend", "--config", str(headend_toml)], self.directory, marker
        )
        self.children.append(self.headend)
        self.gateway = await spawn(
            "gateway", ["gateway", "--config", str(gateway_toml)], self.directory, marker
        )
        self.children.append(self.gateway)

    async def wait_registered(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            health = await get_json(session, self.health_url)
            if isinstance(health, dict) and health.get("registered"):
                return
            await asyncio.sleep(0.2)  # polling a health endpoint while a process starts
        raise RuntimeError("the gateway did not register with the head-end")

    async def spawn(self, name: str, args: list[str], marker: str = "") -> Child:
        child = await spawn(name, args, self.directory, marker)
        self.children.append(child)
        return child

    async def stop(self) -> None:
        for child in reversed(self.children):
            await stop(child)
        self.children.clear()
        if self.broker is not None:
            await self.broker.stop()
            self.broker = None
