"""The meter-originated flows of the SGIP/OpenSG tables, as data, and their payload builders.

Source: the SGIP/OpenSG "SG Network System Requirements Specification" rows quoted in the
oneM2M contribution "Smart Grid Activities in North America": every row whose data flow goes
FROM "2-Way Meter - Electr" (or "2-Way Meter - Gas C/I") TO "DAPjm". One entry per row, so
rows that differ only in who asked (utility head-end, In-Premise Display, Customer EMS, REP)
are separate entries; the gas C/I row (1Dg) becomes two entries, one per reporting period the
row sizes (1600 B for 4 h, 2400 B for 6 h of 15-minute data).

The table is text, a line per flow: on a 96 KB heap one string costs a tenth of what 49
tuples of 14 objects cost. The flows a meter sends on its own schedule are here (`_TABLE`:
a board looks them up while it builds messages); those that only answer a command are in
the file answers.txt beside this module, which a board reads from flash when a command
comes (their builders are in commands.py, loaded only then too). `get(flow_id)` reads a
line of either into a tuple (CPython keeps the tuples; a board builds them when asked and
lets them go):

  ID        stable flow id, the `flow` member of every message
  FAMILY    the container it is posted to (reading, ondemand, event, prepay, drdlc, han,
            firmware)
  TYPE      the table's payload type (resp-data, cmd-err, ack, cmd, alarm, alert)
  SMIN/SMAX the table's "App Payload Size - bytes"; equal when the table gives one number
  PER_DAY   the table's "How Often" as messages per meter per day where it gives a daily rate
            (a range such as 1-50 per 1000 per day uses its midpoint), else None
  PER_CMD   the probability per triggering command where the table gives one (opt-outs,
            command failures), else None
  WINDOW    the table's "Daily Clock Periods of Primary Occurrence" as (from_hour, to_hour)
            on the meter clock; (0, 24) is 24x7
  LATENCY   the table's one-way latency requirement in seconds
  PRIORITY  0 alarms and alerts, 1 acks / command errors / opt-out commands, 2 on-demand and
            other response data, 3 bulk interval data (the store sheds 3 first, never 0)
  KINDS     meter kinds that produce it: "e" electric, "g" gas C/I
  SCHED     SCHED_CMD: only in answer to a command; SCHED_RANDOM: also emitted by the meter
            at PER_DAY inside WINDOW (a Poisson process on the meter clock); SCHED_PERIODIC:
            every 24/PER_DAY hours
  BUILD     the payload builder, `build(meter, ts, args, flow)`
  DATA      what the builder needs from the table: an event row's EndDeviceEventType codes,
            a gas row's reporting period in hours (else "")

Message = the flow's data members plus the envelope `flow`, `type`, `seq`, `ts` (meter time,
epoch seconds). The table's sizes are application payload sizes, so `payload_size` measures
the data members only, as compact JSON (the envelope is framing, like the oneM2M headers).
Where the table gives one number N the builders aim at N and stay within N +- 20 %
(`size_bounds`). All numbers are scaled integers (Wh, dV, W, litres, Pa, centi-degC,
milli-currency); reading types are IEC 61968-9 ReadingType codes, registers also carry OBIS
codes, events carry IEC 61968-9 EndDeviceEventType codes.
"""

import json
import sys

ID = 0
FAMILY = 1
TYPE = 2
SMIN = 3
SMAX = 4
PER_DAY = 5
PER_CMD = 6
WINDOW = 7
LATENCY = 8
PRIORITY = 9
KINDS = 10
SCHED = 11
BUILD = 12
DATA = 13

SCHED_CMD = 0
SCHED_RANDOM = 1
SCHED_PERIODIC = 2

ENVELOPE = ("flow", "type", "seq", "ts")

INTERVAL_S = 900  # 15-minute interval data, electric and gas

