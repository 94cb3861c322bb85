"""The DAP broker of docker/mosquitto, run by the Debian `mosquitto` binary for tests.

docker/mosquitto/mosquitto.conf is used as shipped, with only the lines a test must change
replaced (a free loopback port, temp paths, a log file, this user), and the password file
comes from docker/mosquitto/make-passwords.sh. The ACL is docker/mosquitto/acl plus one
`observer` user who may read everything: it sees whether a refused message went anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import getpass
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from gridm2m.broker import HOST, free_port, mosquitto_binary, wait_until_accepting

DOCKER = Path(__file__).resolve().parents[2] / "docker"
MOSQUITTO = DOCKER / "mosquitto"
MAKE_PASSWORDS = MOSQUITTO / "make-passwords.sh"
OBSERVER = "observer"


def mosquitto_passwd_binary() -> str | None:
    return shutil.which("mosquitto_passwd") or (
        "/usr/bin/mosquitto_passwd" if os.access("/usr/bin/mosquitto_passwd", os.X_OK) else None
    )


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name: value for name, value in pairs}


def make_passwords(out: Path, meters: int, *extra: str) -> dict[str, str]:
    """Run make-passwords.sh into `out`; every user's password, by user name."""
    # Random passwords for everyone, whatever the caller's environment holds.
    environ = {k: v for k, v in os.environ.items() if not k.endswith("MQTT_PASSWORD")}
    tool = mosquitto_passwd_binary()
    if tool is not None:
        environ["MOSQUITTO_PASSWD"] = tool
    subprocess.run(
        ["sh", str(MAKE_PASSWORDS), "-n", str(meters), "-o", str(out), *extra],
        env=environ,
        check=True,
        capture_output=True,
    )
    with (out / "meters.csv").open() as rows:
        passwords = {row["username"]: row["password"] for row in csv.DictReader(rows)}
    gateway = read_env_file(out / "gateway.env")
    headend = read_env_file(out / "headend.env")
    passwords[gateway["GRIDM2M_GATEWAY__CSE__MQTT__USERNAME"]] = gateway[
        "GRIDM2M_GATEWAY__CSE__MQTT__PASSWORD"
    ]
    passwords[headend["GRIDM2M_HEADEND__CSE__MQTT__USERNAME"]] = headend[
        "GRIDM2M_HEADEND__CSE__MQTT__PASSWORD"
    ]
    passwords["health"] = read_env_file(out / "mosquitto.env")["MQTT_HEALTH_PASSWORD"]
    return passwords


def adapted_config(directory: Path, port: int, password_file: Path, acl_file: Path) -> str:
    """docker/mosquitto/mosquitto.conf with the deployment-specific lines replaced."""
    replacements = {
        "listener": f"listener {port} {HOST}",
        "password_file": f"password_file {password_file}",
        "acl_file": f"acl_file {acl_file}",
        "persistence_location": f"persistence_location {directory}/",
        "log_dest": f"log_dest file {directory / 'mosquitto.log'}",
    }
    lines, replaced = [], set()
    for line in (MOSQUITTO / "mosquitto.conf").read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key in replacements:
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


@dataclass
class DapBroker:
    port: int
    passwords: dict[str, str]
    directory: Path

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    def client(self, user: str, password: str | None = None) -> aiomqtt.Client:
        """A client logged in as `user` (with its own password unless one is given)."""
        return aiomqtt.Client(
            HOST,
            self.port,
            username=user,
            password=self.passwords.get(user) if password is None else password,
            identifier=f"test-{user}",
        )

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
async def dap_broker(directory: Path, meters: int = 2) -> AsyncIterator[DapBroker]:
    binary, passwd_tool = mosquitto_binary(), mosquitto_passwd_binary()
    if binary is None or passwd_tool is None:
        raise RuntimeError("needs mosquitto and mosquitto_passwd (apt install mosquitto)")
    secrets = directory / "secrets"
    passwords = make_passwords(secrets, meters)
    passwords[OBSERVER] = "observer-password"
    subprocess.run(
        [passwd_tool, "-b", str(secrets / "passwd"), OBSERVER, passwords[OBSERVER]],
        check=True,
        capture_output=True,
    )
    acl = directory / "acl"
    acl.write_text((MOSQUITTO / "acl").read_text() + f"\nuser {OBSERVER}\ntopic read #\n")
    for attempt in range(3):  # the free port may be taken between probing and binding
        port = free_port()
        config = directory / "mosquitto.conf"
        config.write_text(adapted_config(directory, port, secrets / "passwd", acl))
        try:
            process = await start_mosquitto(binary, config, port, directory / "stderr.log")
            break
        except RuntimeError:
            if attempt == 2:
                raise
    broker = DapBroker(port, passwords, directory)
    try:
        yield broker
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
