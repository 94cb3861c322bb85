"""Start the ACME oneM2M CSE (PyPI package ``acmecse``) as a benchmark reference.

ACME is installed once into its own virtualenv, ``$GRIDM2M_BENCH_VENVS/acme`` (default
``bench/.venvs/acme``, gitignored), and started per run with a generated ``acme.ini`` in a
work directory.  :func:`run_acme` is a context manager yielding the CSE's base URL.

Configuration choices, made for a fair create/retrieve benchmark (see ``render_acme_ini``):

* HTTP only, on 127.0.0.1 and a free port; MQTT, CoAP and WebSocket bindings are off.
* CSE-ID ``/id-in``, CSE-Name ``cse-in``, admin originator ``CAdmin``, type IN.
* Database: ``tinydb`` (default) keeps every table in memory and writes the whole table as
  JSON to ``<workdir>/data`` one second after a change (``writeDelay=1``).  That is ACME's file
  database and the closest it has to a durable store (PostgreSQL needs a server); note that a
  CREATE is acknowledged before it reaches disk.  ``memory`` (TinyDB ``MemoryStorage``) can be
  chosen with ``db="memory"`` or ``GRIDM2M_ACME_DB=memory``.  The database is reset at start.
* HTTP server: ``wsgi`` (default) serves ACME's Flask app with waitress, HTTP/1.1 keep-alive,
  and ONE request-processing thread (``threads=1``, ``GRIDM2M_ACME_THREADS``).  ACME's core
  is not safe for concurrent creates into one container: with more threads some creates
  answer HTTP 500 (``KeyError: 'ct'`` in ``CNT._validateChildren``) after the instance was
  stored, and ``cni`` drifts; one thread is also faster here (the GIL serialises the work
  anyway).  ACME's default server, ``flask`` (werkzeug's threaded development server, a
  thread per connection), closes the connection after every response.  Choose with
  ``GRIDM2M_ACME_HTTP``.
* Logging: level ``warning`` to ``<workdir>/logs`` only (no screen logging): the level a
  production deployment would run at, with no per-request lines (ACME's built-in default is
  ``debug``).  Errors, e.g. the 500s above, still land in the log.
* Headless (no console, no text UI), web UI off, statistics off, remote-CSE handling off,
  request recording off (the default).
* Container limits: ACME only applies default ``mni``/``mbs`` when ``[resource.cnt]
  enableLimits`` is true (it is false), and it accepts ``mni=1000000``/``mbs=1000000000``
  given at creation, so 100,000 instances fit in principle.  But with ``mni`` or ``mbs`` set,
  every CREATE re-reads and sorts all of the container's instances, so ACME's create rate
  falls roughly as 1/n with the container size (one connection: about 170/s when empty,
  about 50/s at 2,000 instances).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ACME_SPEC_ENV = "GRIDM2M_ACME_SPEC"
VENVS_ENV = "GRIDM2M_BENCH_VENVS"
DB_ENV = "GRIDM2M_ACME_DB"
HTTP_ENV = "GRIDM2M_ACME_HTTP"
THREADS_ENV = "GRIDM2M_ACME_THREADS"
READY_MARKER = ".gridm2m-ready"
CSE_NAME = "cse-in"
ADMIN_ORIGIN = "CAdmin"


def venvs_dir() -> Path:
    """Folder holding the benchmark's cached virtualenvs (``$GRIDM2M_BENCH_VENVS``)."""
    return Path(os.environ.get(VENVS_ENV) or BENCH_DIR / ".venvs").resolve()


def venv_python(venv: Path) -> Path:
    """The Python interpreter of ``venv``."""
    return venv / "bin" / "python"


def ensure_acme_venv(venv: Path | None = None, *, quiet: bool = True) -> Path:
    """Create ``venv`` with ``pip install acmecse`` unless it is already complete.

    A venv counts as complete once the marker file written after a successful install exists;
    a half-built one is removed and rebuilt.  Returns the venv's Python interpreter.
    """
    venv = venv or venvs_dir() / "acme"
    python = venv_python(venv)
    if (venv / READY_MARKER).is_file() and python.exists():
        return python
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    spec = os.environ.get(ACME_SPEC_ENV, "acmecse")
    started = time.monotonic()
    print(f"[acme] creating virtualenv {venv} with {spec} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", spec]
    res = subprocess.run(pip, check=False, capture_output=quiet, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"pip install {spec} failed:\n{res.stdout}\n{res.stderr}")
    (venv / READY_MARKER).write_text(f"{spec}\n")
    took = time.monotonic() - started
    print(f"[acme] virtualenv ready in {took:.1f} s", file=sys.stderr, flush=True)
    return python


