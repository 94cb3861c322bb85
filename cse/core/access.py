"""Access control: who may do what to a resource (TS-0001 7.1, 9.6.2).

A resource with `acpi` is governed by those accessControlPolicies' `pv` rules (their own
`pvs` for changes to the policies and to `acpi`). A resource without one, or whose policies
have all been deleted, follows the default rule: the originator that created it (or its
custodian, `cstn`, in its place), and the AE it lives under, have full access, and nobody
else; registered entities may also read the CSEBase and create accessControlPolicies under
it. Resources with no `acpi` attribute at all (contentInstances) take their parent's rights.
The admin originator, the CSE itself and the configured trusted originators (a gateway's
head-end) pass every check.

A rule applies when its `acop` holds the operation's bit, one of its contexts (`acco`, time
windows `actw`) holds now, and its `acor` names the originator: `all`, the originator's ID
(with `*` wildcards), or a group the originator is a member of (nested groups too, reading at
most `max_group_reads_per_check` groups per decision). A rule with `aca` grants only those
attributes: the request must touch no others (ACME's reading of TS-0001 R4).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from cse.core import schedule
from cse.core.addressing import normalize_originator
from cse.core.clock import Clock, format_timestamp
from cse.core.config import CSESettings
from cse.core.errors import OriginatorHasNoPrivilege
from cse.core.registry import SPECS
from cse.core.types import OPERATION_BITS, Operation
from cse.core.types import ResourceType as T
from cse.storage.base import Resource, Storage

logger = logging.getLogger(__name__)

# Operations an attribute-limited rule (aca) can grant; ACME grants no other through one.
_ATTRIBUTE_OPERATIONS = {Operation.CREATE, Operation.RETRIEVE, Operation.UPDATE, Operation.DELETE}


@dataclass(frozen=True, slots=True)
class Permission:
    """Granted access: to the whole resource, or only to these attributes (aca rules)."""

    attributes: frozenset[str] | None = None


WHOLE = Permission()


@dataclass(slots=True)
class _Decision:
    """One access decision: what is asked, and how many groups it may still read."""

    originator: str
    bit: int
    operation: Operation
    now: float
    member_ids: frozenset[str]  # how the originator appears in a group's mid
    group_reads_left: int


def _may_name_group(identifier: str) -> bool:
    """Could this acor or mid entry be a group of this CSE? Saves a read for most entries."""
    if not identifier or identifier.startswith("/") or "*" in identifier:
        return False  # another CSE's resource, or a wildcard
    if "/" in identifier:
        return True  # a structured path
    return identifier[0] not in "CS"  # AE-IDs (C… / S…, TS-0001 7.2) name AEs


def _context_holds(context: Any, now: float) -> bool:
    # Written policies hold only actw (access_control_policy.py); anything else, from an
    # older database, fails closed.
    if not isinstance(context, dict) or set(context) != {"actw"}:
        return False
    try:
        return any(schedule.matches(window, now) for window in context["actw"])
    except (TypeError, ValueError):
        return False


def _rule_applies(rule: dict[str, Any], decision: _Decision) -> bool:
    """The operation and context parts of a rule (acor is checked after, as it may read)."""
    acop = rule.get("acop")
    if not isinstance(acop, int) or not acop & decision.bit:
        return False
    if "acod" in rule or rule.get("acaf"):
        return False  # restrictions this CSE does not evaluate: never read as a grant
    contexts = rule.get("acco")
    if contexts is None:
        return True
    return isinstance(contexts, list) and any(_context_holds(c, decision.now) for c in contexts)


class AccessControl:
    def __init__(self, storage: Storage, settings: CSESettings, clock: Clock) -> None:
        self._storage = storage
        self._settings = settings
        self._clock = clock

    def is_privileged(self, originator: str) -> bool:
        settings = self._settings
        if originator in (settings.admin_originator, settings.cse_id, settings.cse_ri):
            return True
        return any(
            originator == trusted or originator.startswith(trusted + "/")
            for trusted in settings.trusted_originators
        )

    async def permission(
        self,
        originator: str,
        operation: Operation,
        resource: Resource,
        attributes: Collection[str] | None = None,
        *,
        child_type: int | None = None,
    ) -> Permission | None:
        """What the originator may do to `resource` (None: nothing). `attributes` are those
        the request touches (None: the whole resource); `child_type` is what a CREATE makes."""
        if self.is_privileged(originator):
            return WHOLE
        decision = self._decision(originator, operation)
        governing = resource
        while not SPECS[governing.ty].has_acpi:
            if governing.ty == T.ACCESS_CONTROL_POLICY:
                return await self._grant(decision, [governing], "pvs", resource, attributes)
            parent = await self._storage.get(governing.pi)
            if parent is None:
                return None
            governing = parent
        policies = await self._policies(governing.attributes.get("acpi") or [])
        if policies:
            return await self._grant(decision, policies, "pv", resource, attributes)
        if await self._default_allows(originator, operation, governing, child_type):
            return WHOLE
        return None

    async def allowed(
        self,
        originator: str,
        operation: Operation,
        resource: Resource,
        attributes: Collection[str] | None = None,
    ) -> bool:
        return await self.permission(originator, operation, resource, attributes) is not None

    async def check(
        self,
        originator: str,
        operation: Operation,
        resource: Resource,
        attributes: Collection[str] | None = None,
        *,
        child_type: int | None = None,
    ) -> Permission:
        granted = await self.permission(
            originator, operation, resource, attributes, child_type=child_type
        )
        if granted is None:
            raise OriginatorHasNoPrivilege(
                f"originator {originator} has no {operation.name} privilege on {resource.path}"
            )
        return granted

    async def check_policy_change(self, originator: str, resource: Resource) -> None:
        """Changing acpi needs UPDATE in the self-privileges of the policies now in force
        (TS-0001 9.6.1.3.2); with none in force, the default rule decides."""
        if self.is_privileged(originator):
            return
        policies = await self._policies(resource.attributes.get("acpi") or [])
        if not policies:
            if await self._default_allows(originator, Operation.UPDATE, resource, None):
                return
        else:
            decision = self._decision(originator, Operation.UPDATE)
            if await self._grant(decision, policies, "pvs", resource, ("acpi",)) is not None:
                return
        raise OriginatorHasNoPrivilege(f"originator {originator} may not change acpi")

    # ---- rules ----------------------------------------------------------------------------

    def _decision(self, originator: str, operation: Operation) -> _Decision:
        member_ids = {originator}
        if originator.startswith("/") and originator.count("/") == 1:
            member_ids.add(originator[1:])  # a CSE is a member as its remoteCSE's ri
        return _Decision(
            originator,
            OPERATION_BITS[operation],
            operation,
            self._clock.now(),
            frozenset(member_ids),
            self._settings.limits.max_group_reads_per_check,
        )

    async def _grant(
        self,
        decision: _Decision,
        policies: list[Resource],
        which: str,
        resource: Resource,
        attributes: Collection[str] | None,
    ) -> Permission | None:
        limited: set[str] = set()
        for policy in policies:
            whole, some = await self._rules_grant(policy.attributes.get(which), decision)
            if whole:
                return WHOLE
            limited |= some
        if not limited or decision.operation not in _ATTRIBUTE_OPERATIONS:
            return None
        wanted = set(resource.attributes if attributes is None else attributes)
        return Permission(frozenset(limited)) if wanted <= limited else None

    async def _rules_grant(self, privileges: Any, decision: _Decision) -> tuple[bool, set[str]]:
        """(a rule grants the whole resource, the attributes limited rules grant)."""
        some: set[str] = set()
        rules = privileges.get("acr") if isinstance(privileges, dict) else None
        for rule in rules or ():
            if not isinstance(rule, dict) or not _rule_applies(rule, decision):
                continue
            if not await self._names(rule.get("acor") or (), decision):
                continue
            # ACME collects aca before it checks acor, granting them to everyone; not here.
            limited = rule.get("aca")
            if not limited:  # absent, or empty as ACME reads it: the whole resource
                return True, some
            some.update(name for name in limited if isinstance(name, str))
        return False, some

    async def _names(self, entries: Iterable[Any], decision: _Decision) -> bool:
        """Does an acor name the originator, directly, by a wildcard or through a group?"""
        groups: list[str] = []
        for entry in entries:
            if not isinstance(entry, str):
                continue
            if entry == "all":
                return True
            candidate = normalize_originator(entry, self._settings.cse_id)
            originator = decision.originator
            if candidate == originator or ("*" in candidate and fnmatchcase(originator, candidate)):
                return True
            if _may_name_group(candidate):
                groups.append(candidate)
        return bool(groups) and await self._in_groups(groups, decision)

    async def _in_groups(self, identifiers: list[str], decision: _Decision) -> bool:
        """Breadth first through groups and their member groups, each read once; stops when
        the decision's read budget is spent (a cycle or a deep nest costs no more)."""
        queue = deque(identifiers)
        seen: set[str] = set()
        while queue:
            identifier = queue.popleft()
            if identifier in seen:
                continue
            seen.add(identifier)
            if decision.group_reads_left <= 0:
                logger.info(
                    "access check for %s read %d groups, its limit; the rest are not followed",
                    decision.originator,
                    self._settings.limits.max_group_reads_per_check,
                )
                return False
            decision.group_reads_left -= 1
            group = await self._find(identifier)
            if group is None or group.ty != T.GROUP:
                continue
            members = [m for m in group.attributes.get("mid") or () if isinstance(m, str)]
            if not decision.member_ids.isdisjoint(members):
                return True
            if group.attributes.get("mt", 0) in (0, T.GROUP):  # mixed, or groups of groups
                queue.extend(m for m in members if m not in seen and _may_name_group(m))
        return False

    # ---- lookups and the default rule -----------------------------------------------------

    async def _find(self, identifier: str) -> Resource | None:
        """A live resource of this CSE by resource ID or structured path, in any form."""
        settings = self._settings
        key = normalize_originator(identifier, settings.cse_id)
        if key.startswith("-/"):
            key = settings.cse_name + key[1:]
        if key == settings.cse_name or key.startswith(settings.cse_name + "/"):
            found = await self._storage.get_by_path(key)
        else:
            found = await self._storage.get(key)
        now = format_timestamp(self._clock.now())
        if found is None or (found.et is not None and found.et < now):
            return None
        return found

    async def _policies(self, policy_ids: list[str]) -> list[Resource]:
        """The policies an acpi names that still exist (a deleted one governs nothing)."""
        policies = []
        for policy_id in policy_ids:
            policy = await self._find(policy_id)
            if policy is not None and policy.ty == T.ACCESS_CONTROL_POLICY:
                policies.append(policy)
        return policies

    async def _default_allows(
        self, originator: str, operation: Operation, resource: Resource, child_type: int | None
    ) -> bool:
        custodian = resource.attributes.get("cstn")
        if custodian is not None:
            # The custodian (TS-0001 R4) takes the creator's place, as in ACME: it has every
            # right, the creator none of its own (the AE the resource is under keeps its).
            if normalize_originator(custodian, self._settings.cse_id) == originator:
                return True
        elif resource.owner == originator:
            return True
        if resource.ty == T.CSE_BASE:
            # Registered entities may read the CSEBase and discover from it, and create their
            # policies there (as ACME's CSEBase lets everyone; limits.py bounds how many).
            if operation == Operation.CREATE:
                return child_type == T.ACCESS_CONTROL_POLICY
            return operation in (Operation.RETRIEVE, Operation.DISCOVER)
        # Everything below an AE belongs to that AE, whoever created it.
        parts = resource.path.split("/")
        if len(parts) > 2:
            top = await self._storage.get_by_path("/".join(parts[:2]))
            if top is not None and top.ty == T.AE and top.ri == originator:
                return True
        return False
