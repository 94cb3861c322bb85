"""The meter-originated flows of the SGIP/OpenSG tables, as data, and their payload builders.

Source: the SGIP/OpenSG "SG Network System Requirements Specification" rows quoted in the
oneM2M contribution "Smart Grid Activities in North America": every row whose data flow goes
FROM "2-Way Meter - Electr" (or "2-Way Meter - Gas C/I") TO "DAPjm". One entry per row, so
rows that differ only in who asked (utility head-end, In-Premise Display, Customer EMS, REP)
are separate entries; the gas C/I row (1Dg) becomes two entries, one per reporting period the
row sizes (1600 B for 4 h, 2400 B for 6 h of 15-minute data).

A flow is a tuple (tuples, not dicts, to keep the table small in a 96 KB heap):

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
  BUILD     the payload builder

Message = the flow's data members plus the envelope `flow`, `type`, `seq`, `ts` (meter time,
epoch seconds). The table's sizes are application payload sizes, so `payload_size` measures
the data members only, as compact JSON (the envelope is framing, like the oneM2M headers).
Where the table gives one number N the builders aim at N and stay within N +- 20 %
(`size_bounds`). All numbers are scaled integers (Wh, dV, W, litres, Pa, centi-degC,
milli-currency); reading types are IEC 61968-9 ReadingType codes, registers also carry OBIS
codes, events carry IEC 61968-9 EndDeviceEventType codes.
"""

import json

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

SCHED_CMD = 0
SCHED_RANDOM = 1
SCHED_PERIODIC = 2

ENVELOPE = ("flow", "type", "seq", "ts")

INTERVAL_S = 900  # 15-minute interval data, electric and gas

# IEC 61968-9 ReadingType codes (macroPeriod.aggregate.measuringPeriod.accumulate.flowDirection.
# commodity.measurementKind.<8 x 0>.multiplier.unit.currency). Values are scaled integers,
# so the multiplier is 0 (Wh) or the scale of the integer (-1 dV, -3 m3 = litres).
RT_WH_DEL = "0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.0.72.0"  # bulk Wh delivered (OBIS 1.8.0)
RT_WH_RCV = "0.0.0.1.19.1.12.0.0.0.0.0.0.0.0.0.72.0"  # bulk Wh received (OBIS 2.8.0)
RT_IV_DEL = "0.0.2.4.1.1.12.0.0.0.0.0.0.0.0.0.72.0"  # 15-min delta Wh delivered
RT_IV_RCV = "0.0.2.4.19.1.12.0.0.0.0.0.0.0.0.0.72.0"  # 15-min delta Wh received
RT_IV_VOLT = "0.0.2.6.0.1.54.0.0.0.0.0.0.0.0.-1.29.0"  # 15-min average voltage, dV
RT_GAS_VOL = "0.0.2.4.1.7.58.0.0.0.0.0.0.0.0.-3.42.0"  # 15-min gas volume, litres

# IEC 61968-9 EndDeviceEventType codes (deviceType.domain.subdomain.eventOrAction), without
# the device type (3 electric meter, 7 gas meter), grouped by the table's event rows.
EVENTS_AUDIT = ("11.43.242", "8.0.215", "36.116.24", "17.44.28", "20.121.4")
EVENTS_CONFIG = ("7.31.24", "36.56.24", "15.261.24")
EVENTS_FAULT = ("18.85.79", "18.72.79", "21.67.79", "37.3.79", "2.22.150", "36.114.35")
EVENTS_PQ = ("26.38.85", "26.38.49", "26.25.85", "26.79.223", "26.79.248")
EVENTS_SECURITY = ("12.43.257", "12.141.212", "12.6.219", "12.24.85", "12.66.242")
EVENT_TARIFF = "20.121.4"  # tariff (price) activated: the audit event a price command raises
EVENT_COMMAND_REFUSED = "11.43.242"  # application alert: a command the meter could not apply


def _device_type(meter):
    return "7." if meter.kind == "gas" else "3."


