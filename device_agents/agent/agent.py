"""`Agent`: one meter as a oneM2M ADN-AE - its schedule, its outbox and its link to the DAP.

    agent = Agent(config)              # config.json content (docs/agents.md)
    await agent.run()                  # start (retried until the DAP answers), then forever
    agent.stop()                       # from another task: run() closes the link and returns

The meter lives on an accelerated clock: meter time = start + elapsed x clock_speed, where
elapsed comes from `clock.now_ms()` (default: the ticks clock). Each step the meter's due
flows go into the store, and the store is sent in priority order while the link is up. A
LinkError (or a 5xxx) keeps the message and backs off (1 s doubling to 60 s, +-25 %); 4xxx
drops it (counted in `refused`), except 4004 or 4103 once per message, which registers again
first (a DAP that lost the AE answers 4103, as ACME does; a lost container is 4004). Commands
arrive as notifications of the `command` container; the meter's answers go straight into the
store and wake the loop.

`clock` is any object with `now_ms()` (monotonic milliseconds); if it also has an async
`sleep_ms(ms)` the agent sleeps through it, so a test or the fleet can run days of meter time
without waiting (a virtual clock). `step()` is one pass of the loop, for tests that drive
the agent themselves.

Config keys besides those of docs/agents.md, all optional: start_ts (meter time at start,
epoch seconds; default the real time), tick_ms (1000: how often the loop looks at the
schedule), buffer_bytes (the outbox's RAM budget: 6144 on MicroPython, 16384 on CPython), prepay
(default: 1 meter in 5, by seed), rate_scale (1: multiplies every scheduled rate, to see rare
events in short runs), rate_floor (0: messages a day that every scheduled random flow sends at
least, so rare rows show up in interop runs), tz_offset_s (0: the meter's local time for the
tables' clock windows), gas_period_h (4 or 6; default by seed), dr_programs (["utl",
"repi"]), backoff_ms (1000), backoff_max_ms (60000), verbose (false).

An ESI (esi.py): config `esi` "meter" makes an electric meter's agent also the ESI inside it;
kind "esi" with `esi` "utility" is a utility ESI, an AE with no meter of its own. Either takes
the interval records of the gas meters in `esi_members` and writes them into its own `esi`
container. A gas meter given a `han` (han.py) hands its interval records to its ESI over it
instead of sending them; its other flows (events) still go to the DAP. (Both are class
attributes until set: a plain meter's heap pays nothing for them.)
"""

import asyncio
import gc
import json
import time

try:
    from . import compat, flows
    from .meter import Meter, Rng
    from .store import Store
except ImportError:
    import compat
    import flows
    from meter import Meter, Rng
    from store import Store

LinkError = compat.LinkError  # the class onem2m raises
const = compat.const
_EPOCH_2000 = const(946684800)
_RECENT = const(16)  # command resource IDs remembered, to drop redelivered notifications
_QUEUED_MAX = const(8)  # commands waiting for the next step


def epoch_now():
    """Unix time in whole seconds, also on ports whose epoch is 2000."""
    now = int(time.time())
    if time.gmtime(0)[0] == 2000:
        now += _EPOCH_2000
    return now


class TicksClock:
    """Monotonic milliseconds from the wrapping ticks counter (call at least every 6 days)."""

    def __init__(self):
        self._last = compat.ticks_ms()
        self._ms = 0

    def now_ms(self):
        ticks = compat.ticks_ms()
        self._ms += compat.ticks_diff(ticks, self._last)
        self._last = ticks
        return self._ms


