"""The meter model: what a two-way electric meter or a gas C/I meter knows and answers.

State is scaled integers: registers in Wh (electric) or litres (gas), voltage in dV, price
and pre-pay credit in milli-currency. Interval values are a pure function of (seed, interval
index), so the meter keeps no interval history and a multiple-interval read can look back as
far as it likes; the registers are the running sum of the same values. Randomness comes from
one small PRNG per meter, so a seed gives the same meter on MicroPython and CPython.

Commands (the `con` of a contentInstance in the meter's `command` container) are dicts:

  {"cmd": NAME, "id": CORRELATION-ID, ...fields}

`id` (a string of up to 32 characters or an integer) is optional and comes back as `ref` in
the answer; keep it short ("c000123"): the table sizes of acks are 25 bytes. Unknown fields
are refused. Commands, fields and the flows they produce:

  read      src: "hes" (default, the head-end/MDMS) | "ipd" | "ems" (In-Premise Display,
            Customer EMS); n: 1..192 intervals -> multiple-interval read.
            electric: mr-ondemand[-ipd|-ems] (pp-ondemand... on a pre-pay meter),
            with n: mr-multi-interval; gas: gas-interval-<period>.
  switch    op: "connect" | "disconnect" | "status".
            status: pp-switch-state; connect/disconnect: pp-switch-ack + pp-metrology, or
            pp-switch-fail (1 operation in 1000 fails, as the table has it).
  dr        ev: event id (int or short string, required); prog: "utl" (default) | "repi";
            src: "lms" (default) | "dsm"; dur: minutes 1..1440 (60); shed: percent 0..100
            (30); start: epoch seconds (now).
            dr-ack-<src>-<prog>, or dr-optout-<src>-<prog> at the configured opt-out rate.
            While the event runs the meter's load drops by `shed` percent.
  han-join, han-unjoin
            dev: EUI-64 as 16 hex digits (required); by: "utl" | "repi" (who asked).
            han-(un)join-ack-utl|repi (no `by`: -utl), or han-(un)join-err[-utl|-repi]
            (no `by`: the generic row) for a bad device, a full table (8 devices), a device
            not joined, or the table's 1-in-1000 join/un-join failure.
  fw        target: "metrology" | "nic" (required); image: "firmware" (default) | "program";
            ver: version string, 1..16 characters (required); via: "net" (default) | "tool".
            fw-<metrology|nic>-<fw|prog>[-tool] (a NIC program from a field tool has no row
            of its own and answers as fw-nic-prog).
  price     price: milli-currency per kWh, 0..1000000 (required); tier: 0..9 (0).
            The tables have no meter-originated PHEV flow, so the meter records the rate
            (it appears in pp-switch-state) and raises an audit alert (ev-audit-alert,
            tariff activated) as its acknowledgement.

Anything else - an unknown command, an unknown field, a value out of range, a command the
meter kind does not support - answers with the command-error flow of that use case where the
tables have one (mr-ondemand-err..., pp-switch-fail, han-...-err...; an unknown command on
an electric meter: the on-demand read error row), else with an audit alert (ev-audit-alert
carrying `e`). `handle_command` never raises.

Error codes (`e`): the name of the field whose value is wrong, or "cmd" (unknown command),
"field" (unknown field, named in `f`), "kind" (not on this meter kind), "fault" (operation
failed), "full" (HAN table full), "notj" (device not joined), "enrol" (not in that DR
program), "internal".
"""

import math

try:
    from . import flows
except (ImportError, KeyError):
    import flows

HAN_MAX = 8
MAX_N = 192  # two days of 15-minute intervals
DAY = 86400
IV = flows.INTERVAL_S

# (bytes, not tuples: 24 bytes each in the heap.)
# Residential load shape: percent of the meter's base load for each hour of the day.
PROFILE = bytes((55, 50, 48, 47, 48, 55, 75, 95, 90, 80, 75, 75, 78, 78, 80, 88, 100, 125, 140, 135,
           120, 100, 80, 65))  # fmt: skip
