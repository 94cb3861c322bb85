"""What the images and docker/compose.yaml rely on, checked without Docker.

The health check script against a real CSE, and docker/config loaded by the real config
models with the environment the Dockerfiles set, beside the broker files that
`gridm2m credentials mosquitto` makes and docker/mosquitto, so that a renamed key, a moved
port or a changed CSE-ID shows up here rather than in a container.
"""

from __future__ import annotations

import asyncio
import re
import sys
import tomllib
from pathlib import Path

from cse.security.credentials import CredentialStore
from gateway.config import load_gateway_config
from headend.config import load_headend_config
from tests.deploy.dap_broker import DOCKER, MOSQUITTO, gridm2m_credentials
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
    # Lab mode: a plain request's originator is believed (the head-end's own check is on its
    # web server's /health, which needs no credential).
    cse = CSEProcess("--db", ":memory:", "--trust", "insecure")
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


def test_compose_gateway_config_matches_the_broker_it_shares(tmp_path: Path) -> None:
    environ = dockerfile_env("gateway.Dockerfile")
    config = load_gateway_config(DOCKER / "config" / "gateway.toml", environ=environ)
    assert (config.cse.http.host, config.ops.host) == ("0.0.0.0", "0.0.0.0")
    # Another container: TLS to the meters' listener, the broker verified against the CA
    # compose mounts, and the login from its own store (no password in the config).
    compose = (DOCKER / "compose.yaml").read_text()
    assert config.cse.mqtt.url == "mqtts://mosquitto:8883"
    assert f":{config.cse.mqtt.ca_file}:ro" in compose
    assert config.cse.mqtt.username is None and config.cse.mqtt.password is None
    assert '"8883:8883"' in compose and '"1883:1883"' not in compose
    # The broker's files made from that gateway's store name its CSE-ID and its login.
    store = tmp_path / "credentials.db"
    CredentialStore(store).open().close()
    broker_files = ("--passwords", str(tmp_path / "passwd"), "--acl", str(tmp_path / "acl"))
    gridm2m_credentials(store, "mosquitto", "--cse-id", config.cse.cse_id, *broker_files)
    acl = (tmp_path / "acl").read_text()
    own = config.cse.cse_id.lstrip("/")
    assert f"pattern write /oneM2M/req/%u/{own}/+" in acl and f"\nuser {own}\n" in acl
    assert (tmp_path / "passwd").read_text().startswith(f"{own}:$7$")
    # The files the entry point copies are where mosquitto.conf reads them.
    shipped = (MOSQUITTO / "mosquitto.conf").read_text()
    entrypoint = (MOSQUITTO / "entrypoint.sh").read_text()
    for name in ("passwd", "acl", "mosquitto.pem", "mosquitto.key"):
        assert f"/mosquitto/secrets/{name}" in shipped
        assert name in entrypoint
    # HTTPS with mutual TLS to the head-end, on the files of the compose's tls volume.
    assert config.upstream.url == "https://headend:8080"
    assert config.cse.http.tls is not None and config.upstream.cert_file
    assert config.cse.http.tls.cert.startswith("/etc/gridm2m/tls/")
    assert "tls:/etc/gridm2m/tls:ro" in compose
    check = dockerfile_healthcheck("gateway.Dockerfile")
    assert check[-1] == f"http://127.0.0.1:{config.ops.port}/health"
    # The image's own config file (configs/gateway.toml) agrees on the ports it publishes.
    shipped_config = load_gateway_config(ROOT / "configs" / "gateway.toml", environ={})
    exposed = (DOCKER / "gateway.Dockerfile").read_text()
    for port in (
        f"{shipped_config.cse.http.port}/tcp",
        f"{shipped_config.ops.port}/tcp",
        "5683/udp",
    ):
        assert port in exposed


def test_compose_headend_config_matches_the_image_health_check() -> None:
    environ = dockerfile_env("headend.Dockerfile")
    for path in (DOCKER / "config" / "headend.toml", ROOT / "configs" / "headend.toml"):
        config = load_headend_config(path, environ=environ)
        check = dockerfile_healthcheck("headend.Dockerfile")
        assert check[2:] == [f"http://127.0.0.1:{config.dashboard.port}/health"]
        assert (config.cse.http.host, config.dashboard.host) == ("0.0.0.0", "0.0.0.0")


def test_the_build_context_has_the_packages_and_no_secrets() -> None:
    """The Dockerfiles COPY the whole context: .dockerignore decides what is in it."""
    ignored = set((ROOT / ".dockerignore").read_text().split("\n"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    for kept in [*packages, "configs", "pyproject.toml", "README.md"]:
        assert kept not in ignored, kept
    assert "!docker/healthcheck.py" in ignored  # the one file of docker/ the images need
    for secret in ["docker", "**/.env", "**/*.env", ".venv", ".git", "**/*.db", "pki", "**/*.key"]:
        assert secret in ignored, secret


def published_ports() -> dict[str, list[str]]:
    """Each compose service's published ports, as written ([host address:]host:container)."""
    ports: dict[str, list[str]] = {}
    for line in (DOCKER / "compose.yaml").read_text().splitlines():
        service = re.match(r"^  ([a-z][a-z0-9-]*):$", line)
        if service:
            current = service.group(1)
        published = re.match(r'^\s+- "([0-9.:]+/?[a-z]*)"', line)
        if published and ":" in published.group(1):
            ports.setdefault(current, []).append(published.group(1))
    return ports


def test_compose_publishes_only_what_must_be_reached() -> None:
    ports = published_ports()
    # Meters reach the broker and the gateway's CoAP; a head-end elsewhere the gateway's HTTPS.
    assert ports["mosquitto"] == ["8883:8883"]
    assert sorted(ports["gateway"]) == ["127.0.0.1:9110:9110", "5683:5683/udp", "8081:8081"]
    # The operator's dashboard on this host only; the IN-CSE on the compose network only.
    assert ports["headend"] == ["127.0.0.1:8090:8090"]
    assert "fleet" not in ports and "tls" not in ports


def test_compose_scale_out_profile_runs_workers_on_one_database_without_a_password_in_files() -> (
    None
):
    import yaml

    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    profile = {name for name, s in services.items() if "scale-out" in s.get("profiles", [])}
    assert profile == {"postgres", "headend-main", "headend-worker"}
    main, worker = services["headend-main"], services["headend-worker"]
    config_file = "/etc/gridm2m/compose/headend-scale-out.toml"
    assert main["command"] == ["headend", "--config", config_file]
    assert worker["command"] == ["headend", "--config", config_file, "--worker"]
    assert worker["deploy"]["replicas"] >= 2
    # The password reaches libpq from an environment file, never from the config.
    for name in profile:
        assert services[name]["env_file"] == "./secrets/postgres.env"
    text = (DOCKER / "config" / "headend-scale-out.toml").read_text()
    config = load_headend_config(
        DOCKER / "config" / "headend-scale-out.toml", environ=dockerfile_env("headend.Dockerfile")
    )
    assert config.cse.scale_out
    assert config.cse.db.startswith("postgresql://gridm2m@postgres")
    assert ":" not in config.cse.db.split("//", 1)[1].split("@", 1)[0]

    def keys(table: dict[str, object]) -> list[str]:
        return [
            k for key, v in table.items() for k in (key, *(keys(v) if isinstance(v, dict) else []))
        ]

    assert not [key for key in keys(tomllib.loads(text)) if "password" in key]
    # Nothing of the profile is published but the dashboard, on this host only.
    ports = published_ports()
    assert ports["headend-main"] == ["127.0.0.1:8090:8090"]
    assert "headend-worker" not in ports and "postgres" not in ports
