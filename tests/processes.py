"""Start real `gridm2m` processes for tests and find where they listen."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

_LISTENING = re.compile(r"listening on (https?://\S+)")
ROOT = Path(__file__).resolve().parents[1]
GUARD = 60.0  # seconds before something that does not happen fails a test (not a wait)


class CSEProcess:
    """`python -m gridm2m cse …` in a subprocess; the URL comes from the line it prints."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""
        self.listening = ""  # the whole line it printed, with every binding's URL

    async def start(self, timeout: float = 20.0) -> str:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gridm2m",
            "cse",
            "--http-port",
            "0",
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.process.stdout.readline()).decode()
                if not line:
                    stderr = await self.process.stderr.read() if self.process.stderr else b""
                    raise RuntimeError(f"CSE exited before listening: {stderr.decode()}")
                match = _LISTENING.search(line)
                if match:
                    self.listening = line
                    self.url = match.group(1)
                    return self.url

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()

    async def stop(self) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.terminate()
        return await self.process.wait()


def db_path(directory: Path) -> str:
    return str(directory / "cse.db")


class MqttCSEProcess:
    """`python -m tests.run_cse_mqtt` (a CSE on a SQLite file of its own, served over a broker),
    ready once it says so. With `worker` (its name and share group) it is one of several
    workers behind an MQTT 5 shared subscription."""

    def __init__(
        self,
        db: Path,
        url: str,
        username: str,
        *,
        worker: tuple[str, str] | None = None,
        password: str | None = None,
        cse_id: str = "/id-in",
        will_delay: int = 1,
    ) -> None:
        self.args = [
            *("--db", str(db), "--mqtt-url", url, "--mqtt-username", username),
            *("--cse-id", cse_id, "--will-delay", str(will_delay)),
        ]
        if worker is not None:
            self.args += ["--worker", worker[0], "--share-group", worker[1]]
        if password is not None:
            self.args += ["--mqtt-password", password]
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.run_cse_mqtt",
            *self.args,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        async with asyncio.timeout(GUARD):
            line = await self.process.stdout.readline()
        if not line.startswith(b"ready"):
            await self.process.wait()
            errors = (await self.process.stderr.read()).decode()
            raise RuntimeError(f"the CSE did not start: {errors}")

    def freeze(self) -> None:
        """SIGSTOP: it still holds its connection, and answers nothing."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    async def kill(self) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()

    async def stop(self) -> int:
        """SIGTERM, and its exit status; a process that does not end within the guard is
        killed and fails the test with what it logged."""
        assert self.process is not None and self.process.stderr is not None
        if self.process.returncode is None:
            self.process.terminate()
        try:
            async with asyncio.timeout(GUARD):
                return await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            logged = (await self.process.stderr.read()).decode(errors="replace")
            raise AssertionError(f"the CSE did not stop on SIGTERM: {logged[-3000:]}") from None
