"""How a batch of new messages updates the summary tables (meters, registers, flows,
message_days) and completes the commands the messages answer.

Both backends run these statements in the transaction that inserted the messages, and only
for the messages that were new, so a message delivered twice is counted once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from headend.store.records import ALARM_TYPE, ERROR_TYPE, MessageRow
from headend.store.sql import (
    COMPLETE_COMMAND,
    UPSERT_FLOW,
    UPSERT_MESSAGE_DAY,
    UPSERT_METER,
    UPSERT_REGISTER,
    Statement,
)


def summary_statements(new: Sequence[MessageRow]) -> list[Statement]:
    """The summary-table updates for the messages that were new in a batch.

    Rows are aggregated per meter, register and flow, and sorted, so that concurrent writers
    lock rows in the same order.
    """
    meters: dict[str, list[Any]] = {}
    registers: dict[tuple[str, str], tuple[float, float]] = {}
    flows: dict[tuple[str, str, str], list[Any]] = {}
    days: dict[tuple[int, str], int] = {}
    completions: dict[str, tuple[Any, ...]] = {}
    for row in new:
        m = row.message
        entry = meters.get(m.meter)
        if entry is None:
            entry = meters[m.meter] = [m.dap, m.received_at, m.received_at, 0, 0, None, None]
        if m.received_at >= entry[2]:
            entry[0] = m.dap
        entry[1] = min(entry[1], m.received_at)
        entry[2] = max(entry[2], m.received_at)
        entry[3] += 1
        entry[4] += m.ptype == ALARM_TYPE
        if row.switch is not None and (entry[6] is None or row.reading_time >= entry[6]):
            entry[5], entry[6] = row.switch, row.reading_time
        for code, value in row.registers.items():
            known = registers.get((m.meter, code))
            if known is None or row.reading_time >= known[1]:
                registers[(m.meter, code)] = (value, row.reading_time)
        stats = flows.get((m.family, m.flow, m.ptype))
        if stats is None:
            stats = flows[(m.family, m.flow, m.ptype)] = [0, 0, row.latency, m.budget_s]
        stats[0] += 1
        stats[1] += m.budget_s is not None and row.latency <= m.budget_s
        stats[2] = max(stats[2], row.latency)
        if m.budget_s is not None and (stats[3] is None or m.budget_s < stats[3]):
            stats[3] = m.budget_s
        days[(row.day, m.family)] = days.get((row.day, m.family), 0) + 1
        if row.ref is not None:
            status = "failed" if m.ptype == ERROR_TYPE else "answered"
            for command_id in (row.ref, f"{row.ref}@{m.meter}"):
                if command_id not in completions:
                    completions[command_id] = (status, row.params[-1], m.received_at, command_id)
    return [
        (UPSERT_METER, [(meter, *meters[meter]) for meter in sorted(meters)]),
        (UPSERT_REGISTER, [(*key, *registers[key]) for key in sorted(registers)]),
        (UPSERT_FLOW, [(*key, *flows[key]) for key in sorted(flows)]),
        (UPSERT_MESSAGE_DAY, [(*key, days[key]) for key in sorted(days)]),
        (COMPLETE_COMMAND, [completions[ref] for ref in sorted(completions)]),
    ]
