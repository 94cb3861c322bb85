"""Notification statistics of a subscription (notificationStatsEnable `nse`,
notificationStatsInfo `nsi`; TS-0001 9.6.8, TS-0004 m2m:notificationStatsInfo), kept as ACME
keeps them.

While `nse` is true, each target in `nu` has an entry {tg, rqs, rsr, noec}: the notification
requests sent to it (each notification of a batch counts), the responses received, and the
events that made notifications for the subscription. `nsi` appears with the first count.
Setting `nse` to false keeps the figures; setting it to true (again) starts them afresh;
removing `nse` removes `nsi`. A target removed from `nu` loses its entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Stats = list[dict[str, Any]]


def _fresh(target: str) -> dict[str, Any]:
    return {"tg": target, "rqs": 0, "rsr": 0, "noec": 0}


def reconciled(stats: Stats, targets: list[str]) -> Stats:
    """One entry per target, in the order of `nu`, keeping the figures of known targets."""
    known = {entry["tg"]: entry for entry in stats}
    return [dict(known.get(target) or _fresh(target)) for target in targets]


def count_event(subscription: Mapping[str, Any]) -> Stats | None:
    """The statistics after one more notification event, or None when not counting."""
    if not subscription.get("nse"):
        return None
    stats = reconciled(subscription.get("nsi") or [], list(subscription.get("nu") or []))
    for entry in stats:
        entry["noec"] += 1
    return stats


def count_delivery(
    subscription: Mapping[str, Any], target: str, sent: int, answered: bool
) -> Stats | None:
    """The statistics after `sent` notifications went to `target` (and were answered), or
    None when not counting or the target is not one of `nu` (a deletion notice to su)."""
    targets = list(subscription.get("nu") or [])
    if not subscription.get("nse") or target not in targets:
        return None
    stats = reconciled(subscription.get("nsi") or [], targets)
    for entry in stats:
        if entry["tg"] == target:
            entry["rqs"] += sent
            entry["rsr"] += sent if answered else 0
    return stats


def on_update(current: Mapping[str, Any], values: dict[str, Any]) -> None:
    """Adjust an UPDATE's values: nse true or removed drops the figures, a changed nu drops
    the entries of removed targets."""
    if "nse" in values and values["nse"] is not False:
        values["nsi"] = None  # removed: counting starts afresh (or stops)
        return
    stats = current.get("nsi")
    if stats is not None and values.get("nu") is not None:
        values["nsi"] = reconciled(stats, list(values["nu"]))
