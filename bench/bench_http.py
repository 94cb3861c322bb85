"""oneM2M HTTP benchmark: contentInstance CREATE and ``la`` RETRIEVE, ours vs. ACME.

Run from the repository root::

    python -m bench.bench_http --acme                # GridM2M (started here) and ACME
    python -m bench.bench_http --target http://127.0.0.1:8080 --acme --duration 10
    python bench/bench_http.py --only-acme --duration 5

"Ours" is the CSE at ``--target URL`` if given, else GridM2M's CSE started here with
``gridm2m cse --http-port 0 --db <workdir>/cse.db --trust claimed`` (lab mode, as ACME
believes claimed originators too; :func:`bench.targets.start_gridm2m`).

Each target gets ``benchAE`` (originator ``Cbench``) with container ``cnt`` and then, in this
fixed order, the scenarios (``--scenarios`` picks a subset by key)::

    create100_c1  create100_c8  create100_c32      CREATE <cin> with 100 chars of content
    create2400_c1 create2400_c8 create2400_c32     ... with 2400 chars
    la_c1         la_c8         la_c32             RETRIEVE <cnt>/la

each one ``wrk -t1 -c<N> -d<duration>s --latency`` run.  All scenarios write to the same
container, so later scenarios see the instances created by earlier ones; the notes under the
table give each target's ``cni`` per scenario.  After a create scenario the run waits until the
CSE has finished the creates it had already accepted.  At the end, the instances found by
discovery are compared with the creates that were acknowledged.

Targets run one after the other, never at the same time; a CSE started here (ACME, or ours with
``--start-gridm2m``) only lives for its own turn.  See :mod:`bench.targets` to add a target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.limits import switch_limits_off

if __package__ in (None, ""):  # run as ``python bench/bench_http.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.acme import DB_ENV, HTTP_ENV, THREADS_ENV, acme_version, ensure_acme_venv
from bench.http_load import (
    Target,
    WrkResult,
    bench_create_cin,
    bench_retrieve_la,
    container_cni,
    count_instances,
    setup_resources,
    wrk_binary,
)
from bench.targets import TargetStarter, acme_starter, running_target, start_gridm2m


@dataclass(frozen=True)
class Scenario:
    """One load pattern: ``kind`` is ``create`` (CIN of ``size`` chars) or ``retrieve`` (la)."""

    key: str
    kind: str
    connections: int
    size: int = 0

    @property
    def label(self) -> str:
        """Human-readable name for the table."""
        what = f"create {self.size} B" if self.kind == "create" else "retrieve la"
        return f"{what} c{self.connections}"


def default_scenarios(
    sizes: Sequence[int] = (100, 2400), connections: Sequence[int] = (1, 8, 32)
) -> list[Scenario]:
    """Creates for each size and concurrency, then ``la`` retrieves for each concurrency."""
    out = [Scenario(f"create{s}_c{c}", "create", c, s) for s in sizes for c in connections]
    out += [Scenario(f"la_c{c}", "retrieve", c) for c in connections]
    return out


@dataclass
class ScenarioResult:
    """A scenario's wrk result plus the container's ``cni`` before and after it."""

    scenario: Scenario
    wrk: WrkResult
    cni_before: int | None
    cni_after: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            **asdict(self.scenario),
            "label": self.scenario.label,
            "cni_before": self.cni_before,
            "cni_after": self.cni_after,
            **self.wrk.to_dict(),
        }


@dataclass
class InstanceCheck:
    """Instances found by discovery vs. creates acknowledged (2xx) during the run."""

    before: int | None
    after: int | None
    acknowledged: int
    cni: int | None
    max_in_flight: int

    @property
    def problems(self) -> list[str]:
        """What does not add up (empty when the CSE kept what it acknowledged)."""
        if self.before is None or self.after is None:
            return ["discovery (fu=1&ty=4) unsupported: acknowledged creates not verified"]
        out = []
        created = self.after - self.before
        if created < self.acknowledged:
            out.append(
                f"LOST WRITES (or a discovery cap): {self.acknowledged} creates acknowledged, "
                f"{created} instances found"
            )
        elif created > self.acknowledged + self.max_in_flight:
            out.append(f"{created} instances found for {self.acknowledged} acknowledged creates")
        if self.cni is not None and self.cni != self.after:
            out.append(f"cni {self.cni} != {self.after} instances found (miscounted cni)")
        return out

    def summary(self) -> str:
        """One line for the report."""
        state = "; ".join(self.problems) or "ok"
        return (
            f"instances {self.before}->{self.after} by discovery, {self.acknowledged} creates "
            f"acknowledged, cni {self.cni}: {state}"
        )


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_busy(interval: float = 1.0) -> float | None:
    """Fraction of all CPUs busy over ``interval`` seconds (Linux ``/proc/stat``), else None.

    Taken before each target: another process using a core skews a two-core benchmark.
    """

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return 1.0 - (idle1 - idle0) / total if total > 0 else None


def _safe_cni(target: Target) -> int | None:
    try:
        return container_cni(target)
    except (OSError, RuntimeError, ValueError):  # cni is informative only: never end the run
        return None


def wait_until_quiet(target: Target, *, interval: float = 0.5, limit: float = 60.0) -> int | None:
    """Poll the container's ``cni`` until two readings ``interval`` s apart agree.

    When wrk stops, a server may still be working through creates it has already read
    (ACME does, for seconds at c32); they must not spill into the next scenario.
    Returns the settled ``cni`` (``None`` if the CSE does not report it).
    """
    deadline = time.monotonic() + limit
    last = _safe_cni(target)
    while last is not None and time.monotonic() < deadline:
        time.sleep(interval)
        now = _safe_cni(target)
        if now == last:
            break
        last = now
    return last


def run_scenarios(
    target: Target,
    scenarios: Sequence[Scenario],
    *,
    duration: float,
    warmup: float = 2.0,
    settle: float = 1.0,
    timeout: float = 10.0,
    cnt_limits: bool = True,
) -> tuple[list[ScenarioResult], InstanceCheck]:
    """Set up the AE and container on ``target`` and run ``scenarios`` in order.

    ``warmup`` seconds of ``la`` retrieves (no state change) precede the first scenario, and
    ``settle`` idle seconds precede each one.  Ends with an :class:`InstanceCheck`.
    """
    limits: dict[str, int | None] = {} if cnt_limits else {"mni": None, "mbs": None}
    setup_resources(target, **limits)
    instances_before = count_instances(target)
    if warmup > 0:
        _log(f"[{target.name}] warm-up: retrieve la c8 for {warmup:g} s")
        bench_retrieve_la(target, connections=8, duration=warmup, timeout=timeout)
    results = []
    for sc in scenarios:
        time.sleep(settle)
        before = _safe_cni(target)
        if sc.kind == "create":
            res, _ = bench_create_cin(
                target, size=sc.size, connections=sc.connections, duration=duration, timeout=timeout
            )
            after = wait_until_quiet(target)
        else:
            res, _ = bench_retrieve_la(
                target, connections=sc.connections, duration=duration, timeout=timeout
            )
            after = _safe_cni(target)
        results.append(ScenarioResult(sc, res, before, after))
        err = f"  errors {res.errors}" if res.errors else ""
        _log(
            f"[{target.name}] {sc.label:<20} {res.rps:9.1f} req/s  p50 {res.p50_ms:8.2f} ms"
            f"  p99 {res.p99_ms:8.2f} ms  cni {before}->{after}{err}"
        )
    creates = [r for r in results if r.scenario.kind == "create"]
    check = InstanceCheck(
        before=instances_before,
        after=count_instances(target),
        acknowledged=sum(r.wrk.requests - r.wrk.non2xx for r in creates),
        cni=_safe_cni(target),
        max_in_flight=sum(r.scenario.connections for r in creates),
    )
    _log(f"[{target.name}] {check.summary()}")
    return results, check


def _fmt_ms(v: float) -> str:
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def format_table(
    results: dict[str, list[ScenarioResult]], checks: dict[str, InstanceCheck] | None = None
) -> str:
    """Side-by-side table: per target req/s, p50, p99 (ms); ratio = first / second req/s."""
    names = list(results)
    by_key = {n: {r.scenario.key: r for r in rs} for n, rs in results.items()}
    scenarios = {r.scenario.key: r.scenario for rs in results.values() for r in rs}
    header = ["scenario"]
    for n in names:
        header += [f"{n} req/s", "p50 ms", "p99 ms"]
    ratio = len(names) == 2
    if ratio:
        header.append(f"ratio {names[0]}/{names[1]}")
    rows = [header]
    notes: list[str] = []
    for key, sc in scenarios.items():
        row = [sc.label]
        rps: list[float | None] = []
        for n in names:
            res = by_key[n].get(key)
            if res is None:
                row += ["-", "-", "-"]
                rps.append(None)
                continue
            w = res.wrk
            row += [f"{w.rps:.1f}" + ("*" if w.errors else ""), _fmt_ms(w.p50_ms)]
            row.append(_fmt_ms(w.p99_ms))
            rps.append(w.rps)
            if w.errors:
                notes.append(
                    f"* {n} {sc.label}: {w.non2xx} non-2xx/3xx, socket errors "
                    f"{w.socket_errors}, of {w.requests} requests"
                )
        if ratio:
            a, b = rps
            row.append(f"{a / b:.2f}" if a is not None and b else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for i, cols in enumerate(rows):
        cells = [cols[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(cols[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for n in names:
        cni = ", ".join(
            f"{r.scenario.key} {r.cni_before}->{r.cni_after}"
            for r in results[n]
            if r.scenario.kind == "create"
        )
        if cni:
            notes.append(f"{n} cni before->after each create: {cni}")
        if checks and n in checks:
            notes.append(f"{n} {checks[n].summary()}")
    return "\n".join(lines + (["", *notes] if notes else []))


def _wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], check=False, capture_output=True, text=True).stdout
    return out.split()[1] if len(out.split()) > 1 else "unknown"


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface."""
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_http",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ours = p.add_mutually_exclusive_group()
    ours.add_argument(
        "--target", metavar="URL", help="base URL of an already running CSE to use as ours"
    )
    ours.add_argument(
        "--start-gridm2m",
        action="store_true",
        help="start GridM2M's CSE with `gridm2m cse` (the default without --target)",
    )
    p.add_argument("--target-name", default="gridm2m", help="column name for --target")
    p.add_argument("--origin", default="Cbench", help="AE originator for --target")
    p.add_argument("--cse-name", default="cse-in", help="CSEBase resource name for --target")
    p.add_argument("--acme", action="store_true", help="also benchmark ACME (started here)")
    p.add_argument("--only-acme", action="store_true", help="benchmark ACME only")
    p.add_argument(
        "--acme-db",
        choices=("tinydb", "memory"),
        help=f"ACME database (default tinydb, its file DB; env {DB_ENV})",
    )
    p.add_argument(
        "--acme-http",
        choices=("wsgi", "flask"),
        help=f"ACME HTTP server (default wsgi = waitress; env {HTTP_ENV})",
    )
    p.add_argument(
        "--acme-threads",
        type=int,
        help=f"ACME waitress request threads (default 1, see bench/acme.py; env {THREADS_ENV})",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of la warm-up per target")
    p.add_argument("--settle", type=float, default=1.0, help="idle seconds before each scenario")
    p.add_argument("--timeout", type=float, default=10.0, help="wrk per-request timeout (s)")
    p.add_argument("--sizes", type=_int_list, default=[100, 2400], help="content sizes")
    p.add_argument("--connections", type=_int_list, default=[1, 8, 32], help="concurrencies")
    p.add_argument("--scenarios", default="", help="keys to run, e.g. create100_c1,la_c8")
    p.add_argument(
        "--no-cnt-limits", action="store_true", help="create the container without mni/mbs"
    )
    p.add_argument("--workdir", type=Path, help="work directory (default: a temporary one)")
    p.add_argument("--keep-workdir", action="store_true", help="do not delete the workdir")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    return p


def _starters(args: argparse.Namespace) -> list[tuple[str, TargetStarter]]:
    """Ours first (``--target`` URL, else GridM2M started here), then ACME if asked for."""
    starters: list[tuple[str, TargetStarter]] = []
    if args.target and not args.only_acme:
        starter = running_target(
            args.target_name, args.target, origin=args.origin, cse_name=args.cse_name
        )
        starters.append((args.target_name, starter))
    elif not args.only_acme:
        starters.append(("gridm2m", start_gridm2m))
    if args.acme or args.only_acme:
        starters.append(
            ("acme", acme_starter(db=args.acme_db, http=args.acme_http, threads=args.acme_threads))
        )
    return starters


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (1 if a target failed)."""
    switch_limits_off()
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM would end the process without unwinding: turn it into SystemExit, so started
    # CSEs are stopped by their context managers.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    starters = _starters(args)
    scenarios = default_scenarios(args.sizes, args.connections)
    if args.scenarios:
        wanted = {k.strip() for k in args.scenarios.split(",") if k.strip()}
        if unknown := wanted - {s.key for s in scenarios}:
            parser.error(f"unknown scenario keys: {', '.join(sorted(unknown))}")
        scenarios = [s for s in scenarios if s.key in wanted]

    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "wrk": _wrk_version(wrk_binary()),
        "cnt_limits": not args.no_cnt_limits,
    }
    if any(name == "acme" for name, _ in starters):
        meta["acme"] = acme_version(ensure_acme_venv())
        meta["acme_db"] = args.acme_db or os.environ.get(DB_ENV, "tinydb")
        meta["acme_http"] = args.acme_http or os.environ.get(HTTP_ENV, "wsgi")
        meta["acme_threads"] = args.acme_threads or int(os.environ.get(THREADS_ENV, "1"))

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gridm2m-bench-"))
    results: dict[str, list[ScenarioResult]] = {}
    checks: dict[str, InstanceCheck] = {}
    failed = False
    try:
        for name, starter in starters:
            busy = cpu_busy()
            meta[f"{name}_cpu_busy_before"] = None if busy is None else round(busy, 2)
            if busy is not None and busy > 0.15:
                _log(f"[{name}] WARNING: CPUs {busy:.0%} busy before the run; figures may suffer")
            t0 = time.monotonic()
            try:
                with starter(workdir / name) as target:
                    _log(f"[{name}] {target.base_url} up after {time.monotonic() - t0:.1f} s")
                    results[name], checks[name] = run_scenarios(
                        target,
                        scenarios,
                        duration=args.duration,
                        warmup=args.warmup,
                        settle=args.settle,
                        timeout=args.timeout,
                        cnt_limits=not args.no_cnt_limits,
                    )
            except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as err:
                _log(f"[{name}] FAILED: {err}")
                failed = True
    finally:
        if args.workdir is None and not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _log(f"work directory kept: {workdir}")

    print()
    print(" ".join(f"{k}={v}" for k, v in meta.items()))
    print(format_table(results, checks))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "meta": meta,
            "results": {n: [r.to_dict() for r in rs] for n, rs in results.items()},
            "instance_checks": {
                n: {**asdict(c), "problems": c.problems} for n, c in checks.items()
            },
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
