"""Subscriptions (TS-0001 9.6.8): checking a new or changed one, the defaults the CSE fills
in, and deciding who hears about an event. Reaching the targets: subscription_targets.py."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from cse.core.addressing import normalize_originator
from cse.core.errors import BadRequest, NotImplementedOperation
from cse.core.types import NotificationContentType as NCT
from cse.core.types import NotificationEventType as NET
from cse.core.types import Operation
from cse.core.types import ResourceType as T
from cse.storage.base import Resource

_DURATION = re.compile(r"^P(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)$")

# The content types (nct) each event type allows (TS-0001 9.6.8, as ACME checks them).
# An event type this CSE supports has a row here; adding one is adding its row and its
# NotificationEventType member.
ALLOWED_CONTENT: dict[int, frozenset[int]] = {
    NET.UPDATE_OF_RESOURCE: frozenset(
        {NCT.ALL_ATTRIBUTES, NCT.MODIFIED_ATTRIBUTES, NCT.RESOURCE_ID}
    ),
    NET.DELETE_OF_RESOURCE: frozenset({NCT.ALL_ATTRIBUTES, NCT.RESOURCE_ID}),
    NET.CREATE_OF_DIRECT_CHILD: frozenset({NCT.ALL_ATTRIBUTES, NCT.RESOURCE_ID}),
    NET.DELETE_OF_DIRECT_CHILD: frozenset({NCT.ALL_ATTRIBUTES, NCT.RESOURCE_ID}),
    NET.BLOCKING_UPDATE: frozenset({NCT.MODIFIED_ATTRIBUTES}),
    NET.REPORT_ON_GENERATED_MISSING_DATA_POINTS: frozenset({NCT.TIME_SERIES_NOTIFICATION}),
}
# The nct a subscription gets when it names none, by its first event type (TS-0004, ACME);
# every other event type gets all attributes.
DEFAULT_CONTENT: dict[int, int] = {
    NET.BLOCKING_UPDATE: NCT.MODIFIED_ATTRIBUTES,
    NET.REPORT_ON_GENERATED_MISSING_DATA_POINTS: NCT.TIME_SERIES_NOTIFICATION,
}
# Event types that hold an UPDATE until their one target agrees (cse/core/blocking.py).
BLOCKING_EVENTS = frozenset({int(NET.BLOCKING_UPDATE)})
# Members of eventNotificationCriteria (enc) evaluated here, and the spec's others, which
# are refused (5001) rather than silently ignored.
CRITERIA = {"net", "chty", "atr", "om", "md"}
_UNEVALUATED_CRITERIA = {"crb", "cra", "ms", "us", "sts", "stb", "exb", "exa", "sza", "szb"}
_UNEVALUATED_CRITERIA |= {"fo", "gq"}
# Subscription attributes that make no sense for a blocking subscription (as in ACME).
_NOT_WITH_BLOCKING = ("exc", "gpi", "nfu", "bn", "rl", "psn", "pn", "nsp", "ln", "nec")
_OPERATIONS = {int(op) for op in Operation if op != Operation.DISCOVER}
_STANDARD_CATEGORIES = {2, 3, 4}  # immediate, bestEffort, latest
_USER_CATEGORIES = range(100, 1000)


def parse_duration(value: Any) -> float:
    """Seconds from an ISO 8601 duration (PT5S, PT1M30S) or a number of milliseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1000.0
    if isinstance(value, str):
        if value.isdigit():
            return int(value) / 1000.0
        match = _DURATION.match(value)
        if match and any(match.groups()):
            hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
            return hours * 3600 + minutes * 60 + seconds
    raise BadRequest(f"duration {value!r} is not PTnHnMnS or milliseconds")


def event_types(subscription: Mapping[str, Any]) -> list[int]:
    """The event types a subscription asked for: net, [1] by default, none for one that
    monitors operations instead (om)."""
    criteria = subscription.get("enc") or {}
    if criteria.get("om"):
        return list(criteria.get("net") or [])
    return list(criteria.get("net") or [int(NET.UPDATE_OF_RESOURCE)])