# IEC 61968-9 ReadingType codes (macroPeriod.aggregate.measuringPeriod.accumulate.flowDirection.
# commodity.measurementKind.<8 x 0>.multiplier.unit.currency). Values are scaled integers,
# so the multiplier is 0 (Wh) or the scale of the integer (-1 dV, -3 m3 = litres).
RT_WH_DEL = "0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.0.72.0"  # bulk Wh delivered (OBIS 1.8.0)
RT_IV_DEL = "0.0.2.4.1.1.12.0.0.0.0.0.0.0.0.0.72.0"  # 15-min delta Wh delivered
RT_IV_RCV = "0.0.2.4.19.1.12.0.0.0.0.0.0.0.0.0.72.0"  # 15-min delta Wh received
RT_IV_VOLT = "0.0.2.6.0.1.54.0.0.0.0.0.0.0.0.-1.29.0"  # 15-min average voltage, dV
RT_GAS_VOL = "0.0.2.4.1.7.58.0.0.0.0.0.0.0.0.-3.42.0"  # 15-min gas volume, litres

# IEC 61968-9 EndDeviceEventType codes (deviceType.domain.subdomain.eventOrAction) are kept
# without the device type (3 electric meter, 7 gas meter); each event row lists its own.
EVENT_TARIFF = "20.121.4"  # tariff (price) activated: the audit event a price command raises
EVENT_COMMAND_REFUSED = "11.43.242"  # application alert: a command the meter could not apply

# Columns as in the module docstring; "-" is None, a window is FROM-TO hours, SCHED is C
# (command), R (random) or P (periodic), 1/30000 is "1 per 1000 per ... per month".
# The scheduled flows (the rest: answers.txt).
_TABLE = """
mr-multi-interval reading resp-data 200 2400 .025 - 7-18 5 3 e R multi
mr-ondemand ondemand resp-data 100 100 .025 - 7-22 5 2 e R ondemand
ev-audit-alert event alert 25 278 1/30000 - 0-24 60 0 eg R event 11.43.242,8.0.215,36.116.24,17.44.28,20.121.4
ev-config event alarm 25 278 1/30000 - 0-24 30 0 eg R event 7.31.24,36.56.24,15.261.24
ev-fault event alarm 25 278 1/30000 - 0-24 30 0 eg R event 18.85.79,18.72.79,21.67.79,37.3.79,2.22.150,36.114.35
ev-pq-alarm event alarm 25 278 1/30000 - 0-24 30 0 eg R event 26.38.85,26.38.49,26.25.85,26.79.223,26.79.248
ev-security-alarm event alarm 25 278 1/30000 - 0-24 30 0 eg R event 12.43.257,12.141.212,12.6.219,12.24.85,12.66.242
pp-switch-state prepay resp-data 100 100 .0255 - 8-20 30 2 e R switch-state
gas-interval-4h reading resp-data 1600 1600 6 - 0-24 14400 3 g P gas 4
gas-interval-6h reading resp-data 2400 2400 4 - 0-24 14400 3 g P gas 6
"""  # noqa: E501 (one row per line: the table's own shape)

# The rows of the flows that answer commands: a file beside this module (on a board, beside
# flows.mpy: read from flash, not kept in the heap).
ANSWERS_FILE = __file__[: max(__file__.rfind("/"), __file__.rfind("\\")) + 1] + "answers.txt"

FAMILIES = ("reading", "ondemand", "event", "prepay", "drdlc", "han", "firmware")
GAS_FAMILIES = ("reading", "event")

# CPython runs thousands of meters: it parses each row once. A board parses on demand.
_parsed = None if sys.implementation.name == "micropython" else {}


def families(kind):
    """The containers a meter of this kind posts to (docs/agents.md); a utility ESI ("esi")
    has only its relay container."""
    if kind == "esi":
        return ("esi",)
    return GAS_FAMILIES if kind == "gas" else FAMILIES


def get(flow_id, line=None):
    """The flow tuple with this id, or None. `line`: its row, when the caller has read it."""
    if _parsed is not None and flow_id in _parsed:
        return _parsed[flow_id]
    if line is None:
        line = _find(_TABLE, flow_id) or _answer_row(flow_id)
    if line is None:
        return None
    flow = _parse(line)
    if _parsed is not None:
        _parsed[flow_id] = flow
    return flow


def _find(table, flow_id):
    start = table.find("\n" + flow_id + " ")
    return None if start < 0 else table[start + 1 : table.find("\n", start + 1)]


