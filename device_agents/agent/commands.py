"""What a meter does with a command from the DAP: `handle(meter, command)`.

Commands (the `con` of a contentInstance in the meter's `command` container) are dicts:

  {"cmd": NAME, "id": CORRELATION-ID, ...fields}

`id` (a string of up to 32 characters or an integer) is optional and comes back as `ref` in
the answer; keep it short ("c000123"): the table sizes of acks are 25 bytes. Unknown fields
are refused. Commands, fields and the flows they produce:

  read      src: "hes" (default, the head-end/MDMS) | "ipd" | "ems" (In-Premise Display,
            Customer EMS); n: 1..192 intervals -> multiple-interval read.
            electric: mr-ondemand[-ipd|-ems] (pp-ondemand... on a pre-pay meter),
            with n: mr-multi-interval; gas: gas-interval-<period>.
  bulk      n: 1..192 (96, a day) -> a billing read: mr-multi-interval (gas: as read).
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
  price     price: milli-currency per kWh, 0..1000000 (required); tier: 0..9 (0);
            start: epoch seconds (0), hh: up to 48 half-hourly rates from start
            (0..1000000 each), which pre-pay credit is charged at.
            The tables have no meter-originated PHEV flow, so the meter records the rate
            (it appears in pp-switch-state) and raises an audit alert (ev-audit-alert,
            tariff activated) as its acknowledgement.

Anything else - an unknown command, an unknown field, a value out of range, a command the
meter kind does not support - answers with the command-error flow of that use case where the
tables have one (mr-ondemand-err..., pp-switch-fail, han-...-err...; an unknown command on
an electric meter: the on-demand read error row), else with an audit alert (ev-audit-alert
carrying `e`). `handle` never raises.

Error codes (`e`): the name of the field whose value is wrong, or "cmd" (unknown command),
"field" (unknown field, named in `f`), "kind" (not on this meter kind), "fault" (operation
failed), "full" (HAN table full), "notj" (device not joined), "enrol" (not in that DR
program), "internal".

The payload builders of the flows that only answer commands are here too (their rows are in
answers.txt, which a board reads from flash): commands are rare, so a board loads this module
when one arrives and lets it go afterwards (`Meter.handle_command`, `Agent`, `flows.get`); it
would otherwise take a tenth of a 96 KB heap.
"""

try:
    from . import compat, flows
except (ImportError, KeyError):
    import compat
    import flows

const = compat.const
_HAN_MAX = const(8)
_MAX_N = const(192)  # two days of 15-minute intervals
_DAY_N = const(96)  # a bulk (billing) read's default: a day
_MAX_HH = const(48)  # half-hourly rates in a price command: a day
# DLMS data-access-result codes, carried as `rc` in command errors.
_RC_HARDWARE = const(1)
_RC_UNDEFINED = const(4)
_RC_TYPE = const(12)


def handle(m, command):
    """Apply one command to meter `m`; a list of (family, content). Never raises."""
    try:
        return _dispatch(m, command)
    except Exception:  # a meter answers every command, whatever is wrong with it
        try:
            return _alert(m, None, "internal", None)
        except Exception:
            return []


def _is_int(value):
    # isinstance(True, int) is True on CPython and False on MicroPython: exclude bools on both.
    return isinstance(value, int) and not isinstance(value, bool)


def _flow(m, flow_id, ref=None, **args):
    if ref is not None:
        args["ref"] = ref
    return m.emit(flows.get(flow_id), m.now, args)


def _alert(m, ref, err, name, field=None):
    code = flows.EVENT_COMMAND_REFUSED
    return [_flow(m, "ev-audit-alert", ref, code=code, err=err, cmd=name, f=field)]


def _dispatch(m, c):
    if not isinstance(c, dict):
        return _refuse(m, None, None, "cmd", _RC_UNDEFINED)
    ref = c.get("id")
    name = c.get("cmd")
    if ref is not None and not (
        (isinstance(ref, str) and 0 < len(ref) <= 32) or (_is_int(ref) and ref >= 0)
    ):
        return _refuse(m, None, name, "id", _RC_TYPE)
    if name == "read" or name == "bulk":
        return _read(m, c, ref, name == "bulk")
    if name == "switch":
        return _switch(m, c, ref)
    if name == "dr":
        return _dr(m, c, ref)
    if name == "han-join" or name == "han-unjoin":
        return _han(m, c, ref, name)
    if name == "fw":
        return _fw(m, c, ref)
    if name == "price":
        return _price(m, c, ref)
    return _refuse(m, ref, name, "cmd", _RC_UNDEFINED)


