"""The meter model: what a two-way electric meter or a gas C/I meter knows and answers.

State is scaled integers: registers in Wh (electric) or litres (gas), voltage in dV, price
and pre-pay credit in milli-currency. Interval values are a pure function of (seed, interval
index), so the meter keeps no interval history and a multiple-interval read can look back as
far as it likes; the registers are the running sum of the same values. Randomness comes from
one small PRNG per meter, so a seed gives the same meter on MicroPython and CPython.

`handle_command(command)` applies a command from the DAP; the command format and the flows
that answer it are in commands.py, which a board loads only while it handles one.
"""

import math

try:
    from . import compat, flows
except (ImportError, KeyError):
    import compat
    import flows

const = compat.const
_DAY = const(86400)
_IV = const(900)  # flows.INTERVAL_S

# (bytes, not tuples: 24 bytes each in the heap.)
# Residential load shape: percent of the meter's base load for each hour of the day.
PROFILE = bytes((55, 50, 48, 47, 48, 55, 75, 95, 90, 80, 75, 75, 78, 78, 80, 88, 100, 125, 140, 135,
           120, 100, 80, 65))  # fmt: skip
# Rooftop PV: percent of peak output for each hour of the day.
SOLAR = bytes((0, 0, 0, 0, 0, 0, 5, 20, 45, 70, 88, 98, 100, 96, 85, 66, 42, 18, 4, 0, 0, 0, 0, 0))
# Gas C/I: percent of base flow for each hour (heating and working hours).
GAS_PROFILE = bytes((60, 55, 55, 55, 60, 80, 110, 130, 130, 120, 115, 110, 105, 105, 110, 115, 120,
               115, 100, 90, 80, 70, 65, 60))  # fmt: skip


