"""UPDATE: change attributes of a resource, with the side effects some types have."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cse.core import groups
from cse.core.access import WHOLE, Permission
from cse.core.addressing import Address
from cse.core.clock import format_timestamp, parse_timestamp
from cse.core.errors import BadRequest, OperationNotAllowed
from cse.core.primitives import Request, Response
from cse.core.registry import check_attributes, spec_of, unwrap_content
from cse.core.representation import changed_by_cse, check_result_content, granted, wrap
from cse.core.resources.access_control_policy import resolve_policies
from cse.core.types import Operation, ResponseStatusCode
from cse.core.types import ResultContent as RCN
from cse.storage.base import Change, Put, Resource

if TYPE_CHECKING:
    from cse.core.context import Context

_UPDATE_RESULTS = {RCN.NOTHING, RCN.ATTRIBUTES, RCN.MODIFIED_ATTRIBUTES}


async def handle_update(
    ctx: Context, request: Request, originator: str, address: Address
) -> Response:
    if address.virtual == "fopt":
        return await groups.fan_out(ctx, request, originator, address)
    if address.virtual is not None:
        raise OperationNotAllowed(f"{address.virtual} cannot be updated")
    result_content = check_result_content(request.result_content, _UPDATE_RESULTS, RCN.ATTRIBUTES)
    resource = await ctx.lookup(address)
    spec = spec_of(resource)
    if spec.rules.updated_by_request is not None:
        raise OperationNotAllowed(spec.rules.updated_by_request)
    if request.content is None:
        raise BadRequest("content (pc) missing in UPDATE")
    changes_requested = dict(unwrap_content(spec, request.content))
    # An empty resource ({"m2m:cnt": {}}) is a valid UPDATE (ACME answers 2004): it needs the
    # UPDATE privilege and changes lt (and st where the type keeps one).
    check_attributes(spec, changes_requested, create=False)
    permission = await _check_access(ctx, originator, resource, changes_requested)
    await spec.rules.check_update(ctx, request, originator, resource, changes_requested)
    if changes_requested.get("acpi"):
        changes_requested["acpi"] = await resolve_policies(ctx, changes_requested["acpi"])

    # A blocking-update subscription's target must agree first (cse/core/blocking.py).
    async with ctx.notifier.blocking.hold(resource, changes_requested), ctx.write_lock:
        current = await ctx.lookup(address)  # may have changed while we checked
        updated, modified, changes = await _build(ctx, current, changes_requested)
        changes.extend(await ctx.notifier.on_updated(updated, modified, originator))
        await ctx.storage.apply(changes)
    await ctx.durable(changes)
    shown = permission.attributes  # a grant limited to some attributes shows only those
    if result_content == RCN.NOTHING:
        content = None
    elif result_content == RCN.MODIFIED_ATTRIBUTES:
        content = wrap(updated, granted(changed_by_cse(modified, changes_requested), shown))
    else:
        content = wrap(updated, granted(updated.attributes, shown))
    return ctx.response(request, ResponseStatusCode.UPDATED, content)


async def _check_access(
    ctx: Context, originator: str, resource: Resource, changes: dict[str, Any]
) -> Permission:
    """acpi is changed alone (ACME: 4000 otherwise), under the policies' self-privileges
    (TS-0001 9.6.1.3.2); anything else under UPDATE of the attributes it changes."""
    if "acpi" in changes:
        if len(changes) > 1:
            raise BadRequest("acpi must be the only attribute of an UPDATE that changes it")
        await ctx.access.check_policy_change(originator, resource)
        return WHOLE
    return await ctx.access.check(originator, Operation.UPDATE, resource, changes.keys())


async def _build(
    ctx: Context, resource: Resource, requested: dict[str, Any]
) -> tuple[Resource, dict[str, Any], list[Change]]:
    values = dict(requested)
    if values.get("et") is not None:
        moment = parse_timestamp(values["et"])
        if moment <= ctx.clock.now():
            raise BadRequest("expiration time (et) is in the past")
        values["et"] = format_timestamp(moment)  # stored normalised: et is compared as text
        parent = await ctx.storage.get(resource.pi)
        if parent is not None and parent.et is not None and values["et"] > parent.et:
            values["et"] = parent.et
    values["lt"] = ctx.timestamp()
    changes = await spec_of(resource).rules.on_update(ctx, resource, values)
    updated = resource.with_attributes(**values)
    modified = {name: updated.attributes.get(name) for name in values}
    changes.insert(0, Put(updated))
    return updated, modified, changes