class Agent:
    """One meter agent; see the module docstring."""

    esi = None
    han = None

    def __init__(self, config, dap=None, clock=None, han=None):
        if compat.IS_MICROPYTHON:
            # Collect after every few KB allocated, not only when the heap is full: garbage
            # freed early leaves fewer holes between live objects, so a 1-2 KB block (a
            # datagram, a piece of a reading) is still found late in a send.
            gc.threshold(4096)
        self.config = config
        self.meter_id = config["meter_id"]
        self.kind = config.get("kind") or "electric"
        self.dap = dap
        self.clock = clock if clock is not None else TicksClock()
        self.speed = config.get("clock_speed") or 1
        self.tick_ms = config.get("tick_ms") or 1000
        self.verbose = bool(config.get("verbose"))
        seed = config.get("seed")
        if seed is None:
            seed = _crc(self.meter_id)
        start_ts = config.get("start_ts")
        self.start_ts = epoch_now() if start_ts is None else int(start_ts)
        self._t0_ms = self.clock.now_ms()
        opt_out = config.get("dr_opt_out_rate")
        if han is not None:  # a gas meter behind an ESI: its schedule goes through the HAN
            self.han = han
            han.enqueue = self._enqueue
        self.meter = (
            None
            if self.kind == "esi"
            else Meter(
                self.kind,
                self.meter_id,
                seed,
                now=self.start_ts,
                prepay=config.get("prepay"),
                opt_out_rate=0.01 if opt_out is None else opt_out,
                rate_scale=config.get("rate_scale") or 1,
                rate_floor=config.get("rate_floor") or 0,
                tz=config.get("tz_offset_s") or 0,
                gas_period_h=config.get("gas_period_h"),
                dr_programs=config.get("dr_programs") or ("utl", "repi"),
            )
        )
        self._cbor = config.get("serialization") == "cbor"
        self.store = Store(
            config.get("buffer_max") or 200,
            config.get("buffer_bytes") or (6144 if compat.IS_MICROPYTHON else 16384),
            config.get("buffer_file"),
        )
        for item in self.store.items():  # restored from flash: continue the sequence
            if self.meter is None or ":" in item[2]:
                continue  # a relayed record carries its gas meter's sequence, not ours
            seq = _decode(item[3]).get("seq")
            if isinstance(seq, int) and seq > self.meter.seq:
                self.meter.seq = seq
        if config.get("esi"):
            try:
                from .esi import Esi
            except ImportError:
                from esi import Esi
            members = config.get("esi_members") or ()
            self.esi = Esi(self.meter_id, config["esi"], members, self.meter_time, self._enqueue)
        self._rng = Rng(seed ^ 0x2545F491)  # backoff jitter, apart from the meter's stream
        self._backoff_min = config.get("backoff_ms") or 1000
        self._backoff_max = config.get("backoff_max_ms") or 60000
        self._backoff = 0
        self._retry_at = None  # clock ms before which nothing is sent
        self._wake = asyncio.Event()
        self._serve_task = None
        self._recent = []
        self._commands = []  # commands waiting for the next step
        self._reregistered = None
        self.connected = False
        self.started = False
        self.link_up = False
        self.running = False
        self._stop = False
        # counters, for tests and the fleet
        self.sent = {}  # flow id -> messages the DAP accepted
        self.sent_total = 0
        self.generated = 0  # messages put into the store
        self.failed = 0  # send attempts that raised LinkError or got 5xxx
        self.refused = 0  # messages the DAP refused (4xxx), dropped
        self.commands = 0  # command notifications handled
        self.outages = 0  # times the link went from up to down
        self.start_failures = 0
        self.memory_errors = 0  # MicroPython: allocations that failed (the message is lost)

    # ---- time -------------------------------------------------------------------------------

    def elapsed_ms(self):
        return self.clock.now_ms() - self._t0_ms

    def meter_time(self):
        """Meter time in epoch seconds: start + elapsed x clock_speed."""
        return self.start_ts + int(self.elapsed_ms() * self.speed) // 1000

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self):
        """Connect, register the AE, create the containers, subscribe to `command`.

        Raises LinkError when the DAP cannot be reached; run() retries it with backoff.
        """
        if self.dap is None:
            try:
                from . import onem2m
            except ImportError:
                import onem2m
            self.dap = onem2m.Dap(self.config)
        self.dap.on_notify = self._on_notify
        if not self.connected:
            await self.dap.connect()
            self.connected = True
        await self.dap.register()
        # The listener runs before the subscription: the DAP may verify the notification
        # target while it creates the subscription.
        if self._serve_task is None or self._serve_task.done():
            self._serve_task = asyncio.create_task(self._serve())
        for family in flows.families(self.kind):
            await self.dap.ensure_container(family)
        if self.esi is not None and self.kind != "esi":
            await self.dap.ensure_container("esi")  # an ESI in this meter: its own container
        if self.meter is not None:  # a utility ESI takes no commands
            await self.dap.ensure_container("command")
            await self.dap.subscribe("command")
        self.started = True
        self._link_ok()
        self._log("registered", self.meter_id)

    async def _serve(self):
        try:
            await self.dap.serve()
        except LinkError as error:
            self._log("serve ended:", repr(error))

    async def run(self, duration=None):
        """Run until stop(), or for `duration` seconds of the clock (not of meter time)."""
        self.running = True
        started = self.clock.now_ms()
        try:
            while not self._stop:
                try:
                    await self.step()
                except MemoryError:  # whatever ran out, the meter runs on (the store keeps)
                    self._out_of_memory("step")
                if duration is not None and self.clock.now_ms() - started >= duration * 1000:
                    break
                if self._stop:
                    break
                await self._sleep(self._wait_ms())
        finally:
            self.running = False
            if self._stop:
                await self.close()

    def stop(self):
        """Make run() return and close the link (for good: a stopped agent stays stopped)."""
        self._stop = True
        self._wake.set()

    async def close(self):
        if self.dap is not None and self.connected:
            try:
                await self.dap.close()
            except (LinkError, OSError) as error:
                self._log("close:", repr(error))
            self.connected = False
        task = self._serve_task
        self._serve_task = None
        if task is not None and not task.done():
            try:
                await compat.wait_for_ms(task, 2000)
            except (compat.TimeoutError, asyncio.CancelledError):
                pass
        self.started = False
        self.link_up = False

    async def step(self):
        """One pass: the meter's due flows into the store, then send while the link is up."""
        if compat.IS_MICROPYTHON:
            gc.collect()  # a bulk read needs a few KB in one piece: free the garbage first
        self._generate()
        if self._commands:
            self._handle_commands()
        if not self._retry_due():
            return
        if not self.started:
            try:
                await self.start()
            except (LinkError, OSError, MemoryError) as error:
                if isinstance(error, MemoryError):
                    self._out_of_memory("start")
                self.start_failures += 1
                self._link_failed(error)
                return
        await self._send()

    def _generate(self):
        """The meter's due flows into the store, each stored as soon as it is built (a long
        step may make several 2 KB reads: 5-7 KB of dicts each). A plain function, not part
        of the step coroutine: MicroPython keeps a coroutine's frame whole while it waits,
        and values left in it (the last message) would stay reachable through the send."""
        if self.meter is None:
            return
        try:
            sink = self._enqueue if self.han is None else self.han.sink
            self.meter.due_flows(self.meter_time(), sink)
        except MemoryError:
            # A full heap loses the rest of this step's scheduled messages, not the meter.
            self._out_of_memory("schedule")

    # ---- sending ----------------------------------------------------------------------------

    async def _send(self):
        while not self._stop:
            item = self.store.peek()
            if item is None:
                return
            body = item[3]
            if item[4] is None:
                # One request ID per message for all its attempts (kept on flash too): when an
                # answer is lost, the DAP's request record turns the retry into no second copy.
                self.store.set_request_id(item, self.dap.next_request_id())
            try:
                # The stored JSON text; the Dap turns it into CBOR where that is the format.
                rsc = await self.dap.post(item[1], body, item[4])
            except (LinkError, OSError) as error:  # a socket error the link let through
                self._link_failed(error)
                return
            except MemoryError as error:  # kept, like any message that did not go
                self._out_of_memory("send")
                self._link_failed(error)
                return
            flow_id = item[2]
            if 2000 <= rsc < 3000:
                self.store.pop(item)
                self.sent[flow_id] = self.sent.get(flow_id, 0) + 1
                self.sent_total += 1
                self._link_ok()
                self._log("sent", flow_id, rsc)
            elif (rsc == 4004 or rsc == 4103) and self._reregistered is not item:
                # The DAP no longer knows the AE or the container: register, then retry.
                self._reregistered = item
                self.started = False
                return
            elif 4000 <= rsc < 5000:
                self.store.pop(item)
                self.refused += 1
                self._log("refused", flow_id, rsc)
            else:
                self._link_failed(rsc)
                return

    def _link_ok(self):
        self.link_up = True
        self._backoff = 0
        self._retry_at = None

    def _link_failed(self, why):
        self.failed += 1
        if self.link_up:
            self.outages += 1
        self.link_up = False
        backoff = self._backoff * 2 if self._backoff else self._backoff_min
        self._backoff = backoff if backoff < self._backoff_max else self._backoff_max
        delay = self._backoff * (75 + self._rng.below(51)) // 100
        self._retry_at = self.clock.now_ms() + delay
        self._log("link down:", repr(why), "retry in", delay, "ms")

    def _retry_due(self):
        return self._retry_at is None or self.clock.now_ms() >= self._retry_at

    def _wait_ms(self):
        wait = self.tick_ms
        if self._retry_at is not None:
            until = self._retry_at - self.clock.now_ms()
            if until < wait:
                wait = until if until > 0 else 0
        return wait

    async def _sleep(self, ms):
        sleep_ms = getattr(self.clock, "sleep_ms", None)
        if sleep_ms is not None:
            await sleep_ms(ms)
            self._wake.clear()
            return
        if not self._wake.is_set():
            try:
                await compat.wait_for_ms(self._wake.wait(), ms)
            except compat.TimeoutError:
                pass
        self._wake.clear()

    def _enqueue(self, family, content, key=None):
        """Into the store, under `key` (default: the flow id; a relayed record's esi.py says)."""
        flow_id = content.get("flow")
        priority = 2
        self.generated += 1
        try:
            flow = flows.get(flow_id)
            if flow is not None:
                priority = flow[flows.PRIORITY]
            # CBOR is stored as the pieces that go out: nothing to convert at send time.
            if self._cbor:
                body = compat.ucbor().dump_parts(content)
            else:
                body = compat.jsonparts().to_json(content)
        except MemoryError:
            self._out_of_memory(flow_id)
            self.store.count_drop([priority, family, key or flow_id, "", None])
            return
        # The request ID comes later.
        self.store.put([priority, family, key or flow_id, body, None])

    # ---- commands ---------------------------------------------------------------------------

    def _on_notify(self, primitive):
        """Dap.on_notify: one NOTIFY from the DAP; the meter's answers go into the store."""
        found = command_of(primitive)
        if found is None:
            return 2000  # not a new command instance (verification, deletion, ...)
        resource_id, command = found
        if len(self._commands) >= _QUEUED_MAX:
            return 5000  # not taken: the DAP sends it again (pn 2)
        if resource_id is not None:
            if resource_id in self._recent:
                return 2000  # redelivered
            self._recent.append(resource_id)
            if len(self._recent) > _RECENT:
                self._recent.pop(0)
        self.commands += 1
        self._commands.append(command)
        self._wake.set()
        return 2000

    def _handle_commands(self):
        """Answer the commands that came since the last step. Here rather than in the
        notification handler, so that a command never adds to the memory of a send in
        flight; on a board the command code is let go again afterwards (compat.unload)."""
        while self._commands:
            try:
                answers = self.meter.handle_command(self._commands[0], self.meter_time())
            except MemoryError:  # kept: tried again next step
                self._out_of_memory("command")
                break
            self._commands.pop(0)
            for family, content in answers:
                self._enqueue(family, content)
            answers = None
        compat.unload("commands")

    def stats(self):
        """The counters as one dict."""
        return {
            "meter_id": self.meter_id,
            "meter_time": self.meter_time(),
            "sent": dict(self.sent),
            "sent_total": self.sent_total,
            "generated": self.generated,
            "failed": self.failed,
            "refused": self.refused,
            "dropped": self.store.dropped,
            "dropped_by_flow": dict(self.store.dropped_by_flow),
            "buffered": len(self.store),
            "commands": self.commands,
            "outages": self.outages,
            "memory_errors": self.memory_errors,
            "link_up": self.link_up,
        }

    def _out_of_memory(self, where):
        self.memory_errors += 1
        print(self.meter_id, "out of memory:", where)  # always: the board is too small

    def _log(self, *args):
        if self.verbose:
            print(self.meter_id, *args)


