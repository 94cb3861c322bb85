"""The DAP broker of docker/mosquitto, run by the Debian `mosquitto` binary for tests.

docker/mosquitto/mosquitto.conf is used as shipped, with only ports and file paths replaced
(free ports, temp files, a log file, this user). Its password file and ACL come from a real
credential store through the real `gridm2m credentials mosquitto` command; its server
certificate from the lab CA (cse/security/pki.py). One `observer` user who may read
everything is added to both files: it sees whether a refused message went anywhere.

The store is the one a gateway CSE with `--cse-id /id-dap1 --db <dir>/id-dap1.db` uses, so a
test can run that CSE against this broker with the same credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from cse.security.credentials import CredentialStore
from cse.security.mosquitto import hash_password
from cse.security.pki import LabCA
from gridm2m.broker import HOST, free_port, mosquitto_binary, wait_until_accepting

DOCKER = Path(__file__).resolve().parents[2] / "docker"
MOSQUITTO = DOCKER / "mosquitto"
SHIPPED_CONFIG = MOSQUITTO / "mosquitto.conf"
OBSERVER = "observer"
GATEWAY_CSE = "/id-dap1"
GATEWAY = "id-dap1"  # its broker user name: the CSE-ID in topic form
HEADEND = "id-in"


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name: value for name, value in pairs}


def shipped_listeners() -> list[list[str]]:
    """The `listener` lines of the shipped config, split into words."""
    return [
        line.split()
        for line in SHIPPED_CONFIG.read_text().splitlines()
        if line.startswith("listener ")
    ]


def adapted_config(directory: Path, plain_port: int, tls_port: int) -> str:
    """docker/mosquitto/mosquitto.conf with its ports and file paths replaced."""
    secrets = directory / "secrets"
    replacements = {
        "listener 1883 127.0.0.1": f"listener {plain_port} 127.0.0.1",
        "listener 8883": f"listener {tls_port}",
        "certfile": f"certfile {secrets / 'mosquitto.pem'}",
        "keyfile": f"keyfile {secrets / 'mosquitto.key'}",
        "password_file": f"password_file {secrets / 'passwd'}",
        "acl_file": f"acl_file {secrets / 'acl'}",
        "persistence_location": f"persistence_location {directory}/",
        "log_dest": f"log_dest file {directory / 'mosquitto.log'}",
    }
    lines, replaced = [], set()
    for line in SHIPPED_CONFIG.read_text().splitlines():
        key = next((k for k in replacements if line == k or line.startswith(k + " ")), None)
        if key is not None and key not in replaced:
            lines.append(replacements[key])
            replaced.add(key)
        else:
            lines.append(line)
    missing = set(replacements) - replaced
    if missing:  # the shipped config changed shape: this harness must follow
        raise AssertionError(f"mosquitto.conf has no {', '.join(sorted(missing))} line")
    # As root Mosquitto would switch to a 'mosquitto' user that cannot read the temp files.
    lines.append(f"user {getpass.getuser()}")
    return "\n".join(lines) + "\n"


def gridm2m_credentials(store: Path, *args: str) -> str:
    """Run `gridm2m credentials --store STORE ...` as a user would; its standard output."""
    done = subprocess.run(
        [sys.executable, "-m", "gridm2m", "credentials", "--store", str(store), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class DapBroker:
    directory: Path
    plain_port: int
    tls_port: int
    store: Path  # the gateway's credential store
    ca: Path  # the CA of the broker's certificate (PEM)
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """Where the gateway on this host connects: the loopback listener."""
        return f"mqtt://{HOST}:{self.plain_port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://{HOST}:{self.tls_port}"

    def meter_config(self, meter_id: str, *, tls: bool = True, **extra: Any) -> dict[str, Any]:
        """An MQTT meter agent's config.json for this broker: its own login from the store,
        the TLS listener and the CA (`tls`), or the plain loopback listener; `extra` on top."""
        user = "C" + meter_id
        config: dict[str, Any] = {
            "meter_id": meter_id,
            "transport": "mqtt",
            "dap_host": HOST,
            "dap_port": self.tls_port if tls else self.plain_port,
            "cse_id": GATEWAY_CSE,
            "cse_name": "dap1",
            "mqtt_username": user,
            "mqtt_password": self.password(user),
            "mqtt_tls": tls,
            "timeout_ms": 10000,
        }
        if tls:
            config["mqtt_ca"] = str(self.ca)
        return {**config, **extra}

    def password(self, user: str) -> str:
        if user == OBSERVER:
            return "observer-password"
        if user == "health":
            return read_env_file(self.directory / "secrets" / "health.env")["MQTT_HEALTH_PASSWORD"]
        with CredentialStore(self.store) as store:
            for credential in store.all():
                if credential.originator.lstrip("/") == user and credential.mqtt_password:
                    return credential.mqtt_password
        raise KeyError(user)

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def client(
        self, user: str, password: str | None = None, *, tls: bool = True, host: str = HOST
    ) -> aiomqtt.Client:
        """A client logged in as `user` (with its own password unless one is given), over
        TLS to the meters' listener, or plain to the loopback one."""
        return aiomqtt.Client(
            host,
            self.tls_port if tls else self.plain_port,
            username=user,
            password=self.password(user) if password is None else password,
            identifier=f"test-{user}",
            tls_context=self.tls_context() if tls else None,
        )

    def make_files(self) -> str:
        """The password file and ACL from the store, as an operator makes them, plus the
        observer; the command's output."""
        secrets = self.directory / "secrets"
        printed = gridm2m_credentials(
            self.store,
            *("mosquitto", "--cse-id", GATEWAY_CSE, "--passwords", str(secrets / "passwd")),
            *("--acl", str(secrets / "acl"), "--health-env", str(secrets / "health.env")),
        )
        with (secrets / "passwd").open("a") as passwd:
            passwd.write(f"{OBSERVER}:{hash_password(self.password(OBSERVER))}\n")
        with (secrets / "acl").open("a") as acl:
            acl.write(f"\nuser {OBSERVER}\ntopic read #\n")
        return printed

    async def reload(self, newcomer: str) -> None:
        """Make the files again and SIGHUP the broker, as docs/security.md says; returns once
        the broker has read them: `newcomer`, a user the new files add, can log in."""
        self.make_files()
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)
        delay = 0.01
        async with asyncio.timeout(10):
            while True:
                try:
                    async with self.client(newcomer):
                        return
                except aiomqtt.MqttError:
                    await asyncio.sleep(delay)  # the broker has not reloaded yet: poll
                    delay = min(delay * 2, 0.2)

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text() if path.exists() else ""