def _refuse(m, ref, name, err, rc, field=None, src="hes"):
    """The command error of the on-demand read rows (electric) or an alert (gas)."""
    if not isinstance(name, str):
        name = None
    elif len(name) > 12:
        name = name[:12]
    if field is not None and len(field) > 8:
        field = field[:8]
    if m.kind == "gas":
        return _alert(m, ref, err, name, field)
    flow_id = ("pp-ondemand-err" if m.prepay else "mr-ondemand-err") + (
        "" if src == "hes" else "-" + src
    )
    return [_flow(m, flow_id, ref, err=err, cmd=name, rc=rc, field=field)]


def _unknown_field(command, allowed):
    # The smallest unknown name: the same answer whatever order the dict keeps (MicroPython).
    found = None
    for key in command:
        if key not in allowed:
            key = key if isinstance(key, str) else "?"
            if found is None or key < found:
                found = key
    return found


def _checked(m, c, ref, name, allowed, checks):
    """An alert for the first thing wrong with a command that alerts are the answer to (an
    unknown field, a gas meter, then the (error, ok) checks in order), else None."""
    bad = _unknown_field(c, allowed)
    if bad is not None:
        return _alert(m, ref, "field", name, bad[:8])
    if m.kind == "gas":
        return _alert(m, ref, "kind", name)
    for err, ok in checks:
        if not ok:
            return _alert(m, ref, err, name)
    return None


def _read(m, c, ref, bulk):
    src = c.get("src", "hes")
    if src not in ("hes", "ipd", "ems"):
        return _refuse(m, ref, "read", "src", _RC_TYPE)
    bad = _unknown_field(c, ("cmd", "id", "src", "n"))
    if bad is not None:
        return _refuse(m, ref, "read", "field", _RC_TYPE, bad, src)
    n = c.get("n", _DAY_N if bulk else None)
    if n is not None and not (_is_int(n) and 1 <= n <= _MAX_N):
        return _refuse(m, ref, "read", "n", _RC_TYPE, None, src)
    if m.kind == "gas":
        return [_flow(m, "gas-interval-%dh" % m.gas_period_h, ref)]
    if n is not None:
        return [_flow(m, "mr-multi-interval", ref, n=n)]
    flow_id = "pp-ondemand" if m.prepay else "mr-ondemand"
    return [_flow(m, flow_id if src == "hes" else flow_id + "-" + src, ref)]


def _switch(m, c, ref):
    if m.kind == "gas":
        return _alert(m, ref, "kind", "switch")
    bad = _unknown_field(c, ("cmd", "id", "op"))
    op = c.get("op")
    if bad is not None:
        err, field = "field", bad
    elif op not in ("connect", "disconnect", "status"):
        err, field = "op", None
    elif op == "status":
        return [_flow(m, "pp-switch-state", ref)]
    elif m.rng.chance(flows.get("pp-switch-fail")[flows.PER_CMD]):
        err, field = "fault", None
    else:
        state = 1 if op == "connect" else 0
        if state != m.switch:
            m.switch = state
            m.switch_ts = m.now
        return [_flow(m, "pp-switch-ack", ref), _flow(m, "pp-metrology", ref)]
    rc = _RC_HARDWARE if err == "fault" else _RC_TYPE
    return [_flow(m, "pp-switch-fail", ref, err=err, cmd="switch", rc=rc, field=field)]


def _dr(m, c, ref):
    ev = c.get("ev")
    prog = c.get("prog", "utl")
    src = c.get("src", "lms")
    dur = c.get("dur", 60)
    shed = c.get("shed", 30)
    start = c.get("start", m.now)
    wrong = _checked(m, c, ref, "dr", ("cmd", "id", "ev", "prog", "src", "dur", "shed", "start"), (
        ("ev", (_is_int(ev) and ev >= 0) or (isinstance(ev, str) and 0 < len(ev) <= 12)),
        ("prog", prog in ("utl", "repi")),
        ("src", src in ("lms", "dsm")),
        ("dur", _is_int(dur) and 1 <= dur <= 1440),
        ("shed", _is_int(shed) and 0 <= shed <= 100),
        ("start", _is_int(start) and start >= 0),
        ("enrol", prog in m.dr_programs),
    ))  # fmt: skip
    if wrong:
        return wrong
    suffix = "-" + src + "-" + prog
    if m.rng.chance(m.opt_out_rate):
        return [_flow(m, "dr-optout" + suffix, None, ev=ev)]
    m.dr_events.append([ev, start, start + dur * 60, shed])
    if len(m.dr_events) > 4:
        m.dr_events.pop(0)
    return [_flow(m, "dr-ack" + suffix, None, ev=ev, shed=shed)]


