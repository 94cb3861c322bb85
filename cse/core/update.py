"""UPDATE: change attributes of a resource, with the side effects some types have."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cse.core import groups, subscriptions
from cse.core.addressing import Address
from cse.core.clock import format_timestamp, parse_timestamp
from cse.core.create import check_privileges
from cse.core.errors import BadRequest, MaxMembersExceeded, NotAcceptable, OperationNotAllowed
from cse.core.primitives import Request, Response
from cse.core.registry import SPECS, check_attributes, unwrap_content
from cse.core.representation import check_result_content, wrap
from cse.core.types import Operation, ResponseStatusCode
from cse.core.types import ResourceType as T
from cse.core.types import ResultContent as RCN
from cse.storage.base import Change, DeleteTree, Put, Resource

if TYPE_CHECKING:
    from cse.core.handler import CommonServicesEntity

_UPDATE_RESULTS = {RCN.NOTHING, RCN.ATTRIBUTES, RCN.MODIFIED_ATTRIBUTES}


async def handle_update(
    cse: CommonServicesEntity, request: Request, originator: str, address: Address
) -> Response:
    if address.virtual == "fopt":
        return await groups.fan_out(cse, request, originator, address)
    if address.virtual is not None:
        raise OperationNotAllowed(f"{address.virtual} cannot be updated")
    result_content = check_result_content(request.result_content, _UPDATE_RESULTS, RCN.ATTRIBUTES)
    resource = await cse.lookup(address)
    if resource.ty == T.CSE_BASE:
        raise OperationNotAllowed("the CSEBase cannot be updated by a request")
    if resource.ty == T.CONTENT_INSTANCE:
        raise OperationNotAllowed("a contentInstance cannot be updated")
    spec = SPECS[resource.ty]
    if request.content is None:
        raise BadRequest("content (pc) missing in UPDATE")
    changes_requested = dict(unwrap_content(spec, request.content))
    check_attributes(spec, changes_requested, create=False)
    if not changes_requested:
        raise BadRequest("an UPDATE must change at least one attribute")
    others = set(changes_requested) - {"acpi"}
    if "acpi" in changes_requested:
        await cse.access.check_policy_change(originator, resource)
    if others or "acpi" not in changes_requested:
        await cse.access.check(originator, Operation.UPDATE, resource)
    await _check_type_rules(cse, originator, resource, changes_requested)
    if resource.ty == T.CONTAINER:
        cse.quotas.apply_container_limits(originator, changes_requested, create=False)
    if resource.ty in (T.AE, T.REMOTE_CSE) and changes_requested.get("poa"):
        # A moved entity (a new DHCP lease) updates its poa from its new address.
        await cse.egress.check_points_of_access(changes_requested["poa"], request)

    async with cse.write_lock:
        current = await cse.lookup(address)  # may have changed while we checked
        updated, modified, changes = await _build(cse, current, changes_requested)
        changes.extend(await cse.notifier.on_updated(updated, modified))
        await cse.storage.apply(changes)
    await cse.durable(changes)
    if result_content == RCN.NOTHING:
        content = None
    elif result_content == RCN.MODIFIED_ATTRIBUTES:
        content = wrap(updated, modified)
    else:
        content = wrap(updated)
    return cse.response(request, ResponseStatusCode.UPDATED, content)


async def _check_type_rules(
    cse: CommonServicesEntity, originator: str, resource: Resource, changes: dict[str, Any]
) -> None:
    if resource.ty == T.SUBSCRIPTION:
        merged = {**resource.attributes, **{k: v for k, v in changes.items() if v is not None}}
        subscriptions.check_subscription(merged)
        new_targets = [t for t in changes.get("nu") or [] if t not in resource.attributes["nu"]]
        await subscriptions.verify_targets(cse, originator, new_targets)
    elif resource.ty == T.ACCESS_CONTROL_POLICY:
        check_privileges(changes)
    elif resource.ty == T.GROUP and changes.get("mid") is not None:
        merged = {**resource.attributes, **changes}
        await groups.prepare(cse, merged)
        changes["mid"] = merged["mid"]
    if changes.get("acpi"):
        for policy_id in changes["acpi"]:
            policy = await cse.find(policy_id)
            if policy is None or policy.ty != T.ACCESS_CONTROL_POLICY:
                raise BadRequest(f"access control policy {policy_id} does not exist")


async def _build(
    cse: CommonServicesEntity, resource: Resource, requested: dict[str, Any]
) -> tuple[Resource, dict[str, Any], list[Change]]:
    values = dict(requested)
    if values.get("et") is not None:
        moment = parse_timestamp(values["et"])
        if moment <= cse.clock.now():
            raise BadRequest("expiration time (et) is in the past")
        values["et"] = format_timestamp(moment)  # stored normalised: et is compared as text
        parent = await cse.storage.get(resource.pi)
        if parent is not None and parent.et is not None and values["et"] > parent.et:
            values["et"] = parent.et
    values["lt"] = cse.timestamp()
    changes: list[Change] = []
    if resource.ty == T.CONTAINER:
        values["st"] = int(resource.attributes.get("st", 0)) + 1
        changes.extend(await _shrink_container(cse, resource, values))
    elif resource.ty == T.GROUP:
        members = values.get("mid", resource.attributes["mid"])
        values["cnm"] = len(members)
        if values["cnm"] > values.get("mnm", resource.attributes["mnm"]):
            raise MaxMembersExceeded("the group would have more members than mnm allows")
    updated = resource.with_attributes(**values)
    modified = {name: updated.attributes.get(name) for name in values}
    changes.insert(0, Put(updated))
    return updated, modified, changes


async def _shrink_container(
    cse: CommonServicesEntity, container: Resource, values: dict[str, Any]
) -> list[Change]:
    """Lowering mni or mbs evicts the oldest instances until the container fits."""
    attrs = {**container.attributes, **values}
    max_count, max_size = attrs.get("mni"), attrs.get("mbs")
    count, total = int(attrs.get("cni", 0)), int(attrs.get("cbs", 0))
    if (max_count is None or count <= max_count) and (max_size is None or total <= max_size):
        return []
    changes: list[Change] = []
    for victim in await cse.storage.instances(container.ri, newest=False, limit=count):
        if (max_count is None or count <= max_count) and (max_size is None or total <= max_size):
            break
        changes.append(DeleteTree(victim))
        count -= 1
        total -= int(victim.attributes.get("cs", 0))
    if max_size is not None and total > max_size:
        raise NotAcceptable("the container cannot fit its content in the new mbs")
    values["cni"], values["cbs"] = count, total
    return changes
