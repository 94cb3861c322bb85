"""A local MQTT broker for the all-in-one demo and the tests, never a shared one.

`MosquittoBroker` runs the `mosquitto` binary on a free loopback port with a config written to
a directory of its own: anonymous access and persistence on (a persistent session, its
subscriptions and its queued QoS 1 messages survive a broker restart). `start()` returns once
the port accepts TCP connections (polled with a short backoff, bounded by a timeout); `stop()`
ends it with SIGTERM, when Mosquitto saves its database; `start()` again brings it back on the
same port.

Without a `mosquitto` binary, `embedded_broker()` falls back to `AmqttBroker`, the in-process
broker of the `amqtt` package, so the demo and the tests run on a machine without root. It
queues messages for a client that is away, but keeps nothing across its own restart and does
not redeliver what a killed client left unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

HOST = "127.0.0.1"


class Broker(Protocol):
    port: int
    # Full MQTT 3.1.1 persistent sessions: unacknowledged QoS 1 messages are redelivered to a
    # client that comes back, and sessions survive stop() + start() of the broker.
    persistent: bool

    @property
    def url(self) -> str: ...

    async def start(self, timeout: float = 10.0) -> None: ...

    async def stop(self) -> None: ...


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found is None and os.access("/usr/sbin/mosquitto", os.X_OK):
        found = "/usr/sbin/mosquitto"
    return found


async def wait_until_accepting(port: int, timeout: float, alive: Any = None) -> None:
    """Poll the port until a TCP connection succeeds; `alive()` False means give up early."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            if alive is not None and not alive():
                raise RuntimeError(f"the broker on port {port} exited while starting") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepts connections on port {port}") from None
            await asyncio.sleep(delay)  # a poll interval with backoff, not a synchronisation
            delay = min(delay * 2, 0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return


@dataclass(frozen=True)
class BrokerLogins:
    """A password file and an ACL (`gridm2m credentials mosquitto`, cse/security/mosquitto.py):
    with them nobody logs in anonymously and every client is held to its own topics."""

    password_file: Path
    acl_file: Path


class MosquittoBroker:
    """mosquitto -c <temp config>, on `port` (a free one by default); TLS with `tls` files,
    logins and topic rules with `logins` (else anonymous access)."""

    persistent = True

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        binary: str | None = None,
        tls: Any = None,  # an object with ca, certificate and key paths,
        logins: BrokerLogins | None = None,
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.binary = binary or mosquitto_binary() or "mosquitto"
        self.tls = tls
        self.logins = logins
        self.process: asyncio.subprocess.Process | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{HOST}:{self.port}"

    def _write_config(self) -> Path:
        lines = [
            f"listener {self.port} {HOST}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.directory}/",
            # As root Mosquitto would switch to a 'mosquitto' user that cannot write here.
            f"user {getpass.getuser()}",
            "max_queued_messages 100000",
            # Without it every reply waits for a delayed TCP ACK (~40 ms per hop).
            "set_tcp_nodelay true",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if self.tls is not None:
            tls = self.tls
            lines[1:1] = [f"cafile {tls.ca}", f"certfile {tls.certificate}", f"keyfile {tls.key}"]
        if self.logins is not None:
            lines[lines.index("allow_anonymous true")] = "allow_anonymous false"
            lines += [
                f"password_file {self.logins.password_file}",
                f"acl_file {self.logins.acl_file}",
            ]
        config = self.directory / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    async def start(self, timeout: float = 10.0) -> None:
        config = self._write_config()
        self.process = await asyncio.create_subprocess_exec(
            self.binary,
            "-c",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        process = self.process
        try:
            await wait_until_accepting(self.port, timeout, lambda: process.returncode is None)
        except (RuntimeError, TimeoutError) as error:
            await self.kill()
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"mosquitto did not start: {error}\n{log[-2000:]}") from None

    async def stop(self) -> None:
        """SIGTERM: Mosquitto saves sessions and queued messages, then exits."""
        await self._end(signal.SIGTERM)

    def reload(self) -> None:
        """SIGHUP: Mosquitto reads its password file and ACL again (a new or revoked meter)."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGHUP)

    async def kill(self) -> None:
        await self._end(signal.SIGKILL)

    async def _end(self, how: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(how)
        await process.wait()

    async def __aenter__(self) -> MosquittoBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.kill()


class AmqttBroker:
    """amqtt's broker in this process (fallback when there is no mosquitto binary)."""

    persistent = False

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    async def start(self, timeout: float = 10.0) -> None:
        from amqtt.broker import Broker as Amqtt  # optional: pip install amqtt

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}
            },
        }
        self._broker = Amqtt(config)
        # Listening once start() returns; a bare TCP probe would only make amqtt leak a socket.
        await asyncio.wait_for(self._broker.start(), timeout)

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()

    async def __aenter__(self) -> AmqttBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def embedded_broker(directory: Path, choice: str = "auto") -> AsyncIterator[Broker]:
    """Mosquitto if installed, else amqtt; stopped on exit whatever state it is in.

    `choice` is "auto", "mosquitto" or "amqtt"."""
    use_mosquitto = choice == "mosquitto" or (choice == "auto" and mosquitto_binary() is not None)
    broker: MosquittoBroker | AmqttBroker = (
        MosquittoBroker(directory) if use_mosquitto else AmqttBroker()
    )
    for attempt in range(3):  # the free port may be taken between probing and binding
        try:
            await broker.start()
            break
        except (RuntimeError, OSError):
            if attempt == 2:
                raise
            broker.port = free_port()
    try:
        yield broker
    finally:
        if isinstance(broker, MosquittoBroker):
            await broker.kill()
        else:
            await broker.stop()