def _han(m, c, ref, name):
    if m.kind == "gas":
        return _alert(m, ref, "kind", name)
    by = c.get("by")
    if by not in (None, "utl", "repi"):
        return [_flow(m, name + "-err", ref, err="by")]
    err_id = name + "-err" + ("" if by is None else "-" + by)
    dev = c.get("dev")
    err = None
    if _unknown_field(c, ("cmd", "id", "dev", "by")) is not None:
        err = "field"
    elif not (isinstance(dev, str) and len(dev) == 16 and _is_hex(dev)):
        err = "dev"
    else:
        dev = dev.upper()
        joined = dev in m.han
        if name == "han-join" and not joined and len(m.han) >= _HAN_MAX:
            err = "full"
        elif name == "han-unjoin" and not joined:
            err = "notj"
        elif name == "han-join" and joined:
            pass  # joined already: acknowledged again, nothing can fail
        elif m.rng.chance(flows.get(err_id)[flows.PER_CMD]):
            err = "fault"
        elif name == "han-join":
            m.han.append(dev)
        else:
            m.han.remove(dev)
    if err is not None:
        return [_flow(m, err_id, ref, err=err)]
    return [_flow(m, name + "-ack-" + ("repi" if by == "repi" else "utl"), ref)]


def _fw(m, c, ref):
    target = c.get("target")
    image = c.get("image", "firmware")
    ver = c.get("ver")
    via = c.get("via", "net")
    wrong = _checked(m, c, ref, "fw", ("cmd", "id", "target", "image", "ver", "via"), (
        ("target", target in ("metrology", "nic")),
        ("image", image in ("firmware", "program")),
        ("ver", isinstance(ver, str) and 0 < len(ver) <= 16),
        ("via", via in ("net", "tool")),
    ))  # fmt: skip
    if wrong:
        return wrong
    m.versions[target + "-" + image] = ver
    flow_id = "fw-" + target + ("-fw" if image == "firmware" else "-prog")
    if via == "tool" and flow_id != "fw-nic-prog":
        flow_id += "-tool"
    return [_flow(m, flow_id, ref, target=target, image=image)]


def _price(m, c, ref):
    price = c.get("price")
    tier = c.get("tier", 0)
    hh = c.get("hh")
    start = c.get("start", 0)
    wrong = _checked(m, c, ref, "price", ("cmd", "id", "price", "tier", "start", "hh"), (
        ("price", _is_rate(price)),
        ("tier", _is_int(tier) and 0 <= tier <= 9),
        ("start", _is_int(start) and start >= 0),
        ("hh", hh is None or (isinstance(hh, list) and 0 < len(hh) <= _MAX_HH
            and all(_is_rate(r) for r in hh))),
    ))  # fmt: skip
    if wrong:
        return wrong
    m.price = price
    m.price_tier = tier
    m.price_start = start
    m.price_hh = hh
    return [_flow(m, "ev-audit-alert", ref, code=flows.EVENT_TARIFF, price=price)]


def _is_rate(value):
    return _is_int(value) and 0 <= value <= 1000000


def _is_hex(text):
    return all(ch in "0123456789abcdefABCDEF" for ch in text)


# ---- builders of the answers: (meter, ts, args, flow) -> data dict ----------------------


def _build_cmd_err(m, ts, a, flow):
    # A command error: what was wrong (`e`), which command, a DLMS data-access-result code.
    data = {
        "e": flows.arg(a, "err", "fault"),
        "cmd": flows.arg(a, "cmd", "read" if a is None else "?"),
    }
    if flows.arg(a, "field", None) is not None:
        data["f"] = a["field"]  # the unknown field (instead of the result code)
    else:
        data["rc"] = flows.arg(a, "rc", 1)
    return flows.ref(data, a)


def _build_switch_ack(m, ts, a, flow):
    return flows.ref({"sw": m.switch}, a)


def _build_switch_metrology(m, ts, a, flow):
    obis = {"1.8.0": m.wh_del, "2.8.0": m.wh_rcv, "1.7.0": m.watts(ts), "32.7.0": m.volts(ts)}
    return flows.ref({"sw": m.switch, "obis": obis}, a)


def _build_dr(m, ts, a, flow):
    # DR flows answer the event, not the command: the event id is the reference.
    if flow[flows.TYPE] == "ack":
        return {"ev": flows.arg(a, "ev", 0), "ok": 1, "sh": flows.arg(a, "shed", 0)}
    return {"ev": flows.arg(a, "ev", 0), "out": 1, "sh": 0}


def _build_han(m, ts, a, flow):
    if flow[flows.TYPE] == "ack":
        return flows.ref({"ok": 1, "n": len(m.han)}, a)
    return flows.ref({"e": flows.arg(a, "err", "fault")}, a)


def _build_fw(m, ts, a, flow):
    target = flows.arg(a, "target", "metrology")
    image = flows.arg(a, "image", "firmware")
    img = target + ("-fw" if image == "firmware" else "-prog")
    return flows.ref({"img": img, "ver": m.version(target, image)}, a)


BUILDERS = {
    "cmd-err": _build_cmd_err,
    "switch-ack": _build_switch_ack,
    "switch-metrology": _build_switch_metrology,
    "dr": _build_dr,
    "han": _build_han,
    "fw": _build_fw,
}