def is_blocking(subscription: Mapping[str, Any]) -> bool:
    return bool(BLOCKING_EVENTS.intersection(event_types(subscription)))


# ---- checks ----------------------------------------------------------------------------------


def check_subscription(attributes: Mapping[str, Any]) -> None:
    """Reject criteria, content types and delivery options this CSE cannot honour (4000)."""
    criteria = attributes.get("enc") or {}
    _check_criteria(criteria)
    events = event_types(attributes)
    content_type = attributes.get("nct")
    if content_type is not None:
        if content_type not in {int(c) for c in NCT}:
            raise BadRequest("nct must be 1 (all attributes), 2 (modified) or 3 (resource ID)")
        if any(content_type not in ALLOWED_CONTENT.get(e, ()) for e in events):
            raise BadRequest(f"nct {content_type} is not allowed with the event types {events}")
    if BLOCKING_EVENTS.intersection(events):
        _check_blocking(attributes, criteria, events)
    _check_delivery(attributes)
    nu = attributes.get("nu")
    if nu is not None and not nu:
        raise BadRequest("nu must list at least one notification target")
    _check_missing_data(criteria, events, content_type)


def _check_criteria(criteria: Mapping[str, Any]) -> None:
    for name in criteria:
        if name in _UNEVALUATED_CRITERIA:
            raise NotImplementedOperation(f"enc/{name} is not supported by this CSE")
        if name not in CRITERIA:
            raise BadRequest(f"enc/{name} is not an event notification criterion")
    net = criteria.get("net")
    if net is not None and not (
        isinstance(net, list)
        and all(
            isinstance(e, int) and not isinstance(e, bool) and e in ALLOWED_CONTENT for e in net
        )
    ):
        supported = ", ".join(str(e) for e in sorted(ALLOWED_CONTENT))
        raise BadRequest(f"enc.net must be a list of supported event types ({supported})")
    for name, kind in (("chty", int), ("atr", str)):
        value = criteria.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, kind) for v in value)
        ):
            raise BadRequest(f"enc.{name} must be a list of {'types' if kind is int else 'names'}")
    monitors = criteria.get("om")
    if monitors is not None:
        _check_monitors(monitors, net)


def _check_monitors(monitors: Any, net: Any) -> None:
    """operationMonitor: a list of {ops, org}, each naming at least one; not beside net."""
    if net:
        raise BadRequest("enc.net and enc.om cannot be given together")
    if not isinstance(monitors, list) or not monitors:
        raise BadRequest("enc.om must be a list of operation monitors")
    for monitor in monitors:
        if not isinstance(monitor, dict) or not monitor or set(monitor) - {"ops", "org"}:
            raise BadRequest("each enc.om entry names an operation (ops), an originator (org)")
        operation = monitor.get("ops")
        if operation is not None and (isinstance(operation, bool) or operation not in _OPERATIONS):
            raise BadRequest("enc.om ops must be an operation 1..5")
        if "org" in monitor and not isinstance(monitor["org"], str):
            raise BadRequest("enc.om org must be an originator ID")


def _check_blocking(
    attributes: Mapping[str, Any], criteria: Mapping[str, Any], events: list[int]
) -> None:
    """A blocking subscription: its one event type, one target, enc/atr only, and none of the
    delivery options (ACME's rules; the spec names the one-per-resource rule, 4124)."""
    if len(events) > 1:
        raise BadRequest("a blocking event type must be the only one in enc.net")
    if len(attributes.get("nu") or []) > 1:
        raise BadRequest("a blocking subscription has exactly one notification target")
    extra = [name for name in _NOT_WITH_BLOCKING if attributes.get(name) is not None]
    if extra or set(criteria) - {"net", "atr"}:
        names = ", ".join(extra + sorted(set(criteria) - {"net", "atr"}))
        raise BadRequest(f"a blocking subscription cannot have {names}")