# Rooftop PV: percent of peak output for each hour of the day.
SOLAR = bytes((0, 0, 0, 0, 0, 0, 5, 20, 45, 70, 88, 98, 100, 96, 85, 66, 42, 18, 4, 0, 0, 0, 0, 0))
# Gas C/I: percent of base flow for each hour (heating and working hours).
GAS_PROFILE = bytes((60, 55, 55, 55, 60, 80, 110, 130, 130, 120, 115, 110, 105, 105, 110, 115, 120,
               115, 100, 90, 80, 70, 65, 60))  # fmt: skip

# DLMS data-access-result codes, carried as `rc` in command errors.
RC_HARDWARE = 1
RC_UNDEFINED = 4
RC_TYPE = 12


def _mix(a, b):
    """A 32-bit hash of two ints: the deterministic noise of interval values."""
    h = (a * 0x9E3779B1 + b * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    h ^= h >> 12
    h = (h * 0x297A2D39) & 0xFFFFFFFF
    return h ^ (h >> 15)


def _is_int(value):
    # isinstance(True, int) is True on CPython and False on MicroPython: exclude bools on both.
    return isinstance(value, int) and not isinstance(value, bool)


class Rng:
    """xorshift32: the same stream for a seed on every port."""

    def __init__(self, seed):
        self.state = (seed * 2654435761 + 1) & 0xFFFFFFFF or 0x6D2B79F5

    def next(self):
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.state = x
        return x

    def below(self, n):
        return self.next() % n

    def chance(self, p):
        return self.next() < p * 4294967296.0

    def exp(self):
        """An exponential draw with mean 1."""
        return -math.log((self.next() + 1) / 4294967297.0)


def window_seconds(a, b, window, tz=0):
    """Seconds of [a, b) (epoch seconds) that fall inside the daily window (from_h, to_h)."""
    h0, h1 = window
    if b <= a:
        return 0
    if h0 == 0 and h1 == 24:
        return b - a
    la, lb = a + tz, b + tz
    total = 0
    day = la // DAY
    while day * DAY < lb:
        w0 = day * DAY + h0 * 3600
        w1 = day * DAY + h1 * 3600
        lo = la if la > w0 else w0
        hi = lb if lb < w1 else w1
        if hi > lo:
            total += hi - lo
        day += 1
    return total


class Meter:
    """One meter: `due_flows(now)` for its own schedule, `handle_command(cmd)` for the DAP's."""

    def __init__(
        self,
        kind,
        meter_id,
        seed,
        now=0,
        prepay=None,
        opt_out_rate=0.01,
        rate_scale=1,
        tz=0,
        gas_period_h=None,
        dr_programs=("utl", "repi"),
    ):
        if kind not in ("electric", "gas"):
            raise ValueError("kind must be electric or gas")
        self.kind = kind
        self.meter_id = meter_id
        self.seed = seed & 0x7FFFFFFF
        rng = self.rng = Rng(self.seed)
        self.tz = tz
        self.rate_scale = rate_scale
        self.opt_out_rate = opt_out_rate
        self.dr_programs = tuple(dr_programs)
        self.seq = 0
        self.events = 0
        self.commands = 0
        self.now = now
        self.last_k = now // IV
        # electric
        self.prepay = rng.chance(0.2) if prepay is None else bool(prepay)
        self.pv = rng.chance(0.2)
        self.base_wh = 150 + rng.below(300)
        self.pv_wh = 150 + rng.below(350)
        self.wh_del = 1000000 + rng.below(40000000)
        self.wh_rcv = rng.below(5000000) if self.pv else 0
        self.switch = 1
        self.switch_ts = now
        self.credit = 20000 + rng.below(80000) if self.prepay else 0
        self.price = 80 + rng.below(120)
        self.price_tier = 0
        self.dr_events = []  # [ev, start, end, shed], the last few
        self.han = []
        for _ in range(rng.below(3)):
            self.han.append(self._eui(rng))
        self.versions = {
            "metrology-firmware": "3.1." + str(rng.below(20)),
            "metrology-program": "p" + str(10 + rng.below(40)),
            "nic-firmware": "5.2." + str(rng.below(30)),
            "nic-program": "n" + str(1 + rng.below(9)),
        }
        # gas C/I
        if gas_period_h is None:
            gas_period_h = 4 if rng.below(2) else 6
        if gas_period_h not in (4, 6):
            raise ValueError("gas_period_h must be 4 or 6")
        self.gas_period_h = gas_period_h
        self.gas_base_l = 1000 + rng.below(9000)
        self.gas_p = 2000 + rng.below(30000)
        self.gas_vm = 1000000 + rng.below(500000000)
        self.gas_vb = self.gas_vm * 1037 // 1000
        self._sched = self._schedule(now)
        self._last_due = now

    @staticmethod
    def _eui(rng):
        return "000D6F%05X%05X" % (rng.below(0x100000), rng.below(0x100000))

    # ---- values -------------------------------------------------------------------------

    def _hour(self, k):
        return ((k * IV + self.tz) % DAY) // 3600

    def interval_wh(self, k):
        """Wh delivered in 15-minute interval k (k = epoch seconds // 900)."""
        if self.switch == 0 and k * IV >= self.switch_ts:
            return 0
        wh = self.base_wh * PROFILE[self._hour(k)] // 100
        wh = wh * (75 + _mix(self.seed, k) % 51) // 100
        for ev in self.dr_events:
            if ev[1] <= k * IV < ev[2]:
                wh = wh * (100 - ev[3]) // 100
        return wh if wh < 9999 else 9999

    def interval_rcv(self, k):
        """Wh received (exported by rooftop PV) in interval k."""
        if not self.pv:
            return 0
        sun = SOLAR[self._hour(k)]
        if sun == 0:
            return 0
        return self.pv_wh * sun // 100 * (60 + _mix(self.seed ^ 0x5A5A, k) % 41) // 100

    def interval_volt(self, k):
        """Average voltage in interval k, dV."""
        return 2340 + _mix(self.seed ^ 0x3C3C, k) % 121

    def interval_gas(self, k):
        """(measured litres, base-condition litres, gauge Pa, centi-degC) in interval k."""
        h = self._hour(k)
        noise = _mix(self.seed ^ 0x7E7E, k)
        dvm = self.gas_base_l * GAS_PROFILE[h] // 100 * (80 + noise % 41) // 100
        p = self.gas_p + (noise >> 8) % 400 - 200
        tc = 800 + 600 * SOLAR[h] // 100 + (noise >> 16) % 100
        dvb = dvm * (101325 + p) // 101325 * 28815 // (27315 + tc)
        return dvm, dvb, p, tc

    def watts(self, ts):
        """Instantaneous demand in W."""
        return self.interval_wh(ts // IV) * 4 + _mix(self.seed, ts) % 50

    def volts(self, ts):
        return self.interval_volt(ts // IV)

    def register_at(self, k):
        """Wh delivered register at the start of interval k."""
        wh = self.wh_del
        for j in range(k if k > self.last_k - 5000 else self.last_k - 5000, self.last_k):
            wh -= self.interval_wh(j)
        return wh

    def gas_index_at(self, k):
        """(Vm, Vb) indexes in litres at the start of interval k."""
        vm, vb = self.gas_vm, self.gas_vb
        for j in range(k if k > self.last_k - 5000 else self.last_k - 5000, self.last_k):
            dvm, dvb, _, _ = self.interval_gas(j)
            vm -= dvm
            vb -= dvb
        return vm, vb

    def version(self, target, image):
        return self.versions.get(target + "-" + image, "")

    def advance(self, now):
        """Run the registers up to meter time `now` (epoch seconds)."""
        if now > self.now:
            self.now = now
        k_now = self.now // IV
        k = self.last_k
        if k_now - k > 20000:
            # A long gap (weeks): book the average, then run the last two weeks exactly.
            skip = k_now - k - 1344
            if self.kind == "gas":
                self.gas_vm += skip * self.gas_base_l * 94 // 100
                self.gas_vb = self.gas_vm * 1037 // 1000
            else:
                self.wh_del += skip * self.base_wh * 83 // 100
            k += skip
        while k < k_now:
            if self.kind == "gas":
                dvm, dvb, _, _ = self.interval_gas(k)
                self.gas_vm += dvm
                self.gas_vb += dvb
            else:
                wh = self.interval_wh(k)
                self.wh_del += wh
                self.wh_rcv += self.interval_rcv(k)
                if self.prepay:
                    self.credit -= wh * self.price // 1000
            k += 1
        self.last_k = k_now

    # ---- scheduled flows ------------------------------------------------------------------

    def _schedule(self, now):
        sched = []
        for flow in flows.for_kind(self.kind):
            if flow[flows.SCHED] == flows.SCHED_RANDOM:
                sched.append([flow, self.rng.exp()])
            elif flow[flows.SCHED] == flows.SCHED_PERIODIC:
                if flow[flows.ID] != "gas-interval-%dh" % self.gas_period_h:
                    continue
                period = DAY // flow[flows.PER_DAY]
                sched.append([flow, ((now + self.tz) // period + 1) * period - self.tz])
        return sched

    def _emit(self, flow, ts, args=None):
        self.seq += 1
        return flow[flows.FAMILY], flows.build(flow, self, self.seq, ts, args)

    def due_flows(self, now):
        """The flows the meter emits on its own between the previous call and `now`.

        Each SCHED_RANDOM flow is a Poisson process that runs only inside its daily window,
        at PER_DAY x rate_scale a day; each periodic flow fires on its period boundaries.
        Returns a list of (family, content).
        """
        self.advance(now)
        last = self._last_due
        out = []
        if now <= last:
            return out
        self._last_due = now
        for entry in self._sched:
            flow = entry[0]
            if flow[flows.SCHED] == flows.SCHED_PERIODIC:
                period = DAY // flow[flows.PER_DAY]
                due = entry[1]
                n = 0
                while due <= now and n < 48:
                    out.append(self._emit(flow, due))
                    due += period
                    n += 1
                if due <= now:  # far behind (a long sleep): skip to the next boundary
                    due = ((now + self.tz) // period + 1) * period - self.tz
                entry[1] = due
                continue
            window = flow[flows.WINDOW]
            span = (window[1] - window[0]) * 3600
            left = entry[1] - flow[flows.PER_DAY] * self.rate_scale / span * window_seconds(
                last, now, window, self.tz
            )
            n = 0
            while left <= 0 and n < 16:
                out.append(self._emit(flow, now))
                left += self.rng.exp()
                n += 1
            if left <= 0:
                left = self.rng.exp()
            entry[1] = left
        return out

    # ---- commands ---------------------------------------------------------------------------

    def handle_command(self, command, now=None):
        """Apply one command; returns a list of (family, content). Never raises."""
        if now is not None:
            self.advance(now)
        self.commands += 1
        try:
            return self._dispatch(command)
        except Exception:  # a meter answers every command, whatever is wrong with it
            try:
                return self._alert(None, "internal", None)
            except Exception:
                return []

    def _flow(self, flow_id, ref=None, **args):
        if ref is not None:
            args["ref"] = ref
        return self._emit(flows.get(flow_id), self.now, args)

    def _alert(self, ref, err, name, field=None):
        return [
            self._flow(
                "ev-audit-alert",
                ref,
                code=flows.EVENT_COMMAND_REFUSED,
                err=err,
                cmd=name,
                f=field,
            )
        ]

    def _dispatch(self, command):
        if not isinstance(command, dict):
            return self._refuse(None, None, "cmd", RC_UNDEFINED)
        ref = command.get("id")
        if ref is not None and not (
            (isinstance(ref, str) and 0 < len(ref) <= 32) or (_is_int(ref) and ref >= 0)
        ):
            return self._refuse(None, command.get("cmd"), "id", RC_TYPE)
        name = command.get("cmd")
        if name == "read":
            return self._read(command, ref)
        if name == "switch":
            return self._switch(command, ref)
        if name == "dr":
            return self._dr(command, ref)
        if name == "han-join" or name == "han-unjoin":
            return self._han(command, ref, name)
        if name == "fw":
            return self._fw(command, ref)
        if name == "price":
            return self._price(command, ref)
        return self._refuse(ref, name, "cmd", RC_UNDEFINED)

    def _refuse(self, ref, name, err, rc, field=None, src="hes"):
        """The command error of the on-demand read rows (electric) or an alert (gas)."""
        if not isinstance(name, str):
            name = None
        elif len(name) > 12:
            name = name[:12]
        if field is not None and len(field) > 8:
            field = field[:8]
        if self.kind == "gas":
            return self._alert(ref, err, name, field)
        flow_id = ("pp-ondemand-err" if self.prepay else "mr-ondemand-err") + (
            "" if src == "hes" else "-" + src
        )
        return [self._flow(flow_id, ref, err=err, cmd=name, rc=rc, field=field)]

    @staticmethod
    def _unknown_field(command, allowed):
        # The smallest unknown name: the same answer whatever order the dict keeps (MicroPython).
        found = None
        for key in command:
            if key not in allowed:
                key = key if isinstance(key, str) else "?"
                if found is None or key < found:
                    found = key
        return found

    def _read(self, c, ref):
        src = c.get("src", "hes")
        if src not in ("hes", "ipd", "ems"):
            return self._refuse(ref, "read", "src", RC_TYPE)
        bad = self._unknown_field(c, ("cmd", "id", "src", "n"))
        if bad is not None:
            return self._refuse(ref, "read", "field", RC_TYPE, bad, src)
        n = c.get("n")
        if n is not None and not (_is_int(n) and 1 <= n <= MAX_N):
            return self._refuse(ref, "read", "n", RC_TYPE, None, src)
        if self.kind == "gas":
            return [self._flow("gas-interval-%dh" % self.gas_period_h, ref)]
        if n is not None:
            return [self._flow("mr-multi-interval", ref, n=n)]
        flow_id = "pp-ondemand" if self.prepay else "mr-ondemand"
        return [self._flow(flow_id if src == "hes" else flow_id + "-" + src, ref)]

    def _switch(self, c, ref):
        if self.kind == "gas":
            return self._alert(ref, "kind", "switch")
        bad = self._unknown_field(c, ("cmd", "id", "op"))
        op = c.get("op")
        if bad is not None:
            err, field = "field", bad
        elif op not in ("connect", "disconnect", "status"):
            err, field = "op", None
        elif op == "status":
            return [self._flow("pp-switch-state", ref)]
        elif self.rng.chance(flows.get("pp-switch-fail")[flows.PER_CMD]):
            err, field = "fault", None
        else:
            state = 1 if op == "connect" else 0
            if state != self.switch:
                self.switch = state
                self.switch_ts = self.now
            return [self._flow("pp-switch-ack", ref), self._flow("pp-metrology", ref)]
        rc = RC_HARDWARE if err == "fault" else RC_TYPE
        return [self._flow("pp-switch-fail", ref, err=err, cmd="switch", rc=rc, field=field)]

    def _dr(self, c, ref):
        bad = self._unknown_field(c, ("cmd", "id", "ev", "prog", "src", "dur", "shed", "start"))
        if bad is not None:
            return self._alert(ref, "field", "dr", bad[:8])
        if self.kind == "gas":
            return self._alert(ref, "kind", "dr")
        ev = c.get("ev")
        prog = c.get("prog", "utl")
        src = c.get("src", "lms")
        dur = c.get("dur", 60)
        shed = c.get("shed", 30)
        start = c.get("start", self.now)
        for key, ok in (
            ("ev", (_is_int(ev) and ev >= 0) or (isinstance(ev, str) and 0 < len(ev) <= 12)),
            ("prog", prog in ("utl", "repi")),
            ("src", src in ("lms", "dsm")),
            ("dur", _is_int(dur) and 1 <= dur <= 1440),
            ("shed", _is_int(shed) and 0 <= shed <= 100),
            ("start", _is_int(start) and start >= 0),
        ):
            if not ok:
                return self._alert(ref, key, "dr")
        if prog not in self.dr_programs:
            return self._alert(ref, "enrol", "dr")
        suffix = "-" + src + "-" + prog
        if self.rng.chance(self.opt_out_rate):
            return [self._flow("dr-optout" + suffix, None, ev=ev)]
        self.dr_events.append([ev, start, start + dur * 60, shed])
        if len(self.dr_events) > 4:
            self.dr_events.pop(0)
        return [self._flow("dr-ack" + suffix, None, ev=ev, shed=shed)]

    def _han(self, c, ref, name):
        if self.kind == "gas":
            return self._alert(ref, "kind", name)
        join = name == "han-join"
        stem = "han-join" if join else "han-unjoin"
        by = c.get("by")
        if by not in (None, "utl", "repi"):
            return [self._flow(stem + "-err", ref, err="by")]
        err_id = stem + "-err" + ("" if by is None else "-" + by)
        bad = self._unknown_field(c, ("cmd", "id", "dev", "by"))
        if bad is not None:
            return [self._flow(err_id, ref, err="field")]
        dev = c.get("dev")
        if not (isinstance(dev, str) and len(dev) == 16 and _is_hex(dev)):
            return [self._flow(err_id, ref, err="dev")]
        dev = dev.upper()
        rate = flows.get(err_id)[flows.PER_CMD]
        if join:
            if dev not in self.han:
                if len(self.han) >= HAN_MAX:
                    return [self._flow(err_id, ref, err="full")]
                if self.rng.chance(rate):
                    return [self._flow(err_id, ref, err="fault")]
                self.han.append(dev)
        else:
            if dev not in self.han:
                return [self._flow(err_id, ref, err="notj")]
            if self.rng.chance(rate):
                return [self._flow(err_id, ref, err="fault")]
            self.han.remove(dev)
        return [self._flow(stem + "-ack-" + ("repi" if by == "repi" else "utl"), ref)]

    def _fw(self, c, ref):
        bad = self._unknown_field(c, ("cmd", "id", "target", "image", "ver", "via"))
        if bad is not None:
            return self._alert(ref, "field", "fw", bad[:8])
        if self.kind == "gas":
            return self._alert(ref, "kind", "fw")
        target = c.get("target")
        image = c.get("image", "firmware")
        ver = c.get("ver")
        via = c.get("via", "net")
        for key, ok in (
            ("target", target in ("metrology", "nic")),
            ("image", image in ("firmware", "program")),
            ("ver", isinstance(ver, str) and 0 < len(ver) <= 16),
            ("via", via in ("net", "tool")),
        ):
            if not ok:
                return self._alert(ref, key, "fw")
        self.versions[target + "-" + image] = ver
        flow_id = "fw-" + target + ("-fw" if image == "firmware" else "-prog")
        if via == "tool" and flow_id != "fw-nic-prog":
            flow_id += "-tool"
        return [self._flow(flow_id, ref, target=target, image=image)]

    def _price(self, c, ref):
        bad = self._unknown_field(c, ("cmd", "id", "price", "tier"))
        if bad is not None:
            return self._alert(ref, "field", "price", bad[:8])
        if self.kind == "gas":
            return self._alert(ref, "kind", "price")
        price = c.get("price")
        tier = c.get("tier", 0)
        if not (_is_int(price) and 0 <= price <= 1000000):
            return self._alert(ref, "price", "price")
        if not (_is_int(tier) and 0 <= tier <= 9):
            return self._alert(ref, "tier", "price")
        self.price = price
        self.price_tier = tier
        return [self._flow("ev-audit-alert", ref, code=flows.EVENT_TARIFF, price=price)]


def _is_hex(text):
    return all(ch in "0123456789abcdefABCDEF" for ch in text)
