"""`Esi`: an Energy Services Interface that relays gas meters' interval records to the DAP.

An ESI sits on the HAN side of a premises, either inside the electric meter (config `esi`
"meter": the seed's rows 16Ga, gas meter -> ESI, and 5Ba, ESI -> DAP) or as a utility's own
device for a group of gas meters (`esi` "utility": 16Gb, then 5Bb). A gas meter hands it each
interval record over the HAN (han.py); the ESI takes it only from the gas meters joined to it
(`members`, config `esi_members`) and puts it into its agent's store, to be written into the
ESI's OWN container `esi` at the DAP, as a message of the ESI's AE. It adds three members:

  gm   the gas meter's id
  rx   when the ESI received the record (the ESI's meter time, epoch seconds)
  via  "esi-meter" or "esi-utility"

The record's own members (flow, type, seq, ts and its data) stay as the gas meter made them.
The DAP knows the writer as the ESI (its AE, the gateway's label); the MDMS attributes the
record to the gas meter only if its configuration lists this ESI for that gas meter
(docs/security.md, "ESI relays").

In the store a relayed record is kept under the key "<via>:<flow>" (esi-meter:gas-interval-4h),
apart from the host meter's own flows: counted, shed and reported as relayed data.
"""

FAMILY = "esi"
RELAYED = ("gm", "rx", "via")  # the members an ESI adds


class Esi:
    """One ESI; `enqueue(family, content, key)` is its agent's store (Agent._enqueue)."""

    def __init__(self, esi_id, kind, members, now, enqueue):
        if kind not in ("meter", "utility"):
            raise ValueError("esi must be meter or utility")
        self.esi_id = esi_id
        self.via = "esi-" + kind
        self.members = tuple(members)
        self._now = now
        self._enqueue = enqueue
        self.received = 0
        self.refused = 0

    def receive(self, meter_id, record):
        """A record handed over the HAN; True if the ESI took it (queued for the DAP)."""
        if meter_id not in self.members or not isinstance(record, dict):
            self.refused += 1
            return False
        flow = record.get("flow")
        if not isinstance(flow, str):
            self.refused += 1
            return False
        record["gm"] = meter_id
        record["rx"] = self._now()
        record["via"] = self.via
        self.received += 1
        self._enqueue(FAMILY, record, self.via + ":" + flow)
        return True
