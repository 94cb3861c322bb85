"""The head-end's stub applications, each a thin layer over `CommandService` and the store.

They stand in for the utility systems of the SGIP/OpenSG tables:

  CIS/Billing   bulk reads of many meters in batches: CIS asks, the head-end fans a
                multiple-interval read out to the DAPs, the answers come back to the MDMS
  LMS / DR      demand-response / direct-load-control events to groups of meters, and the
                collection of their acks and opt-outs
  Pre-pay       service switch (connect / disconnect / status)
  Firmware      firmware and program updates of the metrology or the NIC
  Price         price / tariff signals (the PHEV charging rate)
  DMS           communication-failure and outage reports, read from what the MDMS stored

Commands to many meters are grouped per DAP (one group and one fan-out request each).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from headend.commands import CommandError, CommandService, Issued
from headend.store import MdmsStore

BILLING_BATCH = 50


class HeadendApps:
    def __init__(self, commands: CommandService, store: MdmsStore) -> None:
        self.commands = commands
        self.store = store

    async def _by_dap(self, meters: Sequence[str]) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for meter in meters:
            grouped.setdefault(await self.commands.dap_of(meter), []).append(meter)
        return grouped

    async def to_meters(
        self, meters: Sequence[str], body: dict[str, Any], issued_by: str
    ) -> list[Issued]:
        """One command to each meter: directly for one, by a group per DAP for several."""
        if not meters:
            raise CommandError("no meters given")
        if len(meters) == 1:
            return [await self.commands.issue(meters[0], body, issued_by=issued_by)]
        issued = []
        for dap, members in (await self._by_dap(meters)).items():
            issued.append(
                await self.commands.issue_to_group(members, body, dap=dap, issued_by=issued_by)
            )
        return issued

    # ---- CIS / Billing ------------------------------------------------------------------

    async def bulk_read(
        self, meters: Sequence[str], intervals: int = 96, batch: int = BILLING_BATCH
    ) -> list[Issued]:
        """A billing cycle's interval data: multiple-interval reads in batches of meters."""
        if not 1 <= intervals <= 192:
            raise CommandError("intervals must be 1..192 (two days of 15-minute data)")
        issued: list[Issued] = []
        for start in range(0, len(meters), max(1, batch)):
            part = meters[start : start + batch]
            issued.extend(await self.to_meters(part, {"cmd": "read", "n": intervals}, "billing"))
        return issued

    # ---- LMS / demand response ----------------------------------------------------------

    async def dr_event(
        self,
        meters: Sequence[str],
        event: int | str,
        *,
        minutes: int = 60,
        shed: int = 30,
        program: str = "utl",
        source: str = "lms",
    ) -> list[Issued]:
        body = {"cmd": "dr", "ev": event, "dur": minutes, "shed": shed, "prog": program}
        body["src"] = source
        return await self.to_meters(meters, body, "lms")

    async def dr_outcome(self, issued: Sequence[Issued]) -> dict[str, Any]:
        """Who acknowledged, who opted out, who has not answered yet."""
        acked, opted_out, pending = [], [], []
        for command in issued:
            for meter in command.meters:
                command_id = command.id if len(command.meters) == 1 else f"{command.id}@{meter}"
                record = await self.store.command(command_id) or {}
                result = record.get("result") or {}
                flow = result.get("flow", "") if isinstance(result, dict) else ""
                if flow.startswith("dr-ack"):
                    acked.append(meter)
                elif flow.startswith("dr-optout"):
                    opted_out.append(meter)
                else:
                    pending.append(meter)
        return {"acked": acked, "opted_out": opted_out, "pending": pending}

    # ---- pre-pay, firmware, price ---------------------------------------------------------

    async def switch(self, meter: str, operation: str) -> Issued:
        if operation not in ("connect", "disconnect", "status"):
            raise CommandError("switch op must be connect, disconnect or status")
        return await self.commands.issue(
            meter, {"cmd": "switch", "op": operation}, issued_by="prepay"
        )

    async def firmware(
        self, meters: Sequence[str], target: str, version: str, image: str = "firmware"
    ) -> list[Issued]:
        body = {"cmd": "fw", "target": target, "ver": version, "image": image}
        return await self.to_meters(meters, body, "firmware")

    async def price(self, meters: Sequence[str], price: int, tier: int = 0) -> list[Issued]:
        return await self.to_meters(meters, {"cmd": "price", "price": price, "tier": tier}, "price")

    # ---- DMS ------------------------------------------------------------------------------

    async def dms_reports(self, limit: int = 100) -> list[dict[str, Any]]:
        """Communication failures and outage alarms, newest first."""
        events = await self.store.recent_messages(family="event", limit=max(limit, 100))
        wanted = [m for m in events if m.get("ptype") in ("comm-err", "alarm")]
        return wanted[:limit]
