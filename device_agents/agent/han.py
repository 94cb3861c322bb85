"""The HAN side of a premises: how a gas meter hands an interval record to its ESI.

A gas meter behind an ESI (esi.py) does not send its interval data to the DAP itself: it
hands each record over the home area network to the ESI, which relays it. The agent sees
the HAN as one method, `send(meter_id, record) -> bool` (True: the ESI took it), and the ESI
side as `attach(esi)`.

`LocalHan` is the in-process hand-off the fleet emulator uses: the gas meter and its ESI are
agents of the same process, so `send` calls the ESI's `receive` directly, with the record as
the dict the gas meter built (no copy: the gas meter lets it go). A board with a HAN radio
(ZigBee Smart Energy, Wi-SUN, ...) would put the same two methods over its radio.

    han = LocalHan()
    han.attach(esi)                          # the ESI's side
    taken = han.send("mtr-000045", record)   # the gas meter's side
"""


class LocalHan:
    """A HAN whose ESI lives in this process; counts what it carried and what it could not."""

    def __init__(self, via=None):
        self.via = via  # "esi-meter" or "esi-utility": which ESI this HAN leads to
        self.esi = None
        self.carried = 0
        self.failed = 0  # no ESI attached yet, or the ESI refused the record

    def attach(self, esi):
        self.esi = esi

    def send(self, meter_id, record):
        esi = self.esi
        if esi is not None and esi.receive(meter_id, record):
            self.carried += 1
            return True
        self.failed += 1
        return False