def _ref(data, args):
    if args is not None and args.get("ref") is not None:
        data["ref"] = args["ref"]
    return data


# ---- builders: (meter, ts, args) -> data dict -------------------------------------------


def _multi_interval(m, ts, a):
    # Interval data requested by the MDMS: one to three channels of 15-minute values ending at
    # the last complete interval. Worst case 5 characters a value keeps it under 2400 bytes.
    n = a.get("n") if a is not None else None
    if n is None:
        n = 32 + m.rng.below(65)  # 8 h to a day; a command may ask for up to two days
    chans = [RT_IV_DEL]
    if m.pv:
        chans.append(RT_IV_RCV)
    if m.rng.below(2):
        chans.append(RT_IV_VOLT)
    n = min(n, (2400 - 110 - 63 * len(chans)) // (5 * len(chans)))
    end_k = ts // INTERVAL_S
    k0 = end_k - n
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
    return _ref({"t0": k0 * INTERVAL_S, "ip": INTERVAL_S, "n": n, "ch": blocks}, a)


def _ondemand(m, ts, a):
    return _ref(
        {
            "rt": RT_WH_DEL,
            "obis": {"1.8.0": m.wh_del, "2.8.0": m.wh_rcv, "32.7.0": m.volts(ts)},
        },
        a,
    )


def _cmd_err(m, ts, a):
    # A command error: what was wrong (`e`), which command, a DLMS data-access-result code.
    if a is None:
        return {"e": "fault", "cmd": "read", "rc": 1}
    data = {"e": a.get("err", "fault"), "cmd": a.get("cmd") or "?"}
    if a.get("field") is not None:
        data["f"] = a["field"]  # the unknown field (instead of the result code)
    else:
        data["rc"] = a.get("rc", 1)
    return _ref(data, a)


def _event(codes):
    def build(m, ts, a):
        code = None if a is None else a.get("code")
        if code is None:
            code = codes[m.rng.below(len(codes))]
        m.events += 1
        data = {"ev": _device_type(m) + code, "et": ts, "sev": 2, "n": m.events}
        if codes is EVENTS_AUDIT:
            data["sev"] = 0
        if a is not None:
            # Raised by a command: the command's reference and what went wrong (or the price).
            for key, name in (("ref", "ref"), ("err", "e"), ("cmd", "cmd"), ("f", "f")):
                if a.get(key) is not None:
                    data[name] = a[key]
            if a.get("price") is not None:
                data["p"] = a["price"]
        else:
            # Context the meter logs with the event: 0-16 register values.
            ctx = []
            for _ in range(m.rng.below(17)):
                ctx.append(m.rng.below(100000000))
            if ctx:
                data["ctx"] = ctx
        return data

    return build


def _switch_state(m, ts, a):
    return _ref(
        {
            "sw": m.switch,
            "since": m.switch_ts,
            "arm": 0,
            "cr": m.credit,
            "p": m.price,
            "tier": m.price_tier,
            "obis": {"1.8.0": m.wh_del},
        },
        a,
    )


def _switch_ack(m, ts, a):
    return _ref({"sw": m.switch}, a)


def _switch_metrology(m, ts, a):
    return _ref(
        {
            "sw": m.switch,
            "obis": {
                "1.8.0": m.wh_del,
                "2.8.0": m.wh_rcv,
                "1.7.0": m.watts(ts),
                "32.7.0": m.volts(ts),
            },
        },
        a,
    )


def _dr_ack(m, ts, a):
    # DR flows answer the event, not the command: the event id is the reference.
    if a is None:
        return {"ev": 0, "ok": 1, "sh": 0}
    return {"ev": a.get("ev", 0), "ok": 1, "sh": a.get("shed", 0)}


def _dr_optout(m, ts, a):
    return {"ev": 0 if a is None else a.get("ev", 0), "out": 1, "sh": 0}


def _han_ack(m, ts, a):
    return _ref({"ok": 1, "n": len(m.han)}, a)


def _han_err(m, ts, a):
    return _ref({"e": a.get("err", "fault") if a is not None else "fault"}, a)


def _fw_confirm(m, ts, a):
    target = "metrology" if a is None else a.get("target", "metrology")
    image = "firmware" if a is None else a.get("image", "firmware")
    img = target + ("-fw" if image == "firmware" else "-prog")
    return _ref({"img": img, "ver": m.version(target, image)}, a)


def _gas_interval(hours):
    return lambda m, ts, a: _gas_records(m, ts, a, hours)


def _gas_records(m, ts, a, hours):
    # One record per 15-minute interval of the reporting period, as a gas volume corrector
    # logs it: indexes and deltas of measured (Vm) and base-condition (Vb) volume in litres,
    # energy in Wh, gauge pressure in Pa, temperature in centi-degC, status.
    end_k = ts // INTERVAL_S
    k0 = end_k - hours * 3600 // INTERVAL_S
    vm, vb = m.gas_index_at(k0)
    recs = [None] * (end_k - k0)
    for k in range(k0, end_k):
        dvm, dvb, p, tc = m.interval_gas(k)
        vm += dvm
        vb += dvb
        recs[k - k0] = {
            "t": (k + 1) * INTERVAL_S,
            "vm": vm,
            "vb": vb,
            "dvm": dvm,
            "dvb": dvb,
            "e": dvb * 10550 // 1000,
            "p": p,
            "tc": tc,
            "s": 0,
        }
    return _ref({"rt": RT_GAS_VOL, "ip": INTERVAL_S, "recs": recs}, a)


# ---- the table ----------------------------------------------------------------------------

_EV_RATE = 1 / 30000  # "1 per 1000 per ... per month"
# Shared window tuples: one object each instead of one per row (heap).
_24 = (0, 24)
_7_18 = (7, 18)
_7_22 = (7, 22)
_8_20 = (8, 20)

# fmt: off
FLOWS = (
    # Meter Reading: 2-Way Meter - Electr -> DAPjm (7 rows)
    ("mr-multi-interval", "reading", "resp-data", 200, 2400, 0.025, None, _7_18, 5, 3, "e",
     SCHED_RANDOM, _multi_interval),
    ("mr-ondemand-err", "ondemand", "cmd-err", 50, 50, None, None, _7_22, 5, 1, "e",
     SCHED_CMD, _cmd_err),
    ("mr-ondemand-err-ems", "ondemand", "cmd-err", 50, 50, None, None, _7_22, 5, 1, "e",
     SCHED_CMD, _cmd_err),
    ("mr-ondemand-err-ipd", "ondemand", "cmd-err", 50, 50, None, None, _7_22, 5, 1, "e",
     SCHED_CMD, _cmd_err),
    ("mr-ondemand", "ondemand", "resp-data", 100, 100, 0.025, None, _7_22, 5, 2, "e",
     SCHED_RANDOM, _ondemand),
    ("mr-ondemand-ipd", "ondemand", "resp-data", 100, 100, None, None, _7_22, 5, 2, "e",
     SCHED_CMD, _ondemand),
    ("mr-ondemand-ems", "ondemand", "resp-data", 100, 100, None, None, _7_22, 5, 2, "e",
     SCHED_CMD, _ondemand),
    # Meter Events: 2-Way Meter - Electr -> DAPjm (5 rows; gas C/I meters report them too)
    ("ev-audit-alert", "event", "alert", 25, 278, _EV_RATE, None, _24, 60, 0, "eg",
     SCHED_RANDOM, _event(EVENTS_AUDIT)),
    ("ev-config", "event", "alarm", 25, 278, _EV_RATE, None, _24, 30, 0, "eg",
     SCHED_RANDOM, _event(EVENTS_CONFIG)),
    ("ev-fault", "event", "alarm", 25, 278, _EV_RATE, None, _24, 30, 0, "eg",
     SCHED_RANDOM, _event(EVENTS_FAULT)),
    ("ev-pq-alarm", "event", "alarm", 25, 278, _EV_RATE, None, _24, 30, 0, "eg",
     SCHED_RANDOM, _event(EVENTS_PQ)),
    ("ev-security-alarm", "event", "alarm", 25, 278, _EV_RATE, None, _24, 30, 0, "eg",
     SCHED_RANDOM, _event(EVENTS_SECURITY)),
    # Pre-Pay: 2-Way Meter - Electr -> DAPjm (7 + 3 rows)
    ("pp-switch-state", "prepay", "resp-data", 100, 100, 0.0255, None, _8_20, 30, 2, "e",
     SCHED_RANDOM, _switch_state),
    ("pp-switch-ack", "prepay", "ack", 25, 25, 0.0015, None, _8_20, 30, 1, "e",
     SCHED_CMD, _switch_ack),
    ("pp-switch-fail", "prepay", "cmd-err", 50, 50, None, 0.001, _8_20, 30, 1, "e",
     SCHED_CMD, _cmd_err),
    ("pp-metrology", "prepay", "resp-data", 100, 100, 0.0015, None, _8_20, 30, 2, "e",
     SCHED_CMD, _switch_metrology),
    ("pp-ondemand", "prepay", "resp-data", 100, 100, None, None, _7_22, 5, 2, "e",
     SCHED_CMD, _ondemand),
    ("pp-ondemand-ipd", "prepay", "resp-data", 100, 100, None, None, _7_22, 5, 2, "e",
     SCHED_CMD, _ondemand),
    ("pp-ondemand-ems", "prepay", "resp-data", 100, 100, None, None, _7_22, 5, 2, "e",
     SCHED_CMD, _ondemand),
    ("pp-ondemand-err", "prepay", "cmd-err", 50, 50, None, None, _7_22, 5, 1, "e",
     SCHED_CMD, _cmd_err),
    ("pp-ondemand-err-ems", "prepay", "cmd-err", 50, 50, None, None, _7_22, 5, 1, "e",
     SCHED_CMD, _cmd_err),
    ("pp-ondemand-err-ipd", "prepay", "cmd-err", 50, 50, None, None, _7_22, 5, 1, "e",
     SCHED_CMD, _cmd_err),
    # DR/DLC: 2-Way Meter - Electr -> DAPjm (8 rows: utility or REP program x LMS or DSM event)
    ("dr-ack-lms-utl", "drdlc", "ack", 25, 25, None, None, _24, 5, 1, "e", SCHED_CMD, _dr_ack),
    ("dr-optout-lms-utl", "drdlc", "cmd", 25, 25, None, 0.01, _24, 5, 1, "e",
     SCHED_CMD, _dr_optout),
    ("dr-ack-dsm-utl", "drdlc", "ack", 25, 25, None, None, _24, 5, 1, "e", SCHED_CMD, _dr_ack),
    ("dr-optout-dsm-utl", "drdlc", "cmd", 25, 25, None, 0.01, _24, 5, 1, "e",
     SCHED_CMD, _dr_optout),
    ("dr-ack-lms-repi", "drdlc", "ack", 25, 25, None, None, _24, 5, 1, "e", SCHED_CMD, _dr_ack),
    ("dr-optout-lms-repi", "drdlc", "cmd", 25, 25, None, 0.01, _24, 5, 1, "e",
     SCHED_CMD, _dr_optout),
    ("dr-ack-dsm-repi", "drdlc", "ack", 25, 25, None, None, _24, 5, 1, "e", SCHED_CMD, _dr_ack),
    ("dr-optout-dsm-repi", "drdlc", "cmd", 25, 25, None, 0.01, _24, 5, 1, "e",
     SCHED_CMD, _dr_optout),
    # Premise Network Admin: 2-Way Meter - Electr -> DAPjm (7 + 3 rows)
    ("han-join-ack-utl", "han", "ack", 25, 25, None, None, _24, 5, 1, "e", SCHED_CMD, _han_ack),
    ("han-unjoin-ack-utl", "han", "ack", 25, 25, None, None, _24, 5, 1, "e",
     SCHED_CMD, _han_ack),
    ("han-join-err-utl", "han", "cmd-err", 25, 25, None, 0.001, _24, 5, 1, "e",
     SCHED_CMD, _han_err),
    ("han-join-err", "han", "cmd-err", 25, 25, None, 0.001, _24, 5, 1, "e", SCHED_CMD, _han_err),
    ("han-unjoin-err-utl", "han", "cmd-err", 25, 25, None, 0.001, _24, 5, 1, "e",
     SCHED_CMD, _han_err),
    ("han-unjoin-err", "han", "cmd-err", 25, 25, None, 0.001, _24, 5, 1, "e",
     SCHED_CMD, _han_err),
    ("han-join-ack-repi", "han", "ack", 25, 25, None, None, _24, 5, 1, "e",
     SCHED_CMD, _han_ack),
    ("han-unjoin-ack-repi", "han", "ack", 25, 25, None, None, _24, 5, 1, "e",
     SCHED_CMD, _han_ack),
    ("han-join-err-repi", "han", "cmd-err", 25, 25, None, 0.001, _24, 5, 1, "e",
     SCHED_CMD, _han_err),
    ("han-unjoin-err-repi", "han", "cmd-err", 25, 25, None, 0.001, _24, 5, 1, "e",
     SCHED_CMD, _han_err),
    # Firmware / Program Update: 2-Way Meter - Electr -> DAPjm (7 rows; "-tool": the update
    # came from a field tool, 7AM-6PM)
    ("fw-metrology-fw", "firmware", "resp-data", 50, 50, None, None, _24, 5, 2, "e",
     SCHED_CMD, _fw_confirm),
    ("fw-nic-fw", "firmware", "resp-data", 50, 50, None, None, _24, 5, 2, "e",
     SCHED_CMD, _fw_confirm),
    ("fw-metrology-prog", "firmware", "resp-data", 50, 50, None, None, _24, 5, 2, "e",
     SCHED_CMD, _fw_confirm),
    ("fw-nic-prog", "firmware", "resp-data", 50, 50, None, None, _24, 5, 2, "e",
     SCHED_CMD, _fw_confirm),
    ("fw-metrology-fw-tool", "firmware", "resp-data", 50, 50, None, None, _7_18, 5, 2, "e",
     SCHED_CMD, _fw_confirm),
    ("fw-nic-fw-tool", "firmware", "resp-data", 50, 50, None, None, _7_18, 5, 2, "e",
     SCHED_CMD, _fw_confirm),
    ("fw-metrology-prog-tool", "firmware", "resp-data", 50, 50, None, None, _7_18, 5, 2,
     "e", SCHED_CMD, _fw_confirm),
    # Meter Reading: 2-Way Meter - Gas C/I -> DAPjm (row 1Dg, "1-6 per day", < 4 hr)
    ("gas-interval-4h", "reading", "resp-data", 1600, 1600, 6, None, _24, 14400, 3, "g",
     SCHED_PERIODIC, _gas_interval(4)),
    ("gas-interval-6h", "reading", "resp-data", 2400, 2400, 4, None, _24, 14400, 3, "g",
     SCHED_PERIODIC, _gas_interval(6)),
)
# fmt: on

FAMILIES = ("reading", "ondemand", "event", "prepay", "drdlc", "han", "firmware")
GAS_FAMILIES = ("reading", "event")


def families(kind):
    """The containers a meter of this kind posts to (docs/agents.md)."""
    return GAS_FAMILIES if kind == "gas" else FAMILIES


def get(flow_id):
    """The flow tuple with this id, or None."""
    for flow in FLOWS:
        if flow[ID] == flow_id:
            return flow
    return None


def for_kind(kind):
    """The flows a meter of this kind can produce."""
    letter = "g" if kind == "gas" else "e"
    return tuple(f for f in FLOWS if letter in f[KINDS])


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
    content = flow[BUILD](meter, ts, args)
    content["flow"] = flow[ID]
    content["type"] = flow[TYPE]
    content["seq"] = seq
    content["ts"] = ts
    return content
