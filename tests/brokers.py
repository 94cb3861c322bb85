"""A private MQTT broker for each test, never the shared one on port 1883.

The brokers themselves live in `gridm2m/broker.py` (the all-in-one demo uses them too):
Mosquitto on a free loopback port, or amqtt in this process where there is no `mosquitto`
binary; amqtt keeps nothing across its own restart and does not redeliver what a killed
client left unacknowledged, so the tests of those skip on it. Here: the test's choice of
broker (GRIDM2M_TEST_BROKER), TLS material, and client settings.

    async with private_broker(tmp_path) as broker:
        settings = settings_for(broker)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from cse.bindings.mqtt import MqttSettings
from gridm2m.broker import (
    HOST,
    AmqttBroker,
    Broker,
    MosquittoBroker,
    embedded_broker,
    free_port,
    mosquitto_binary,
    wait_until_accepting,
)

__all__ = [
    "AmqttBroker",
    "Broker",
    "MosquittoBroker",
    "free_port",
    "mosquitto_binary",
    "wait_until_accepting",
]

# Every test client presents a user name: amqtt keeps no queued messages for anonymous
# sessions; Mosquitto with allow_anonymous accepts any name without a password file.
USERNAME = "gridm2m-test"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    certificate: Path
    key: Path


def make_certificates(directory: Path) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 (needs the openssl command)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    (directory / "san.cnf").write_text(f"subjectAltName=IP:{HOST}\n")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
        ["req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
         "-subj", "/CN=gridm2m test CA"],
        ["req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={HOST}"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.cnf"],
    ):  # fmt: skip
        subprocess.run(["openssl", *command], cwd=directory, check=True, capture_output=True)
    return files


@contextlib.asynccontextmanager
async def private_broker(directory: Path) -> AsyncIterator[Broker]:
    """The test broker: GRIDM2M_TEST_BROKER=mosquitto|amqtt forces one (default auto)."""
    async with embedded_broker(directory, os.environ.get("GRIDM2M_TEST_BROKER", "auto")) as b:
        yield b


def settings_for(broker: Broker, **options: Any) -> MqttSettings:
    """MqttSettings for a test client of `broker`."""
    return MqttSettings(broker.url, username=USERNAME, **options)


def raw_client(broker: Broker, **options: Any) -> aiomqtt.Client:
    """A plain aiomqtt client of `broker` (enter it with `async with`)."""
    return aiomqtt.Client(HOST, broker.port, username=USERNAME, **options)
