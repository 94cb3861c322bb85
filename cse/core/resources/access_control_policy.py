"""<accessControlPolicy> (TS-0001 9.6.2): privileges as data; their checks live here.

`pv` and `pvs` are sets of rules, `{"acr": [rule, ...]}`. A rule (TS-0004 m2m:accessControlRule)
may hold `acor` (originators), `acop` (operations, a bitmask 1..63), `acco` (contexts: only
time windows, `actw`, are served) and `aca` (the attributes it is limited to). A rule member
this CSE does not serve (`acod`, `acaf` true, `acco` IP addresses, regions, user IDs...) is
refused with 4000 rather than stored and ignored: ignoring a restriction would grant more than
the policy's author meant. ACME's answers are followed for the rest: `pv` may hold no rules
(`{}` reads as `{"acr": []}`), `pvs` must hold at least one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cse.core import schedule
from cse.core.errors import BadRequest
from cse.core.resources.base import Attribute, Kind, M, O, TypeRules, resource_spec
from cse.core.types import ResourceType as T
from cse.storage.base import Resource

if TYPE_CHECKING:
    from cse.core.context import Context
    from cse.core.primitives import Request

_RULE_MEMBERS = {"acor", "acop", "acco", "aca", "acaf", "acod"}
_CONTEXT_MEMBERS = {"actw", "acip", "aclr", "acui", "acec", "acl"}


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _check_contexts(where: str, contexts: Any) -> None:
    if not isinstance(contexts, list) or not all(isinstance(c, dict) for c in contexts):
        raise BadRequest(f"{where}.acco must be a list of objects")
    for context in contexts:
        unknown = set(context) - _CONTEXT_MEMBERS
        if unknown:
            raise BadRequest(f"{where}.acco: {', '.join(sorted(unknown))} is not a context")
        unserved = set(context) - {"actw"}
        if unserved:
            raise BadRequest(
                f"{where}.acco: {', '.join(sorted(unserved))} is not supported (only actw)"
            )
        windows = context.get("actw")
        if not _is_strings(windows):
            raise BadRequest(f"{where}.acco.actw must be a list of schedule entries")
        for window in windows:
            try:
                schedule.parse(window)
            except ValueError as error:
                raise BadRequest(f"{where}.acco.actw: {error}") from None


def _check_rule(where: str, rule: Any) -> None:
    if not isinstance(rule, dict):
        raise BadRequest(f"every rule in {where} must be an object")
    unknown = set(rule) - _RULE_MEMBERS
    if unknown:
        raise BadRequest(f"{where}: {', '.join(sorted(unknown))} is not part of a rule")
    acop = rule.get("acop")
    if not _is_strings(rule.get("acor")):
        raise BadRequest(f"{where}.acor must be a list of originators")
    if isinstance(acop, bool) or not isinstance(acop, int) or not 1 <= acop <= 63:
        raise BadRequest(f"{where}.acop must be an operation bitmask 1..63")
    if "acco" in rule:
        _check_contexts(where, rule["acco"])
    if "aca" in rule and not _is_strings(rule["aca"]):
        raise BadRequest(f"{where}.aca must be a list of attribute names")
    if "acod" in rule:
        raise BadRequest(f"{where}: acod (object details) is not supported")
    if rule.get("acaf") not in (None, False):
        raise BadRequest(f"{where}: acaf (authentication flag) is not supported")


def check_privileges(attributes: dict[str, Any]) -> None:
    """Check pv / pvs where present, and normalise `{}` to `{"acr": []}`."""
    for name in ("pv", "pvs"):
        value = attributes.get(name)
        if value is None:
            continue
        unknown = set(value) - {"acr"}
        if unknown:
            raise BadRequest(f"{name}: {', '.join(sorted(unknown))} is not part of a privilege set")
        rules = value.get("acr", [])
        if not isinstance(rules, list):
            raise BadRequest(f"{name} must hold a list acr")
        for rule in rules:
            _check_rule(f"{name}.acr", rule)
        if name == "pvs" and not rules:
            # Nobody could change or delete the policy again (ACME refuses it too).
            raise BadRequest("pvs must hold at least one rule")
        attributes[name] = {"acr": rules}


async def resolve_policies(ctx: Context, policy_ids: list[str]) -> list[str]:
    """The resource IDs of the policies an `acpi` names (4000 for one this CSE does not hold).

    ACME keeps acpi as resource IDs too: a policy named by its path could otherwise be
    replaced by another made later under the same name, which would then govern."""
    resolved: list[str] = []
    for policy_id in policy_ids:
        policy = await ctx.find(policy_id)
        if policy is None or policy.ty != T.ACCESS_CONTROL_POLICY:
            raise BadRequest(f"access control policy {policy_id} does not exist")
        resolved.append(policy.ri)
    return resolved


class AccessControlPolicyRules(TypeRules):
    async def check_create(
        self, ctx: Context, originator: str, parent: Resource, attributes: dict[str, Any]
    ) -> None:
        check_privileges(attributes)

    async def check_update(
        self,
        ctx: Context,
        request: Request,
        originator: str,
        resource: Resource,
        changes: dict[str, Any],
    ) -> None:
        check_privileges(changes)


SPEC = resource_spec(
    T.ACCESS_CONTROL_POLICY,
    "acp",
    {"pv": Attribute(Kind.OBJECT, M, O), "pvs": Attribute(Kind.OBJECT, M, O)},
    {T.SUBSCRIPTION},
    rules=AccessControlPolicyRules(),
    has_acpi=False,
    has_creator=False,  # as in ACME: a policy has no creator attribute
)
