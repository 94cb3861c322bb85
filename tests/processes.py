"""Start real `gridm2m` processes for tests and find where they listen."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

_LISTENING = re.compile(r"listening on (https?://\S+)")


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
