"""The HAN side of a premises: how a gas meter hands an interval record to its ESI.

A gas meter behind an ESI (esi.py) does not send its interval data to the DAP itself: its
agent's schedule goes through the HAN's `sink(family, content)`, which hands each interval
record (the `reading` family) to the ESI and puts the meter's other flows (events) into the
meter's own store (`enqueue`, which the Agent sets). The ESI side is `attach(esi)`; the ESI's
`receive(meter_id, record)` answers whether it took the record.

`LocalHan` is the in-process hand-off the fleet emulator uses: the gas meter and its ESI are
agents of the same process, so a record goes to the ESI as the dict the gas meter built (no
copy: the gas meter lets it go). A board with a HAN radio (ZigBee Smart Energy, Wi-SUN, ...)
would put `sink` over its radio instead. One LocalHan per gas meter:

    han = LocalHan("mtr-000045", "esi-meter")
    han.attach(esi)                              # the ESI's side
    gas = Agent(config, han=han)                 # the gas meter's side
"""


class LocalHan:
    """One gas meter's HAN link to its ESI in this process; counts what it handed over."""

    def __init__(self, meter_id, via=None):
        self.meter_id = meter_id
        self.via = via  # "esi-meter" or "esi-utility": which ESI this HAN leads to
        self.esi = None
        self.enqueue = None  # the gas meter's own store (Agent sets it)
        self.handed = {}  # flow id -> records handed to the ESI
        self.failed = 0  # of those, refused by the ESI or with no ESI attached

    def attach(self, esi):
        self.esi = esi

    def sink(self, family, content):
        if family != "reading":
            self.enqueue(family, content)
            return
        flow = content.get("flow")
        self.handed[flow] = self.handed.get(flow, 0) + 1
        esi = self.esi
        if esi is None or not esi.receive(self.meter_id, content):
            self.failed += 1
