"""Soak: honest meters and a hostile client share one gateway for minutes; nothing may give.

    python -m bench.bench_soak [--meters 2000] [--duration 300] [--rate 100]
    python -m bench.bench_soak --quick                 # 200 meters, 60 s
    python -m bench.bench_soak --meters 20 --duration 10 --json out.json

A real `gridm2m headend` and `gridm2m gateway` (gridm2m.processes.Stack: HTTPS with mutual
TLS between them, the gateway's CoAP listener with trust "claimed", as a lab gateway whose
meters have no keys) run with every per-client limit at its shipped default; only the
registration burst is raised to the fleet's size, so that the honest meters can all
register at the start (a gateway installed for that many meters).

Honest load, from this process (bench.rawcoap, each meter its own UDP socket and one exchange
at a time): --meters meters register (AE, containers `reading` and `event`), then post at a
steady --rate messages/s in all, each meter every meters/rate seconds at its own phase;
every --alarm-every-th message of a meter is a power alarm to `event`, the rest interval
reads to `reading`. A message not acknowledged (timeout, 5xxx) is sent again with the same
request ID, as a meter keeps it, up to 5 times. Its latency runs from when it was due.

Hostile load, from its own process (bench/soak_hostile.py, so that its CPU does not distort
the honest figures): junk datagrams, oversize content, exhausting AEs, containers and
subscriptions, SSRF subscriptions, discovery over the whole tree, impersonation; in rotation,
as fast as the gateway answers (--hostile-workers exchanges at a time).

Every --sample seconds: the gateway's VmRSS, open file descriptors and CPU, its data on
disk (CSE database with WAL, outbox, credential store) and log, /health (status, CoAP
watchdog restarts), the outbox depth, the honest messages acknowledged in the window with
their p99 latency, and the hostile requests answered in the window by answer.

At the end the run waits for the MDMS to hold every acknowledged honest message, then
compares them by key (meter, flow, seq) with what the head-end's /api/messages returns:
lost and duplicated must both be 0. A verdict line per check; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

if __package__ in (None, ""):  # run as ``python bench/bench_soak.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_coap_mqtt import cpu_seconds
from bench.bench_gateway import (
    ALARM_FLOW,
    BULK_FLOW,
    CSE_NAME,
    CoapLoad,
    QuietCreate,
    interval_body,
    meter_names,
    percentile,
    register_coap,
    rss_mb,
)
from bench.rawcoap import CREATED, CoapPeer
from bench.soak_hostile import ATTACKS
from gridm2m.broker import free_port
from gridm2m.processes import Stack, get_json, pinned_client

HOSTILE_CREDENTIAL = "intruder"  # the hostile's own device certificate on the gateway's HTTPS
ATTEMPTS = 5  # sends of one honest message before the meter gives up on it
SETTLE_S = 60.0  # how long the MDMS may show no progress before the comparison starts


def _log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


# ---- honest meters ---------------------------------------------------------------------------


@dataclass
class Honest:
    """What the honest meters sent and what the gateway acknowledged."""

    acknowledged: dict[str, set[tuple[str, int]]] = field(default_factory=lambda: defaultdict(set))
    done: list[tuple[float, float]] = field(default_factory=list)  # (finished, latency s)
    given_up: list[tuple[float, str]] = field(default_factory=list)  # (when, meter)
    resends: int = 0
    answers: Counter[int] = field(default_factory=Counter)  # CoAP codes of unacknowledged sends


def alarm_body(seq: int) -> bytes:
    message = {"flow": ALARM_FLOW, "type": "alarm", "seq": seq, "ts": time.time()}
    content = orjson.dumps(message).decode()
    return orjson.dumps({"m2m:cin": {"cnf": "application/json:0", "con": content}})


async def run_meter(
    load: CoapLoad,
    peer: CoapPeer,
    meter: str,
    first_due: float,
    period: float,
    end: float,
    alarm_every: int,
    honest: Honest,
) -> None:
    """One meter: a message every `period` seconds from `first_due` until `end`."""
    origin = f"C{meter}"
    due = first_due
    seq = 0
    while due < end:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        seq += 1
        if seq % alarm_every == 0:
            flow, family, body = ALARM_FLOW, "event", alarm_body(seq)
        else:
            flow, family, body = BULK_FLOW, "reading", interval_body(seq, 300)
        template = QuietCreate([CSE_NAME, meter, family], origin, body)
        for attempt in range(ATTEMPTS):
            code = await load.post(peer, template, f"{meter}-{seq}")
            if code == CREATED:
                now = time.monotonic()
                honest.acknowledged[meter].add((flow, seq))
                honest.done.append((now, now - due))
                break
            honest.answers[code] += 1
            if attempt < ATTEMPTS - 1:
                honest.resends += 1
                await asyncio.sleep(1.0 + attempt)  # a meter's backoff before sending again
        else:
            honest.given_up.append((time.monotonic(), meter))
        due += period


# ---- the hostile process ---------------------------------------------------------------------


class HostileProcess:
    """bench/soak_hostile.py as a child process; keeps its latest cumulative counts."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(
        self, stack: Stack, duration: float, workers: int, attacks: str, log: Path
    ) -> None:
        args = [
            "--coap-port", str(stack.coap_port),
            "--https-url", stack.gateway_url,
            "--ops-port", str(stack.ops_port),
            "--headend-url", stack.headend_url,
            "--free-port", str(free_port()),
            "--pki", str(stack.pki_dir),
            "--credential", HOSTILE_CREDENTIAL,
            "--duration", str(duration),
            "--workers", str(workers),
            "--attacks", attacks,
        ]  # fmt: skip
        with log.open("ab") as errors:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.soak_hostile", *args,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=errors,
            )  # fmt: skip
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            with contextlib.suppress(ValueError):
                self.counts = orjson.loads(line)["counts"]

    async def wait(self) -> int:
        if self.process is None:
            return 0
        if self._reader is not None:
            await self._reader
        return await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