async def start_mosquitto(
    binary: str, config: Path, port: int, stderr_log: Path
) -> asyncio.subprocess.Process:
    """mosquitto -c config, once it accepts connections on `port`."""
    # Config errors go to stderr before the log file is open.
    with stderr_log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            binary,
            "-c",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        await wait_until_accepting(port, 10.0, lambda: process.returncode is None)
    except (RuntimeError, TimeoutError) as error:
        if process.returncode is None:
            process.kill()
        await process.wait()
        raise RuntimeError(f"mosquitto did not start: {error}\n{stderr_log.read_text()}") from None
    return process


@contextlib.asynccontextmanager
async def dap_broker(directory: Path, meters: tuple[str, ...] = ()) -> AsyncIterator[DapBroker]:
    """The shipped broker, with a credential for each meter id in `meters` and the head-end."""
    binary = mosquitto_binary()
    if binary is None:
        raise RuntimeError("needs mosquitto (apt install mosquitto)")
    secrets = directory / "secrets"
    ca = LabCA.create(directory / "pki")
    ca.issue_server(secrets, "mosquitto", [HOST, "localhost"])
    store = directory / f"{GATEWAY}-credentials.db"
    with CredentialStore(store) as credentials:
        for meter in meters:
            credentials.add_device(meter)
        credentials.add_cse("/" + HEADEND, mqtt=True)
    for attempt in range(3):  # a free port may be taken between probing and binding
        plain_port, tls_port = free_port(), free_port()
        config = directory / "mosquitto.conf"
        config.write_text(adapted_config(directory, plain_port, tls_port))
        broker = DapBroker(directory, plain_port, tls_port, store, ca.cert_path)
        broker.make_files()
        try:
            process = await start_mosquitto(binary, config, tls_port, directory / "stderr.log")
            # Mosquitto binds every listener before it serves any: this one is open too.
            break
        except RuntimeError:
            if attempt == 2:
                raise
    broker.process = process
    try:
        yield broker
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