def _mix(a, b):
    """A 32-bit hash of two ints: the deterministic noise of interval values."""
    h = (a * 0x9E3779B1 + b * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    h ^= h >> 12
    h = (h * 0x297A2D39) & 0xFFFFFFFF
    return h ^ (h >> 15)


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
    day = la // _DAY
    while day * _DAY < lb:
        w0 = day * _DAY + h0 * 3600
        w1 = day * _DAY + h1 * 3600
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
        rate_floor=0,
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
        self.rate_floor = rate_floor  # per day: lifts rare flows (interop runs), 0 = off
        self.opt_out_rate = opt_out_rate
        self.dr_programs = tuple(dr_programs)
        self.seq = 0
        self.events = 0
        self.commands = 0
        self.now = now
        self.last_k = now // _IV
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
        self.price_start = 0
        self.price_hh = None  # half-hourly rates from price_start (a price command's hh)
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
        # Nine digits (an index of 100 000-500 000 m3): a 4-hour report then stays near
        # the 1600 B the table gives it (flows._gas).
        self.gas_vm = 100000000 + rng.below(400000000)
        self.gas_vb = self.gas_vm * 1037 // 1000
        self._gas_iv = [0, 0, 0, 0]  # interval_gas() writes here
        self.report_delay = rng.below(1800) if kind == "gas" else 0
        self._sched = self._schedule(now)
        self._last_due = now

    @staticmethod
    def _eui(rng):
        return "000D6F%05X%05X" % (rng.below(0x100000), rng.below(0x100000))

    # ---- values -------------------------------------------------------------------------

    def _hour(self, k):
        return ((k * _IV + self.tz) % _DAY) // 3600

    def interval_wh(self, k):
        """Wh delivered in 15-minute interval k (k = epoch seconds // 900)."""
        if self.switch == 0 and k * _IV >= self.switch_ts:
            return 0
        wh = self.base_wh * PROFILE[self._hour(k)] // 100
        wh = wh * (75 + _mix(self.seed, k) % 51) // 100
        for ev in self.dr_events:
            if ev[1] <= k * _IV < ev[2]:
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
        """[measured litres, base-condition litres, gauge Pa, centi-degC] in interval k.

        The same list every call (unpack it at once): a gas report asks for 16-24 intervals
        while it builds its records, and a tuple each would leave a comb of small holes
        between them in a board's heap, where the report's JSON then finds no room."""
        h = self._hour(k)
        noise = _mix(self.seed ^ 0x7E7E, k)
        out = self._gas_iv
        dvm = out[0] = self.gas_base_l * GAS_PROFILE[h] // 100 * (80 + noise % 41) // 100
        p = out[2] = self.gas_p + (noise >> 8) % 400 - 200
        tc = out[3] = 800 + 600 * SOLAR[h] // 100 + (noise >> 16) % 100
        out[1] = dvm * (101325 + p) // 101325 * 28815 // (27315 + tc)
        return out

    def watts(self, ts):
        """Instantaneous demand in W."""
        return self.interval_wh(ts // _IV) * 4 + _mix(self.seed, ts) % 50

    def volts(self, ts):
        return self.interval_volt(ts // _IV)

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
        k_now = self.now // _IV
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
                    self.credit -= wh * self.rate_at(k * _IV) // 1000
            k += 1
        self.last_k = k_now

    def rate_at(self, ts):
        """The price at time ts: the half hour's rate of the last price command, else its
        rate in force."""
        hh = self.price_hh
        if hh is not None and ts >= self.price_start:
            slot = (ts - self.price_start) // 1800
            if slot < len(hh):
                return hh[slot]
        return self.price

    # ---- scheduled flows ------------------------------------------------------------------

    def _schedule(self, now):
        # Entries [flow id, per day, window, period s (0: Poisson), state]: what the schedule
        # needs, not the flow tuples (a board parses a flow again when one is due).
        sched = []
        for flow in flows.scheduled(self.kind):
            if flow[flows.SCHED] == flows.SCHED_RANDOM:
                rate, window = flow[flows.PER_DAY], flow[flows.WINDOW]
                sched.append([flow[flows.ID], rate, window, 0, self.rng.exp()])
            elif flow[flows.DATA] == str(self.gas_period_h):  # this meter's gas period
                period = _DAY // flow[flows.PER_DAY]
                sched.append([flow[flows.ID], 0, None, period, self._boundary(now, period)])
        return sched

    def _boundary(self, now, period):
        """The first period boundary (meter clock) after `now`."""
        return ((now + self.tz) // period + 1) * period - self.tz

    def emit(self, flow, ts, args=None):
        self.seq += 1
        return flow[flows.FAMILY], flows.build(flow, self, self.seq, ts, args)

    def due_flows(self, now, sink=None):
        """The flows the meter emits on its own between the previous call and `now`.

        Each SCHED_RANDOM flow is a Poisson process that runs only inside its daily window,
        at PER_DAY x rate_scale a day; each periodic flow covers the period up to a boundary
        and goes `report_delay` seconds after it (gas C/I meters: 0-30 min by seed, so that a
        DAP's gas meters do not all report at the same instant).
        Returns a list of (family, content); with `sink`, each goes to sink(family, content)
        as soon as it is built instead, and the list stays empty (the agent stores each at
        once: after a long step a board would otherwise hold several 2 KB reads as dicts).
        """
        self.advance(now)
        last = self._last_due
        out = []
        if now <= last:
            return out
        if sink is None:
            sink = lambda family, content: out.append((family, content))  # noqa: E731
        self._last_due = now
        for entry in self._sched:
            flow_id, rate, window, period, state = entry
            n = 0
            if period:
                while state + self.report_delay <= now and n < 48:
                    sink(*self.emit(flows.get(flow_id), state))
                    state += period
                    n += 1
                if state + self.report_delay <= now:  # far behind (a long sleep): skip ahead
                    state = self._boundary(now - self.report_delay, period)
                entry[4] = state
                continue
            span = (window[1] - window[0]) * 3600
            rate = rate * self.rate_scale
            if rate < self.rate_floor:
                rate = self.rate_floor
            state -= rate / span * window_seconds(last, now, window, self.tz)
            while state <= 0 and n < 16:
                sink(*self.emit(flows.get(flow_id), now))
                state += self.rng.exp()
                n += 1
            if state <= 0:
                state = self.rng.exp()
            entry[4] = state
        return out

    # ---- commands ---------------------------------------------------------------------------

    def handle_command(self, command, now=None):
        """Apply one command; returns a list of (family, content). Never raises."""
        if now is not None:
            self.advance(now)
        self.commands += 1
        try:
            from . import commands
        except (ImportError, KeyError):
            import commands
        return commands.handle(self, command)