def answers_total(counts: dict[str, dict[str, int]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for answers in counts.values():
        total.update(answers)
    return total


def short_answer(answer: str) -> str:
    """`rsc 4103` -> `4103`, `coap 4.13` -> `4.13`."""
    return answer.split(" ", 1)[1] if answer.startswith(("rsc ", "coap ", "http ")) else answer


# ---- sampling ---------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    rss_mb: float
    fds: int
    cpu_pct: float  # of one core, since the previous sample
    db_mb: float  # the CSE database with its WAL and shared memory, the credential store
    outbox_mb: float
    log_kb: float
    health: int  # HTTP status of /health, 0 when it did not answer
    coap_alive: bool
    coap_restarts: int
    problems: list[str]
    outbox_depth: int
    acked: int  # honest messages acknowledged in the window
    p99_ms: float  # their latency
    given_up: int  # honest messages given up in the window
    hostile: dict[str, int]  # hostile answers in the window


def file_bytes(directory: Path, prefix: str, exclude: str = "\0") -> int:
    total = 0
    for entry in directory.iterdir():
        if entry.name.startswith(prefix) and exclude not in entry.name:
            with contextlib.suppress(OSError):
                total += entry.stat().st_size
    return total


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


_DEPTH = re.compile(r'^gridm2m_outbox_depth\{priority="\w+"\} (\S+)$', re.M)


async def outbox_depth(session: aiohttp.ClientSession, stack: Stack) -> int:
    try:
        async with session.get(stack.health_url.replace("/health", "/metrics")) as reply:
            text = await reply.text()
    except (aiohttp.ClientError, TimeoutError):
        return -1
    return sum(int(float(value)) for value in _DEPTH.findall(text))


async def health_of(session: aiohttp.ClientSession, stack: Stack) -> tuple[int, dict[str, Any]]:
    try:
        async with session.get(stack.health_url) as reply:
            return reply.status, await reply.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return 0, {}


class Sampler:
    def __init__(
        self, stack: Stack, session: aiohttp.ClientSession, honest: Honest, hostile: HostileProcess
    ) -> None:
        self.stack = stack
        self.session = session
        self.honest = honest
        self.hostile = hostile
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self._done_seen = 0
        self._given_up_seen = 0
        self._hostile_seen: Counter[str] = Counter()
        self._cpu = (self.started, cpu_seconds(self.pid))

    @property
    def pid(self) -> int:
        return self.stack.gateway.process.pid

    async def take(self) -> Sample:
        stack, now = self.stack, time.monotonic()
        status, health = await health_of(self.session, stack)
        coap = health.get("bindings", {}).get("coap", {})
        done = self.honest.done[self._done_seen :]
        self._done_seen += len(done)
        given_up = len(self.honest.given_up) - self._given_up_seen
        self._given_up_seen += given_up
        hostile_total = answers_total(self.hostile.counts)
        window = hostile_total - self._hostile_seen
        self._hostile_seen = hostile_total
        cpu = cpu_seconds(self.pid)
        cpu_pct = 100 * (cpu - self._cpu[1]) / max(1e-6, now - self._cpu[0])
        self._cpu = (now, cpu)
        directory = stack.directory
        sample = Sample(
            t=now - self.started,
            rss_mb=rss_mb(self.pid),
            fds=open_fds(self.pid),
            cpu_pct=cpu_pct,
            db_mb=file_bytes(directory, "id-dap1", exclude="outbox") / 1e6,
            outbox_mb=file_bytes(directory, "id-dap1-outbox") / 1e6,
            log_kb=file_bytes(directory, "gateway.log") / 1e3,
            health=status,
            coap_alive=bool(coap.get("alive", False)),
            coap_restarts=int(coap.get("restarts", 0)),
            problems=list(health.get("problems", [])),
            outbox_depth=await outbox_depth(self.session, stack),
            acked=len(done),
            p99_ms=1000 * percentile([latency for _, latency in done], 0.99),
            given_up=given_up,
            hostile={short_answer(a): n for a, n in sorted(window.items()) if n},
        )
        self.samples.append(sample)
        return sample

    async def run(self, every: float) -> None:
        print_header()
        while True:
            await asyncio.sleep(every)
            print_sample(await self.take())


COLUMNS = (
    f"{'t s':>6} {'RSS MB':>7} {'fds':>5} {'CPU%':>5} {'db MB':>7} {'outbox MB':>9} "
    f"{'log KB':>7} {'health':>6} {'coap':>5} {'depth':>6} {'acked':>6} {'p99 ms':>7} "
    f"{'gave up':>7}  hostile answers in the window"
)


def print_header() -> None:
    print("\nTime series (each row: the window since the row before)")
    print(COLUMNS, flush=True)


def print_sample(s: Sample) -> None:
    coap = ("up" if s.coap_alive else "DOWN") + (f"/{s.coap_restarts}r" if s.coap_restarts else "")
    hostile = " ".join(f"{answer}:{count}" for answer, count in s.hostile.items())
    print(
        f"{s.t:6.0f} {s.rss_mb:7.1f} {s.fds:5d} {s.cpu_pct:5.0f} {s.db_mb:7.2f} "
        f"{s.outbox_mb:9.2f} {s.log_kb:7.1f} {s.health:6d} {coap:>5} {s.outbox_depth:6d} "
        f"{s.acked:6d} {s.p99_ms:7.1f} {s.given_up:7d}  {hostile}",
        flush=True,
    )


# ---- the comparison with the MDMS -----------------------------------------------------------


async def mdms_honest_count(session: aiohttp.ClientSession, stack: Stack) -> int:
    counts = await get_json(session, f"{stack.dashboard}/api/counts", stack.api_headers)
    if not isinstance(counts, dict):
        return -1
    by_flow = counts.get("by_flow", {})
    return int(by_flow.get(BULK_FLOW, 0)) + int(by_flow.get(ALARM_FLOW, 0))


async def wait_for_mdms(session: aiohttp.ClientSession, stack: Stack, wanted: int) -> float:
    """Seconds until the MDMS holds at least `wanted` honest messages, or it stopped moving."""
    started = time.monotonic()
    moved, last = started, -2
    while True:
        found = await mdms_honest_count(session, stack)
        if found >= wanted:
            return time.monotonic() - started
        if found != last:
            moved, last = time.monotonic(), found
        elif time.monotonic() - moved > SETTLE_S:
            _log(f"the MDMS stopped at {found} of {wanted} honest messages")
            return time.monotonic() - started
        await asyncio.sleep(0.5)  # polling another process's count


@dataclass
class Comparison:
    acknowledged: int = 0
    lost: int = 0
    duplicated: int = 0
    unacknowledged_stored: int = 0  # at the MDMS although the meter never got the 2.01
    lost_examples: list[str] = field(default_factory=list)
    duplicate_examples: list[str] = field(default_factory=list)


async def compare(
    session: aiohttp.ClientSession, stack: Stack, meters: Sequence[str], honest: Honest
) -> Comparison:
    """Every acknowledged (flow, seq) of every meter against the MDMS's messages by key."""
    result = Comparison()
    gate = asyncio.Semaphore(8)

    async def one(meter: str) -> None:
        url = f"{stack.dashboard}/api/messages?meter={meter}&limit=10000"
        async with gate:
            found = await get_json(session, url, stack.api_headers)
        messages = found.get("messages", []) if isinstance(found, dict) else []
        stored = Counter((str(m["flow"]), int(m["seq"])) for m in messages if m.get("seq"))
        acked = honest.acknowledged.get(meter, set())
        result.acknowledged += len(acked)
        for key in sorted(acked - set(stored)):
            result.lost += 1
            result.lost_examples.append(f"{meter} {key[0]} seq {key[1]}")
        for key, count in stored.items():
            if count > 1:
                result.duplicated += count - 1
                result.duplicate_examples.append(f"{meter} {key[0]} seq {key[1]} x{count}")
            if key not in acked:
                result.unacknowledged_stored += 1

    await asyncio.gather(*(one(meter) for meter in meters))
    return result


# ---- verdicts ---------------------------------------------------------------------------------


def growth(samples: Sequence[Sample], value: str) -> tuple[float, float, float]:
    """(first, at half time, last) of a sampled figure."""
    values = [float(getattr(s, value)) for s in samples]
    return values[0], values[len(values) // 2], values[-1]


def trend(first: float, half: float, last: float) -> str:
    """How the second half grew compared with the first."""
    early, late = half - first, last - half
    if late <= max(0.02 * abs(last), 1e-9):  # within the noise of one sample
        return "flat in the second half"
    if early > 0 and late < 0.5 * early:
        return "levelling off"
    return "STILL GROWING"


def hostile_accepted(counts: dict[str, dict[str, int]], prefix: str) -> int:
    return sum(
        n
        for what, answers in counts.items()
        if what.startswith(prefix)
        for answer, n in answers.items()
        if answer.startswith("rsc 2") or answer.startswith("coap 2.")
    )


def verdicts(
    samples: Sequence[Sample],
    comparison: Comparison,
    honest: Honest,
    hostile: dict[str, dict[str, int]],
    gateway_exit: int | None,
    fill_s: float,
) -> list[tuple[str, str, bool]]:
    """(check, figures, held) for each check."""
    out: list[tuple[str, str, bool]] = []
    c = comparison
    out.append(("lost", f"{c.lost} of {c.acknowledged} acknowledged", c.lost == 0))
    out.append(("duplicated", f"{c.duplicated}", c.duplicated == 0))
    gave_up = len(honest.given_up)
    out.append(
        ("honest served", f"{gave_up} messages given up after {ATTEMPTS} sends, "
         f"{honest.resends} resends", gave_up == 0)
    )  # fmt: skip
    p99s = [s.p99_ms for s in samples if s.acked]
    worst = max(p99s) if p99s else float("nan")
    # Past CoAP's ACK_TIMEOUT (2 s) a meter starts sending its message again.
    out.append(
        ("honest p99 under 2 s", f"worst window {worst:.0f} ms", bool(p99s) and worst < 2000)
    )
    unhealthy = [s for s in samples if s.health != 200]
    problems = sorted({p for s in unhealthy for p in s.problems})
    out.append(
        ("health", f"{len(unhealthy)} of {len(samples)} samples not 200 {problems[:3]}",
         not unhealthy)
    )  # fmt: skip
    down = sum(1 for s in samples if not s.coap_alive)
    restarts = samples[-1].coap_restarts if samples else 0
    out.append(
        ("coap never stalled", f"{down} samples down, {restarts} watchdog restarts",
         down == 0 and restarts == 0)
    )  # fmt: skip
    out.append(("gateway running", f"exit status {gateway_exit}", gateway_exit is None))
    for name, prefix in (
        ("ssrf refused", "ssrf/"),
        ("impersonation refused", "impersonate/"),
        ("oversize refused", "oversize/"),
    ):
        accepted = hostile_accepted(hostile, prefix)
        tried = sum(sum(a.values()) for w, a in hostile.items() if w.startswith(prefix))
        out.append((name, f"{accepted} of {tried} accepted", tried > 0 and accepted == 0))
    # What the shipped limits let one client make in this run: new AEs (the burst left after
    # the honest meters, then 600 a minute), resources under one AE (16).
    duration = samples[-1].t if samples else 0.0
    allowed = {
        "exhaust/new AE": 100 + int(duration * 600 / 60) + 10,
        "exhaust/container": 16,
        "exhaust/subscription": 16,
    }
    for what, most in allowed.items():
        answers = hostile.get(what, {})
        refused = sum(n for a, n in answers.items() if a == "rsc 5207")
        created = sum(n for a, n in answers.items() if a == "rsc 2001")
        figures = f"{created} created (the limits allow {most}), {refused} refused"
        out.append((f"limit: {what[8:]}", figures, created <= most))
    if len(samples) >= 3:
        for label, value, unit in (("RSS", "rss_mb", "MB"), ("open fds", "fds", "")):
            first, half, last = growth(samples, value)
            shape = trend(first, half, last)
            figures = f"{first:.1f} -> {half:.1f} -> {last:.1f} {unit} ({shape})"
            out.append((f"bounded: {label}", figures, shape != "STILL GROWING"))
        out.extend(bounded_files(samples, fill_s))
    return out


def bounded_files(samples: Sequence[Sample], fill_s: float) -> list[tuple[str, str, bool]]:
    """The database grows until every container holds its mni (32) instances, the log by the
    repeat filter's summaries: judged against those bounds, not flatness."""
    out = []
    first, half, last = growth(samples, "db_mb")
    shape = trend(first, half, last)
    figures = f"{first:.1f} -> {half:.1f} -> {last:.1f} MB ({shape}"
    if shape == "STILL GROWING":
        figures += f"; the meters' containers are full after ~{fill_s:.0f} s at this rate)"
        out.append(("bounded: database", figures, samples[-1].t < fill_s))
    else:
        out.append(("bounded: database", figures + ")", True))
    first, half, last = growth(samples, "outbox_mb")
    shape = trend(first, half, last)
    figures = f"{first:.1f} -> {half:.1f} -> {last:.1f} MB ({shape})"
    out.append(("bounded: outbox", figures, shape != "STILL GROWING"))
    first, half, last = growth(samples, "log_kb")
    seconds = samples[-1].t - samples[len(samples) // 2].t
    per_day = (last - half) / max(seconds, 1e-6) * 86400 / 1000
    figures = f"{first:.1f} -> {half:.1f} -> {last:.1f} KB, {per_day:.1f} MB a day at the end"
    out.append(("bounded: log", figures, per_day < 10))  # rotation keeps a few days of this
    return out


def print_hostile(counts: dict[str, dict[str, int]]) -> None:
    print("\nHostile requests by answer (the whole run)")
    for what in sorted(counts):
        answers = ", ".join(f"{a}: {n}" for a, n in sorted(counts[what].items()))
        print(f"  {what:<34} {answers}")


# ---- the run ----------------------------------------------------------------------------------


@dataclass
class Options:
    meters: int
    duration: float
    rate: float
    alarm_every: int
    sample: float
    hostile_workers: int
    attacks: str
    hostile: bool
    workdir: Path | None
    json_path: Path | None


async def soak(options: Options, directory: Path) -> dict[str, Any]:
    meters = meter_names(options.meters)
    stack = Stack(
        directory,
        coap_trust="claimed",  # a lab gateway: the honest meters are lean plain-CoAP clients
        # A gateway installed for this many meters lets them all register at once; every
        # other limit stays at the shipped default.
        gateway_extra={"cse": {"limits": {"registration_burst": options.meters + 100}}},
    )
    honest = Honest()
    hostile = HostileProcess()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await stack.start(session)
        try:
            _log(f"gateway pid {stack.gateway.process.pid}, work directory {directory}")
            async with CoapLoad(stack.coap_port) as load:
                failures = await register_coap(load, meters, 64)
                _log(f"{len(meters)} meters registered ({failures} failures)")
                pinned_client(stack.pki_dir, stack.gateway_store, HOSTILE_CREDENTIAL)
                peers = await load.peers(len(meters))
                sampler = Sampler(stack, session, honest, hostile)
                if options.hostile:
                    await hostile.start(
                        stack, options.duration, options.hostile_workers, options.attacks,
                        directory / "hostile.log",
                    )  # fmt: skip
                start = time.monotonic()
                end = start + options.duration
                period = len(meters) / options.rate
                sampling = asyncio.create_task(sampler.run(options.sample))
                await asyncio.gather(
                    *(
                        run_meter(
                            load, peer, meter, start + period * n / len(meters), period, end,
                            options.alarm_every, honest,
                        )
                        for n, (meter, peer) in enumerate(zip(meters, peers, strict=True))
                    )
                )  # fmt: skip
                hostile_exit = await hostile.wait()
                if hostile_exit:
                    _log(f"the hostile client exited with {hostile_exit}; see hostile.log")
                sampling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampling
                print_sample(await sampler.take())
                await asyncio.gather(*(peer.close() for peer in peers))
            acked = sum(len(keys) for keys in honest.acknowledged.values())
            settle_s = await wait_for_mdms(session, stack, acked)
            comparison = await compare(session, stack, meters, honest)
            gateway_exit = stack.gateway.process.returncode
        finally:
            await hostile.stop()
            await stack.stop()
    print_hostile(hostile.counts)
    # Interval reads fill each meter's `reading` container (mni 32) first.
    reads_per_s = options.rate * (1 - 1 / options.alarm_every)
    fill_s = 32 * options.meters / reads_per_s
    checks = verdicts(sampler.samples, comparison, honest, hostile.counts, gateway_exit, fill_s)
    print(f"\nAll acknowledged messages at the MDMS {settle_s:.1f} s after the load ended")
    print(f"stored at the MDMS without an acknowledgement: {comparison.unacknowledged_stored}")
    for example in comparison.lost_examples[:10] + comparison.duplicate_examples[:10]:
        print(f"  {example}")
    print("\nVerdicts")
    for name, figures, held in checks:
        print(f"VERDICT {name}: {figures} -> {'held' if held else 'FAILED'}")
    return {
        "options": {k: str(v) for k, v in asdict(options).items()},
        "samples": [asdict(s) for s in sampler.samples],
        "comparison": asdict(comparison),
        "honest": {
            "acknowledged": acked,
            "given_up": len(honest.given_up),
            "resends": honest.resends,
            "answers_not_created": {str(k): v for k, v in honest.answers.items()},
        },
        "hostile": hostile.counts,
        "hostile_exit": hostile_exit,
        "verdicts": [{"check": n, "figures": f, "held": h} for n, f, h in checks],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meters", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    parser.add_argument("--quick", action="store_true", help="200 meters for 60 s")
    parser.add_argument("--rate", type=float, default=100.0, help="honest messages/s, all meters")
    parser.add_argument("--alarm-every", type=int, default=10, help="every Nth message an alarm")
    parser.add_argument("--sample", type=float, default=0.0, help="seconds between samples")
    parser.add_argument("--hostile-workers", type=int, default=4)
    parser.add_argument("--no-hostile", action="store_true", help="honest meters only")
    parser.add_argument(
        "--attacks", default=",".join(ATTACKS), help=f"a subset of {','.join(ATTACKS)}"
    )
    parser.add_argument("--workdir", type=Path, help="keep the processes' files here")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.meters, args.duration = 200, 60.0
    sample = args.sample or max(1.0, min(10.0, args.duration / 12))
    options = Options(
        meters=args.meters,
        duration=args.duration,
        rate=min(args.rate, args.meters * 2.0),  # a meter sends at most every 0.5 s
        alarm_every=args.alarm_every,
        sample=sample,
        hostile_workers=args.hostile_workers,
        attacks=args.attacks,
        hostile=not args.no_hostile,
        workdir=args.workdir,
        json_path=args.json,
    )
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    hostile = (
        f"{options.hostile_workers} workers ({options.attacks})" if options.hostile else "none"
    )
    print(
        f"Soak: {options.meters} meters, {options.rate:g} messages/s for {options.duration:g} s, "
        f"hostile: {hostile}; "
        f"load average {os.getloadavg()[0]:.2f} at the start",
        flush=True,
    )
    with contextlib.ExitStack() as cleanup:
        if options.workdir is not None:
            directory = options.workdir
        else:
            directory = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        result = asyncio.run(soak(options, directory))
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