def command_of(primitive):
    """(resource id or None, command) from a NOTIFY of a new command contentInstance, or None.

    The command is the instance's `con`: a JSON string (decoded here) or already a map (CBOR);
    a `con` that is not JSON is handed to the meter as it is, which answers a command error.
    """
    content = primitive.get("pc") if isinstance(primitive, dict) else None
    if not isinstance(content, dict):
        return None
    signal = content.get("m2m:sgn", content.get("sgn"))
    if not isinstance(signal, dict) or signal.get("vrq") or signal.get("sud"):
        return None
    event = signal.get("nev")
    if not isinstance(event, dict):
        return None
    representation = event.get("rep")
    if not isinstance(representation, dict):
        return None
    instance = representation.get("m2m:cin", representation.get("cin"))
    if not isinstance(instance, dict) or "con" not in instance:
        return None
    con = instance["con"]
    if isinstance(con, (bytes, bytearray)):
        try:
            con = con.decode()
        except UnicodeError:
            pass
    if isinstance(con, str):
        try:
            con = json.loads(con)
        except ValueError:
            pass
    return instance.get("ri"), con


def _decode(body):
    """A stored message as a dict: JSON text, its pieces (jsonparts.to_json), or CBOR pieces."""
    if isinstance(body, list):
        if body and not isinstance(body[0], str):
            try:
                body = compat.ucbor().loads(b"".join(body))
            except ValueError:
                return {}
            return body if isinstance(body, dict) else {}
        body = "".join(body)
    if isinstance(body, (str, bytes)):
        try:
            body = json.loads(body)
        except ValueError:
            return {}
    return body if isinstance(body, dict) else {}


def _crc(text):
    """A stable seed from a meter id (the seed build.py would write: CRC-32, 31 bits)."""
    crc = 0xFFFFFFFF
    for byte in text.encode():
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return (crc ^ 0xFFFFFFFF) & 0x7FFFFFFF