def _check_delivery(attributes: Mapping[str, Any]) -> None:
    pending = attributes.get("pn")
    if pending is not None and pending not in (1, 2):
        raise BadRequest("pn must be 1 (sendLatest) or 2 (sendAllPending)")
    count = attributes.get("exc")
    if count is not None and count < 1:
        raise BadRequest("exc must be at least 1")
    category = attributes.get("nec")
    if category is not None and not (
        category in _STANDARD_CATEGORIES or category in _USER_CATEGORIES
    ):
        raise BadRequest("nec must be 2 (immediate), 3 (bestEffort), 4 (latest) or 100..999")
    batch = attributes.get("bn")
    if batch is not None:
        number = batch.get("num")
        if number is not None and (not isinstance(number, int) or number < 1):
            raise BadRequest("bn.num must be a positive integer")
        if "dur" in batch:
            parse_duration(batch["dur"])


def check_child_types(criteria: Mapping[str, Any] | None, allowed: Collection[int]) -> None:
    """enc.chty may name only types the subscribed resource can hold (as ACME checks)."""
    for child_type in (criteria or {}).get("chty") or []:
        if child_type not in allowed:
            raise BadRequest(f"resource type {child_type} cannot be a child of this resource")


_MISSING_DATA = int(NET.REPORT_ON_GENERATED_MISSING_DATA_POINTS)


def _check_missing_data(criteria: dict[str, Any], events: list[int], content_type: Any) -> None:
    """Event type 8 (a timeSeries' missing data points) is reported as m2m:tsn (nct 5), which
    no other event type uses, once `md.num` points are missing within `md.dur` (TS-0004
    missingData); as ACME, it stands alone and needs both."""
    if _MISSING_DATA not in events:
        if content_type == NCT.TIME_SERIES_NOTIFICATION:
            raise BadRequest("nct 5 (time series notification) is only valid for event type 8")
        return
    if set(events) != {_MISSING_DATA}:
        raise BadRequest("event type 8 (missing data points) cannot be combined with others")
    if content_type not in (None, NCT.TIME_SERIES_NOTIFICATION):
        raise BadRequest("event type 8 (missing data points) is reported with nct 5")
    missing = criteria.get("md")
    if not isinstance(missing, dict) or "num" not in missing or "dur" not in missing:
        raise BadRequest("event type 8 needs enc.md with num and dur")
    number = missing["num"]
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise BadRequest("enc.md.num must be a positive integer")
    parse_duration(missing["dur"])


def check_subscribed(attributes: dict[str, Any], subscribed: Resource) -> None:
    """Missing data points (event type 8) are found only by a <timeSeries> (4000, as ACME)."""
    events = (attributes.get("enc") or {}).get("net") or []
    if _MISSING_DATA in events and subscribed.ty != T.TIME_SERIES:
        raise BadRequest("event type 8 (missing data points) needs a timeSeries to subscribe to")


def check_change(changes: Mapping[str, Any]) -> None:
    """A subscription does not become a blocking one by UPDATE (ACME refuses it too)."""
    criteria = changes.get("enc") or {}
    if BLOCKING_EVENTS.intersection(criteria.get("net") or []):
        raise BadRequest("a blocking event type can only be given when the subscription is made")


# ---- defaults --------------------------------------------------------------------------------