def _open_answers():
    try:
        return open(ANSWERS_FILE)
    except OSError:  # modules frozen into the firmware: the file is in the filesystem root
        return open("answers.txt")


def _answer_row(flow_id):
    with _open_answers() as rows:
        for line in rows:  # a line at a time: the file is never in the heap whole
            if line.startswith(flow_id + " "):
                return line.rstrip()
    return None


def _commands():
    try:
        from . import commands
    except (ImportError, KeyError):
        import commands
    return commands


def scheduled(kind):
    """The flows a meter of this kind sends on its own schedule."""
    return _flows(_TABLE, kind)


def for_kind(kind):
    """Every flow a meter of this kind can produce (loads commands.py on a board)."""
    with _open_answers() as rows:
        return _flows(_TABLE, kind) + _flows(rows.read(), kind)


def all_flows():
    """Every flow tuple: the scheduled ones, then those that answer commands."""
    return for_kind("electric") + tuple(f for f in for_kind("gas") if f[KINDS] == "g")


def _flows(table, kind):
    letter = "g" if kind == "gas" else "e"
    found = []
    for line in table.split("\n"):
        if line and line[0] != "#" and letter in line.split(" ", 11)[10]:  # KINDS
            found.append(get(line[: line.find(" ")], line))  # not looked up again
    return tuple(found)


def _number(text):
    if text == "-":
        return None
    if "/" in text:
        over, under = text.split("/")
        return int(over) / int(under)
    return float(text) if "." in text else int(text)


def _parse(line):
    f = line.split(" ")
    start, end = f[7].split("-")
    return (f[0], f[1], f[2], int(f[3]), int(f[4]), _number(f[5]), _number(f[6]),
            (int(start), int(end)), int(f[8]), int(f[9]), f[10], "CRP".index(f[11]),
            _BUILDERS.get(f[12]) or _commands().BUILDERS[f[12]],
            f[13] if len(f) > 13 else "")  # fmt: skip


def size_bounds(flow):
    """(low, high) payload size accepted for the flow: the table's range, or N +- 20 %."""
    if flow[SMIN] != flow[SMAX]:
        return flow[SMIN], flow[SMAX]
    return flow[SMIN] - flow[SMIN] // 5, flow[SMAX] + flow[SMAX] // 5


def payload_size(content):
    """Bytes of the flow's data members as compact JSON (the table's App Payload Size)."""
    data = {}
    for key in content:
        if key not in ENVELOPE:
            data[key] = content[key]
    return len(json.dumps(data, separators=(",", ":")))


def build(flow, meter, seq, ts, args=None):
    """The message content of one flow: its data members plus the envelope."""
    content = flow[BUILD](meter, ts, args, flow)
    content["flow"] = flow[ID]
    content["type"] = flow[TYPE]
    content["seq"] = seq
    content["ts"] = ts
    return content


# ---- builders: (meter, ts, args, flow) -> data dict ----------------------------------------


def ref(data, args):
    """`data` with the command's reference (`ref`), if it has one."""
    if args is not None and args.get("ref") is not None:
        data["ref"] = args["ref"]
    return data


def arg(args, key, default):
    """args[key], or `default` when there are no args or the value is None."""
    value = None if args is None else args.get(key)
    return default if value is None else value


def _multi_interval(m, ts, a, flow):
    # Interval data requested by the MDMS: one to three channels of 15-minute values ending at
    # the last complete interval, within the table's 200-2400 bytes: 5 characters a value at
    # most ("2431,": volts) keeps it under the top.
    n = arg(a, "n", None)
    if n is None:
        n = 32 + m.rng.below(65)  # 8 h to a day; a command may ask for up to two days
    chans = [RT_IV_DEL]
    if m.pv:
        chans.append(RT_IV_RCV)
    if m.rng.below(2):
        chans.append(RT_IV_VOLT)
    most = (flow[SMAX] - 110 - 63 * len(chans)) // (5 * len(chans))
    data = _intervals(m, ts, min(n, most), chans, a)
    short = flow[SMIN] - payload_size(data)
    if short > 0:
        # A short read (a command may ask for one interval) reaches back further, to the
        # table's smallest size: an interval adds at least 2 bytes ("0,") a channel.
        more = (short + 2 * len(chans) - 1) // (2 * len(chans))
        data = _intervals(m, ts, min(data["n"] + more, most), chans, a)
    return data