def acme_version(python: Path) -> str:
    """Installed ``acmecse`` version in the venv of ``python``."""
    code = "import importlib.metadata as m; print(m.version('acmecse'))"
    res = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    return res.stdout.strip()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def render_acme_ini(
    workdir: Path, port: int, *, db: str = "tinydb", http: str = "wsgi", threads: int = 1
) -> str:
    """The ``acme.ini`` text for a headless, HTTP-only ACME on 127.0.0.1:``port``."""
    if db not in ("tinydb", "memory"):
        raise ValueError(f"unsupported ACME database type {db!r}")
    if http not in ("wsgi", "flask"):
        raise ValueError(f"unsupported ACME http server {http!r}")
    wsgi = "true" if http == "wsgi" else "false"
    return f"""\
; Generated by bench/acme.py for the GridM2M HTTP benchmark.
[basic.config]
cseType=IN
cseID=id-in
cseName={CSE_NAME}
adminID={ADMIN_ORIGIN}
networkInterface=127.0.0.1
cseHost=127.0.0.1
httpPort={port}
databaseType={db}
logLevel=warning
consoleTheme=dark
consoleType=simple

[cse]
enableRemoteCSE=false

[cse.statistics]
enable=false

[cse.operation.requests]
enable=false

[http]
enable=true
root=/

[http.wsgi]
enable={wsgi}
threadPoolSize={threads}
connectionLimit=100

[mqtt]
enable=false

[coap]
enable=false

[websocket]
enable=false

[database]
resetOnStartup=true

[database.tinydb]
path={workdir / "data"}
writeDelay=1

[resource.cnt]
enableLimits=false

[logging]
enableScreenLogging=false
enableFileLogging=true
path={workdir / "logs"}
level=warning

[console]
headless=true
confirmQuit=false

[textui]
enable=false
startWithTUI=false

[webui]
enable=false

[scripting]
fileMonitoringInterval=0
"""


def cse_answers(base_url: str, timeout: float = 2.0) -> bool:
    """True when ``GET <base_url>/cse-in`` as ``CAdmin`` gets a oneM2M answer: 200 from ACME;
    GridM2M in lab mode answers 4103, since it believes an admin only with a credential."""
    req = urllib.request.Request(
        f"{base_url}/{CSE_NAME}",
        headers={
            "X-M2M-Origin": ADMIN_ORIGIN,
            "X-M2M-RI": "ready",
            "X-M2M-RVI": "3",
            "Accept": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError as refusal:
        return refusal.headers.get("X-M2M-RSC") is not None
    except (urllib.error.URLError, OSError):
        return False


def stop_process(proc: subprocess.Popen[Any], grace: float = 15.0) -> None:
    """Stop ``proc`` (SIGTERM, which ACME handles as shutdown; then SIGKILL)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def run_acme(
    workdir: Path | str,
    *,
    db: str | None = None,
    http: str | None = None,
    threads: int | None = None,
    venv: Path | None = None,
    startup_timeout: float = 90.0,
) -> Iterator[str]:
    """Run ACME with its runtime data in ``workdir``; yield ``http://127.0.0.1:PORT``.

    Creates the ACME venv on first use, writes ``<workdir>/acme.ini``, starts
    ``python -m acmecse --headless`` (stdout/stderr to ``<workdir>/acme.out``), waits until
    ``GET /cse-in`` answers and stops the process on exit.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    python = ensure_acme_venv(venv)
    db = db or os.environ.get(DB_ENV, "tinydb")
    http = http or os.environ.get(HTTP_ENV, "wsgi")
    threads = threads or int(os.environ.get(THREADS_ENV, "1"))
    port = free_port()
    (workdir / "acme.ini").write_text(
        render_acme_ini(workdir, port, db=db, http=http, threads=threads)
    )
    base_url = f"http://127.0.0.1:{port}"
    out_path = workdir / "acme.out"
    cmd = [
        str(python),
        "-m",
        "acmecse",
        "--base-directory",
        str(workdir),
        "--config",
        "acme.ini",
        "--headless",
    ]
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + startup_timeout
        while not cse_answers(base_url):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"ACME exited with {proc.returncode} before answering:\n{_log_tail(out_path)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"ACME did not answer within {startup_timeout:.0f} s:\n{_log_tail(out_path)}"
                )
            time.sleep(0.2)
        yield base_url
    finally:
        stop_process(proc)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="acme-") as tmp, run_acme(tmp) as url:
        print(f"ACME {acme_version(ensure_acme_venv())} answers at {url}/{CSE_NAME}")