def defaults(attributes: Mapping[str, Any], batch_duration: float) -> dict[str, Any]:
    """What the CSE fills in (TS-0001 9.6.8 and ACME): enc with net [1] (none if it monitors
    operations), nct by the first event type, and bn/dur."""
    filled: dict[str, Any] = {}
    criteria = criteria_with_default(attributes.get("enc") or {})
    if criteria != attributes.get("enc"):
        filled["enc"] = criteria
    events = event_types({**attributes, **filled})
    if attributes.get("nct") is None and events:
        filled["nct"] = DEFAULT_CONTENT.get(events[0], int(NCT.ALL_ATTRIBUTES))
    batch = attributes.get("bn")
    if batch is not None and "dur" not in batch:
        filled["bn"] = {**batch, "dur": f"PT{batch_duration:g}S"}
    return filled


def criteria_with_default(criteria: Mapping[str, Any]) -> dict[str, Any]:
    """enc as kept: with net [1] unless it names event types or monitors operations."""
    if criteria.get("net") or criteria.get("om"):
        return dict(criteria)
    return {**criteria, "net": [int(NET.UPDATE_OF_RESOURCE)]}


# ---- who hears about an event -------------------------------------------------------------


def representation(
    subscription: Mapping[str, Any], subject: Resource, modified: dict[str, Any] | None
) -> dict[str, Any]:
    from cse.core.registry import spec_of

    content_type = subscription.get("nct", int(NCT.ALL_ATTRIBUTES))
    if content_type == NCT.RESOURCE_ID:
        return {"m2m:uri": subject.path}
    if content_type == NCT.MODIFIED_ATTRIBUTES and modified is not None:
        return {spec_of(subject).key: modified}
    return {spec_of(subject).key: subject.attributes}


def wants(
    subscription: Mapping[str, Any],
    event: NET,
    subject: Resource,
    modified: Mapping[str, Any] | None = None,
) -> bool:
    if int(event) not in event_types(subscription):
        return False
    criteria = subscription.get("enc") or {}
    if event == NET.UPDATE_OF_RESOURCE and criteria.get("atr") and modified is not None:
        return touches(criteria["atr"], modified)
    if event in (NET.CREATE_OF_DIRECT_CHILD, NET.DELETE_OF_DIRECT_CHILD):
        child_types = criteria.get("chty")
        if child_types and subject.ty not in child_types:
            return False
        # A sibling subscription coming or going is news only to a subscriber that named
        # subscriptions in chty (then, as in ACME, every other one hears of it). Otherwise
        # each new subscription would notify all earlier ones: n subscriptions, n²/2 notices.
        if subject.ty == T.SUBSCRIPTION and not child_types:
            return False
    return True


def touches(attribute_names: list[str], changed: Mapping[str, Any]) -> bool:
    """enc/atr: did a change touch one of the named attributes?"""
    return any(name in changed for name in attribute_names)


def monitors(subscription: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((subscription.get("enc") or {}).get("om") or [])


def monitored(
    subscription: Mapping[str, Any], operation: Operation, originator: str, cse_id: str
) -> dict[str, Any] | None:
    """operationMonitor (enc/om): the operation as notified if one monitor matches it (an
    org in SP-relative form names the same AE as its AE-ID)."""
    for monitor in monitors(subscription):
        if monitor.get("ops") not in (None, int(operation)):
            continue
        org = monitor.get("org")
        if org is not None and normalize_originator(org, cse_id) != originator:
            continue
        return {"ops": int(operation), "org": originator}
    return None


def notification_event(
    subscription: dict[str, Any],
    event: NET | None,
    subject: Resource,
    modified: dict[str, Any] | None,
    operation: tuple[Operation, str, str] | None,
) -> dict[str, Any] | None:
    """The notificationEvent (nev) a subscription is sent, or None if it wants none: the
    operation, for one monitoring operations (om, without net: no event type fits it, and
    nothing to represent); else the event type and the subject as nct asks. `operation` is
    (operation, originator, this CSE's ID)."""
    if operation is not None:
        monitor = monitored(subscription, *operation)
        if monitor is not None:
            return {"om": monitor}
    if event is None or not wants(subscription, event, subject, modified):
        return None
    return {
        "rep": representation(subscription, subject, modified),
        "net": int(event),
    }
