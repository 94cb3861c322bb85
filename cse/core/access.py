"""Access control: who may do what to a resource.

A resource with `acpi` is governed by those accessControlPolicies' `pv` rules (their own
`pvs` for changes to the policies and to `acpi`). A resource without one follows the default
rule: the originator that created it, and the AE it lives under, have full access, and
nobody else. Resources with no `acpi` attribute at all (contentInstances) take their parent's
rights. The admin originator, the CSE itself and the configured trusted originators (a
gateway's head-end) pass every check.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

from cse.core.addressing import normalize_originator
from cse.core.config import CSESettings
from cse.core.errors import OriginatorHasNoPrivilege
from cse.core.registry import SPECS
from cse.core.types import OPERATION_BITS, Operation
from cse.core.types import ResourceType as T
from cse.storage.base import Resource, Storage


def _matches(originator: str, entries: Iterable[str], cse_id: str) -> bool:
    for entry in entries:
        if entry == "all":
            return True
        candidate = normalize_originator(entry, cse_id)
        if candidate == originator or ("*" in candidate and fnmatchcase(originator, candidate)):
            return True
    return False


def rules_allow(privileges: Any, originator: str, operation: Operation, cse_id: str) -> bool:
    """Does a set of access control rules ({"acr": [...]}) grant the operation?"""
    bit = OPERATION_BITS[operation]
    if not isinstance(privileges, dict):
        return False
    for rule in privileges.get("acr", ()):
        if not isinstance(rule, dict):
            continue
        if int(rule.get("acop", 0)) & bit and _matches(originator, rule.get("acor", ()), cse_id):
            return True
    return False


class AccessControl:
    def __init__(self, storage: Storage, settings: CSESettings) -> None:
        self._storage = storage
        self._settings = settings

    def is_privileged(self, originator: str) -> bool:
        settings = self._settings
        if originator in (settings.admin_originator, settings.cse_id, settings.cse_ri):
            return True
        return any(
            originator == trusted or originator.startswith(trusted + "/")
            for trusted in settings.trusted_originators
        )

    async def allowed(self, originator: str, operation: Operation, resource: Resource) -> bool:
        if self.is_privileged(originator):
            return True
        governing = resource
        while not SPECS[governing.ty].has_acpi:
            if governing.ty == T.ACCESS_CONTROL_POLICY:
                return rules_allow(
                    governing.attributes.get("pvs"), originator, operation, self._settings.cse_id
                )
            parent = await self._storage.get(governing.pi)
            if parent is None:
                return False
            governing = parent
        policy_ids = governing.attributes.get("acpi") or []
        if policy_ids:
            return await self._policies_allow(policy_ids, originator, operation, "pv")
        return await self._default_allows(originator, operation, governing)

    async def _policies_allow(
        self, policy_ids: list[str], originator: str, operation: Operation, which: str
    ) -> bool:
        for policy_id in policy_ids:
            policy = await self._load_policy(policy_id)
            if policy is not None and rules_allow(
                policy.attributes.get(which), originator, operation, self._settings.cse_id
            ):
                return True
        return False

    async def _load_policy(self, policy_id: str) -> Resource | None:
        settings = self._settings
        key = normalize_originator(policy_id, settings.cse_id)
        if key.startswith(settings.cse_name + "/"):
            policy = await self._storage.get_by_path(key)
        else:
            policy = await self._storage.get(key)
        return policy if policy is not None and policy.ty == T.ACCESS_CONTROL_POLICY else None

    async def _default_allows(
        self, originator: str, operation: Operation, resource: Resource
    ) -> bool:
        if resource.owner == originator:
            return True
        if resource.ty == T.CSE_BASE:
            # Registered entities may read the CSEBase and discover from it.
            return operation in (Operation.RETRIEVE, Operation.DISCOVER)
        # Everything below an AE belongs to that AE, whoever created it.
        parts = resource.path.split("/")
        if len(parts) > 2:
            top = await self._storage.get_by_path("/".join(parts[:2]))
            if top is not None and top.ty == T.AE and top.ri == originator:
                return True
        return False

    async def check(self, originator: str, operation: Operation, resource: Resource) -> None:
        if not await self.allowed(originator, operation, resource):
            raise OriginatorHasNoPrivilege(
                f"originator {originator} has no {operation.name} privilege on {resource.path}"
            )

    async def check_policy_change(self, originator: str, resource: Resource) -> None:
        """Changing acpi needs UPDATE in the self-privileges of the policies now in force."""
        if self.is_privileged(originator):
            return
        policy_ids = resource.attributes.get("acpi") or []
        if not policy_ids:
            if await self._default_allows(originator, Operation.UPDATE, resource):
                return
        elif await self._policies_allow(policy_ids, originator, Operation.UPDATE, "pvs"):
            return
        raise OriginatorHasNoPrivilege(f"originator {originator} may not change acpi")
