"""The head-end's stub applications, each a thin layer over `CommandService` and the store.

They stand in for the utility systems of the SGIP/OpenSG tables:

  CIS/Billing   bulk reads of many meters in batches: CIS asks (headend/cis.py), the MDMS
                has the head-end fan a multiple-interval read out to the DAPs
                (headend/bulk_reads.py), the answers come back to the MDMS, which sends
                them on to CIS; `bulk_read` is the same read asked directly
  LMS / DR      demand-response / direct-load-control events to groups of meters, and the
                collection of their acks and opt-outs
  Pre-pay       service switch (connect / disconnect / status)
  Firmware      firmware and program updates of the metrology or the NIC, kept as oneM2M
                device management: a <node> per meter and a <firmware> per image on its
                DAP (headend/firmware.py)
  Price         price / tariff signals (the PHEV charging rate)
  DMS           communication-failure and outage reports, read from what the MDMS stored

Commands to many meters are grouped per DAP (one group and one fan-out request each).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cse.core.types import ResponseStatusCode as RSC
from headend.commands import CommandError, CommandService, Issued
from headend.firmware import FirmwareUpdates
from headend.store import MdmsStore

BILLING_BATCH = 50
DAY_INTERVALS = 96  # a billing read's default: one day of 15-minute intervals

# The lab utility's time-of-use day in half hours, as percent of the base rate: off-peak
# to 07:00 and from 22:00, peak 16:00-20:00. A price signal carries the day's 48 rates (a
# 255-byte row in the PHEV table: the rate alone would be a fifth of it).
TOU_DAY_PERCENT = (60,) * 14 + (100,) * 18 + (160,) * 8 + (100,) * 4 + (60,) * 4


@dataclass
class BulkReadSent:
    """What a bulk read to many meters became: each meter's command id (the id its answer's
    `ref` names, "<group command>@<meter>" for a group), or why it got none."""

    commands: dict[str, str] = field(default_factory=dict)
    not_sent: dict[str, str] = field(default_factory=dict)


class HeadendApps:
    def __init__(self, commands: CommandService, store: MdmsStore) -> None:
        self.commands = commands
        self.store = store
        self.firmware_updates = FirmwareUpdates(commands.cse, commands, store)

    async def to_meters(
        self, meters: Sequence[str], body: dict[str, Any], issued_by: str
    ) -> list[Issued]:
        """One command to each meter: directly for one, by a group per DAP for several."""
        if not meters:
            raise CommandError("no meters given")
        if len(meters) == 1:
            return [await self.commands.issue(meters[0], body, issued_by=issued_by)]
        issued = []
        for dap, members in (await self.commands.by_dap(meters)).items():
            issued.append(
                await self.commands.issue_to_group(members, body, dap=dap, issued_by=issued_by)
            )
        return issued

    # ---- CIS / Billing ------------------------------------------------------------------

    async def bulk_read(
        self, meters: Sequence[str], intervals: int = DAY_INTERVALS, batch: int = BILLING_BATCH
    ) -> list[Issued]:
        """A billing cycle's interval data: multiple-interval reads in batches of meters."""
        body = bulk_read_command(intervals)
        issued: list[Issued] = []
        for start in range(0, len(meters), max(1, batch)):
            part = meters[start : start + batch]
            issued.extend(await self.to_meters(part, body, "billing"))
        return issued

    async def bulk_read_each(
        self, meters: Sequence[str], intervals: int = DAY_INTERVALS
    ) -> BulkReadSent:
        """The MDMS's side of a CIS request: a bulk read to every meter, by a group per DAP,
        where one meter it cannot reach (unknown, its DAP refused) costs only that meter."""
        body = bulk_read_command(intervals)
        sent = BulkReadSent()
        by_dap: dict[str, list[str]] = {}
        for meter in dict.fromkeys(meters):
            try:
                by_dap.setdefault(await self.commands.dap_of(meter), []).append(meter)
            except CommandError as error:
                sent.not_sent[meter] = str(error)
        for dap, members in by_dap.items():
            try:
                if len(members) == 1:
                    issued = await self.commands.issue(
                        members[0], body, dap=dap, issued_by="billing"
                    )
                else:
                    issued = await self.commands.issue_to_group(
                        members, body, dap=dap, issued_by="billing"
                    )
            except CommandError as error:
                sent.not_sent.update(dict.fromkeys(members, str(error)))
                continue
            for meter in members:
                if issued.status != RSC.CREATED:
                    why = f"DAP {dap} answered {issued.status} {issued.detail}".strip()
                    sent.not_sent[meter] = why
                elif len(members) == 1:
                    sent.commands[meter] = issued.id
                else:
                    sent.commands[meter] = f"{issued.id}@{meter}"
        return sent

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
        self,
        meters: Sequence[str],
        target: str,
        version: str,
        image: str = "firmware",
        url: str | None = None,
    ) -> list[Issued]:
        """Through each meter's <firmware> on its DAP (headend/firmware.py): the update is
        triggered there, the meters get the fw command, their answers end it there."""
        return await self.firmware_updates.update(meters, target, version, image, url)

    async def price(
        self,
        meters: Sequence[str],
        price: int,
        tier: int = 0,
        half_hours: Sequence[int] | None = None,
    ) -> list[Issued]:
        """A price signal: the rate in force (milli-currency per kWh) and its tier, and the
        rates of today's half hours from UTC midnight (by default the time-of-use day of
        `price`); the meter charges pre-pay credit at the half hour's rate."""
        start = int(self.commands.clock()) // 86400 * 86400
        body = price_command(price, tier, start, half_hours)
        return await self.to_meters(meters, body, "price")

    # ---- DMS ------------------------------------------------------------------------------

    async def dms_reports(self, limit: int = 100) -> list[dict[str, Any]]:
        """Communication failures and outage alarms, newest first."""
        events = await self.store.recent_messages(family="event", limit=max(limit, 100))
        wanted = [m for m in events if m.get("ptype") in ("comm-err", "alarm")]
        return wanted[:limit]


def tou_day(price: int) -> list[int]:
    """The half-hourly rates of the lab's time-of-use day around a base rate."""
    return [price * percent // 100 for percent in TOU_DAY_PERCENT]


def bulk_read_command(intervals: int = DAY_INTERVALS) -> dict[str, Any]:
    """A billing read: the meter's `bulk` command reads a day unless told otherwise, so the
    request (a 25-byte row) carries nothing but its name, and its id once issued."""
    if not 1 <= intervals <= 192:
        raise CommandError("intervals must be 1..192 (two days of 15-minute data)")
    body: dict[str, Any] = {"cmd": "bulk"}
    if intervals != DAY_INTERVALS:
        body["n"] = intervals
    return body


def price_command(
    price: int, tier: int, start: int, half_hours: Sequence[int] | None = None
) -> dict[str, Any]:
    """A price signal from `start`: the rate in force, its tier and the half hours' rates
    (by default the time-of-use day of `price`)."""
    rates = list(half_hours) if half_hours is not None else tou_day(price)
    if not 1 <= len(rates) <= 48 or not all(0 <= r <= 1000000 for r in [price, *rates]):
        raise CommandError("price and half-hourly rates must be 0..1000000, 1..48 of them")
    return {"cmd": "price", "price": price, "tier": tier, "start": start, "hh": rates}
