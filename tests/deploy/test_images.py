"""What the images and docker/compose.yaml rely on, checked without Docker.

The health check script against a real CSE, and docker/config loaded by the real config
models with the environment the Dockerfiles set and make-passwords.sh writes, so that a
renamed key, a moved port or a changed CSE-ID shows up here rather than in a container.
"""

from __future__ import annotations

import asyncio
import re
import sys
import tomllib
from pathlib import Path

from gateway.config import load_gateway_config
from headend.config import load_headend_config
from tests.deploy.dap_broker import DOCKER, MOSQUITTO, make_passwords, read_env_file
from tests.processes import CSEProcess

ROOT = DOCKER.parent
HEALTHCHECK = DOCKER / "healthcheck.py"


async def healthcheck(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HEALTHCHECK),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_healthcheck_passes_a_serving_cse_and_fails_anything_else() -> None:
    cse = CSEProcess("--db", ":memory:")
    url = await cse.start()
    try:
        assert await healthcheck(f"{url}/cse-in", "--originator", "/id-in") == (0, "")
        status, why = await healthcheck(f"{url}/cse-in")  # no originator: an error status
        assert (status, "HTTP" in why) == (1, True), why
        status, why = await healthcheck(f"{url}/cse-in/nothing", "--originator", "/id-in")
        assert (status, "HTTP 404" in why) == (1, True), why
    finally:
        await cse.stop()
    status, why = await healthcheck(f"{url}/cse-in", "--originator", "/id-in")  # stopped
    assert (status, "unhealthy" in why) == (1, True), why


def dockerfile_env(name: str) -> dict[str, str]:
    text = (DOCKER / name).read_text()
    return dict(re.findall(r"\b(GRIDM2M_\w+)=(\S+)", text))


def dockerfile_healthcheck(name: str) -> list[str]:
    text = (DOCKER / name).read_text().replace("\\\n", " ")
    found = re.search(r"^HEALTHCHECK .*?CMD (\[.*?\])", text, re.MULTILINE)
    assert found is not None, f"{name} has no HEALTHCHECK"
    return list(re.findall(r'"([^"]*)"', found.group(1)))


def acl_users() -> set[str]:
    return set(re.findall(r"^user (\S+)", (MOSQUITTO / "acl").read_text(), re.MULTILINE))


def test_compose_gateway_config_matches_the_image_broker_and_acl(tmp_path: Path) -> None:
    make_passwords(tmp_path, 1)
    environ = dockerfile_env("gateway.Dockerfile") | read_env_file(tmp_path / "gateway.env")
    config = load_gateway_config(DOCKER / "config" / "gateway.toml", environ=environ)
    assert (config.cse.http.host, config.ops.host) == ("0.0.0.0", "0.0.0.0")
    # The ACL names the gateway's CSE-ID and user; the image checks the ops port.
    acl = (MOSQUITTO / "acl").read_text()
    assert f"/oneM2M/req/%u/{config.cse.cse_id.lstrip('/')}/+" in acl
    assert config.cse.mqtt.username in acl_users()
    assert config.cse.mqtt.password  # from gateway.env
    assert config.cse.mqtt.url == "mqtt://mosquitto:1883"
    assert config.upstream.url == "http://headend:8080"
    check = dockerfile_healthcheck("gateway.Dockerfile")
    assert check[-1] == f"http://127.0.0.1:{config.ops.port}/health"
    # The image's own config file (configs/gateway.toml) agrees on the ports it publishes.
    shipped = load_gateway_config(ROOT / "configs" / "gateway.toml", environ={})
    exposed = (DOCKER / "gateway.Dockerfile").read_text()
    for port in (f"{shipped.cse.http.port}/tcp", f"{shipped.ops.port}/tcp", "5683/udp"):
        assert port in exposed


def test_compose_headend_config_matches_the_image_health_check(tmp_path: Path) -> None:
    make_passwords(tmp_path, 1)
    environ = dockerfile_env("headend.Dockerfile") | read_env_file(tmp_path / "headend.env")
    for path in (DOCKER / "config" / "headend.toml", ROOT / "configs" / "headend.toml"):
        config = load_headend_config(path, environ=environ)
        check = dockerfile_healthcheck("headend.Dockerfile")
        port, name = config.cse.http.port, config.cse.cse_name
        assert check[2:] == [f"http://127.0.0.1:{port}/{name}", "--originator", config.cse.cse_id]
        assert (config.cse.http.host, config.dashboard.host) == ("0.0.0.0", "0.0.0.0")
    assert config.cse.mqtt.username in acl_users()


def test_the_build_context_has_the_packages_and_no_secrets() -> None:
    """The Dockerfiles COPY the whole context: .dockerignore decides what is in it."""
    ignored = set((ROOT / ".dockerignore").read_text().split("\n"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    for kept in [*packages, "configs", "pyproject.toml", "README.md"]:
        assert kept not in ignored, kept
    assert "!docker/healthcheck.py" in ignored  # the one file of docker/ the images need
    for secret in ["docker", "**/.env", "**/*.env", ".venv", ".git", "**/*.db"]:
        assert secret in ignored, secret