def _intervals(m, ts, n, chans, a):
    k0 = ts // INTERVAL_S - n
    blocks = []
    for rt in chans:
        value = m.interval_wh if rt is RT_IV_DEL else m.interval_rcv
        if rt is RT_IV_VOLT:
            value = m.interval_volt
        vals = [0] * n  # one allocation, no regrowth: the heap is small and fragments
        for i in range(n):
            vals[i] = value(k0 + i)
        blocks.append({"rt": rt, "v": vals})
    blocks[0]["r0"] = m.register_at(k0)
    return ref({"t0": k0 * INTERVAL_S, "ip": INTERVAL_S, "n": n, "ch": blocks}, a)


def _ondemand(m, ts, a, flow):
    obis = {"1.8.0": m.wh_del, "2.8.0": m.wh_rcv, "32.7.0": m.volts(ts)}
    return ref({"rt": RT_WH_DEL, "obis": obis}, a)


def _event(m, ts, a, flow):
    code = arg(a, "code", None)
    if code is None:
        codes = flow[DATA].split(",")
        code = codes[m.rng.below(len(codes))]
    m.events += 1
    sev = 0 if flow[TYPE] == "alert" else 2
    data = {"ev": ("7." if m.kind == "gas" else "3.") + code, "et": ts, "sev": sev, "n": m.events}
    if a is not None:
        # Raised by a command: the command's reference and what went wrong (or the price).
        for key, name in (("ref", "ref"), ("err", "e"), ("cmd", "cmd"), ("f", "f"), ("price", "p")):
            if a.get(key) is not None:
                data[name] = a[key]
    else:
        # Context the meter logs with the event: 0-16 register values.
        ctx = [m.rng.below(100000000) for _ in range(m.rng.below(17))]
        if ctx:
            data["ctx"] = ctx
    return data


def _switch_state(m, ts, a, flow):
    data = {"sw": m.switch, "since": m.switch_ts, "arm": 0, "cr": m.credit, "p": m.price,
            "tier": m.price_tier, "obis": {"1.8.0": m.wh_del}}  # fmt: skip
    return ref(data, a)


def _gas(m, ts, a, flow):
    # One record per 15-minute interval of the reporting period, as a gas volume corrector
    # logs it: indexes and deltas of measured (Vm) and base-condition (Vb) volume in litres,
    # energy in Wh, gauge pressure in Pa, temperature in centi-degC, status.
    # The table gives both periods 100 bytes an interval (1600 B for 4 h, 2400 B for 6 h) and
    # the row 1600-2400 B. A record of all nine fields takes 100-112 bytes, so the 6-hour
    # report leaves out energy (Vb times the calorific value: the head-end can derive it)
    # and status (0; an alarm is an event row of its own) to stay under 2400 B.
    hours = int(flow[DATA])
    end_k = ts // INTERVAL_S
    k0 = end_k - hours * 3600 // INTERVAL_S
    vm, vb = m.gas_index_at(k0)
    recs = [None] * (end_k - k0)
    for k in range(k0, end_k):
        dvm, dvb, p, tc = m.interval_gas(k)
        vm += dvm
        vb += dvb
        rec = {"t": (k + 1) * INTERVAL_S, "vm": vm, "vb": vb, "dvm": dvm, "dvb": dvb, "p": p,
               "tc": tc}  # fmt: skip
        if hours == 4:
            rec["e"] = dvb * 10550 // 1000
            rec["s"] = 0
        recs[k - k0] = rec
    return ref({"rt": RT_GAS_VOL, "ip": INTERVAL_S, "recs": recs}, a)


# The builders of the scheduled flows, which command answers use too (commands.BUILDERS has
# the rest).
_BUILDERS = {
    "multi": _multi_interval,
    "ondemand": _ondemand,
    "event": _event,
    "switch-state": _switch_state,
    "gas": _gas,
}
