"""Benchmark targets: CSEs to load, each given by a starter.

A :data:`TargetStarter` takes a private work directory and is a context manager yielding a
:class:`~bench.http_load.Target`; leaving it stops whatever it started.  Three exist:

* :func:`running_target`: a CSE that is already running (``--target URL``); starts nothing;
* :func:`acme_starter`: the ACME CSE in its own virtualenv (:func:`bench.acme.run_acme`);
* :func:`start_gridm2m`: GridM2M's own CSE via the ``gridm2m cse`` command.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from bench.acme import cse_answers, run_acme, stop_process
from bench.http_load import Target

TargetStarter = Callable[[Path], AbstractContextManager[Target]]
"""Starts (or just names) a CSE, given a private work directory; yields the target."""

GRIDM2M_BIN_ENV = "GRIDM2M_BIN"
_ADDRESS_RE = re.compile(r"http://(?:127\.0\.0\.1|localhost|\[::1\]):\d+")


def running_target(
    name: str, base_url: str, *, origin: str = "Cbench", cse_name: str = "cse-in"
) -> TargetStarter:
    """Starter for a CSE that is already running at ``base_url`` (nothing is started)."""

    @contextlib.contextmanager
    def start(_workdir: Path) -> Iterator[Target]:
        yield Target(name, base_url.rstrip("/"), origin=origin, cse_name=cse_name)

    return start


def acme_starter(
    *, db: str | None = None, http: str | None = None, threads: int | None = None
) -> TargetStarter:
    """Starter running ACME (see :func:`bench.acme.run_acme`) in the work directory."""

    @contextlib.contextmanager
    def start(workdir: Path) -> Iterator[Target]:
        with run_acme(workdir, db=db, http=http, threads=threads) as base_url:
            yield Target("acme", base_url)

    return start


# GRIDM2M_BIN overrides the program (e.g. GRIDM2M_BIN="python -m gridm2m").
@contextlib.contextmanager
def start_gridm2m(workdir: Path, *, startup_timeout: float = 30.0) -> Iterator[Target]:
    """Start GridM2M's CSE with its database in ``workdir``; yield it as a target.

    Reads the bound address from the process's stdout (all output is also copied to
    ``<workdir>/gridm2m.out``), waits until ``GET /cse-in`` answers, and stops it on exit.
    """
    program = shlex.split(os.environ.get(GRIDM2M_BIN_ENV, "gridm2m"))
    if not shutil.which(program[0]):
        raise FileNotFoundError(
            f"{program[0]!r} not found; set {GRIDM2M_BIN_ENV} or use "
            "--target URL with a CSE you started yourself"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    # Lab mode, as ACME runs here: claimed AE-IDs are believed, so both answer the same
    # requests (bench/bench_https.py measures what TLS and tokens cost).
    cmd = [*program, "cse", "--http-port", "0", "--db", str(workdir / "cse.db"),
           "--trust", "claimed"]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    found = threading.Event()

    def pump() -> None:  # keeps the pipe drained for the whole run, not just until start-up
        assert proc.stdout is not None
        with open(workdir / "gridm2m.out", "w") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if not found.is_set():
                    lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name="gridm2m-stdout", daemon=True).start()
    try:
        deadline = time.monotonic() + startup_timeout
        base_url = ""
        while not base_url:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"{shlex.join(cmd)} printed no address within {startup_timeout:.0f} s"
                ) from None
            if line is None:
                raise RuntimeError(
                    f"{shlex.join(cmd)} exited ({proc.wait()}) before printing "
                    f"its address; see {workdir / 'gridm2m.out'}"
                )
            if m := _ADDRESS_RE.search(line):
                base_url = m.group(0)
        found.set()
        while not cse_answers(base_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"GridM2M at {base_url} did not answer GET /cse-in")
            time.sleep(0.1)
        yield Target("gridm2m", base_url)
    finally:
        stop_process(proc)
