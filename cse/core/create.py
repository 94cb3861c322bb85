"""CREATE: registration of AEs and remote CSEs, and every other resource type."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cse.core import groups
from cse.core.addressing import Address
from cse.core.clock import format_timestamp, parse_timestamp
from cse.core.errors import (
    BadRequest,
    Conflict,
    InvalidChildResourceType,
    NotFound,
    OperationNotAllowed,
    OriginatorAlreadyRegistered,
    TargetNotSubscribable,
)
from cse.core.primitives import Request, Response
from cse.core.registry import (
    ResourceSpec,
    check_attributes,
    content_key,
    spec_for,
    spec_of,
    unwrap_content,
)
from cse.core.representation import changed_by_cse, check_result_content, granted, wrap
from cse.core.resources.access_control_policy import resolve_policies
from cse.core.types import Operation, ResponseStatusCode
from cse.core.types import ResourceType as T
from cse.core.types import ResultContent as RCN
from cse.storage.base import Change, Put, RecordRequest, Resource

if TYPE_CHECKING:
    from cse.core.context import Context

_CREATE_RESULTS = {
    RCN.NOTHING,
    RCN.ATTRIBUTES,
    RCN.HIERARCHICAL_ADDRESS,
    RCN.HIERARCHICAL_ADDRESS_AND_ATTRIBUTES,
    RCN.MODIFIED_ATTRIBUTES,
}


async def handle_create(
    ctx: Context, request: Request, originator: str, address: Address
) -> Response:
    if request.resource_type is None:
        raise BadRequest("resource type (ty) missing in CREATE")
    resource_type = int(request.resource_type)
    if address.virtual is not None:
        if address.virtual == "fopt":
            return await groups.fan_out(ctx, request, originator, address)
        raise OperationNotAllowed(f"cannot create under the virtual resource {address.virtual}")
    spec = spec_for(resource_type, content_key(request.content))
    if spec.rules.created_by_request is not None:
        raise OperationNotAllowed(spec.rules.created_by_request)
    if request.content is None:
        raise BadRequest("content (pc) missing in CREATE")
    attributes = dict(unwrap_content(spec, request.content))
    check_attributes(spec, attributes, create=True)
    if "rn" in attributes:
        ctx.quotas.check_name(attributes["rn"])
    requested = dict(attributes)
    result_content = check_result_content(request.result_content, _CREATE_RESULTS, RCN.ATTRIBUTES)

    parent = await ctx.lookup(address)
    parent_spec = spec_of(parent)
    if resource_type == T.SUBSCRIPTION and not parent_spec.subscribable:
        raise TargetNotSubscribable(f"{parent.path} cannot be subscribed to")
    if resource_type not in parent_spec.children:
        raise InvalidChildResourceType(f"{spec.key} cannot be created under {parent_spec.key}")
    registered = await spec.rules.register(ctx, request, originator, parent, attributes)
    shown: frozenset[str] | None = None  # a grant limited to some attributes shows only those
    registered_id: str | None = None  # an ID the registration chose (AE-ID, CSE-ID)
    if registered is None:
        permission = await ctx.access.check(
            originator, Operation.CREATE, parent, requested.keys(), child_type=resource_type
        )
        shown = permission.attributes
        owner, resource_id = originator, ctx.new_resource_id(spec.id_prefix)
    else:
        owner, resource_id = registered
        registered_id = resource_id
    await spec.rules.check_create(ctx, originator, parent, attributes)
    await spec.rules.confirm_create(ctx, originator, parent, attributes, resource_id)

    async with ctx.write_lock:
        key = f"{originator}\n{request.request_id}" if request.deduplicate else None
        if key is not None:
            earlier = await ctx.storage.recorded_request(key)
            if earlier is not None:
                return await _replay(ctx, request, earlier, result_content, requested, shown)
        # Re-read the parent under the lock: a concurrent CREATE may have changed its counters.
        current = await ctx.storage.get(parent.ri)
        if current is None or ctx.is_expired(current):
            raise NotFound(f"{parent.path} was deleted")
        parent = current
        await ctx.quotas.check_create(originator, parent, resource_type)
        resource, changes = await _build(
            ctx, spec, parent, attributes, owner, resource_id, request, registered_id
        )
        if key is not None:
            changes.append(RecordRequest(key, resource.ri, ctx.clock.now()))
        changes.extend(await ctx.notifier.on_child_created(parent, resource, originator))
        await ctx.storage.apply(changes)
    await ctx.durable(changes)
    return ctx.response(
        request,
        ResponseStatusCode.CREATED,
        _render_created(resource, result_content, requested, shown),
        location=resource.path,
    )


async def _replay(
    ctx: Context,
    request: Request,
    resource_id: str,
    result_content: RCN,
    requested: dict[str, Any],
    shown: frozenset[str] | None,
) -> Response:
    """A redelivered CREATE: answer as the first time (with what the grant shows), create
    nothing."""
    await ctx.storage.sync()  # the first one's answer waited for this too
    resource = await ctx.storage.get(resource_id)
    if resource is None:  # created, then deleted or expired since
        return ctx.response(request, ResponseStatusCode.CREATED)
    return ctx.response(
        request,
        ResponseStatusCode.CREATED,
        _render_created(resource, result_content, requested, shown),
        location=resource.path,
    )


def _render_created(
    resource: Resource,
    result_content: RCN,
    requested: dict[str, Any],
    shown: frozenset[str] | None = None,
) -> dict[str, Any] | None:
    if result_content == RCN.NOTHING:
        return None
    if result_content == RCN.HIERARCHICAL_ADDRESS:
        return {"m2m:uri": resource.path}
    attributes = granted(resource.attributes, shown)
    if result_content == RCN.HIERARCHICAL_ADDRESS_AND_ATTRIBUTES:
        # Inside m2m:rce the resource is named without its namespace prefix (TS-0004's JSON
        # rule for nested elements, and what ACME sends): {"m2m:rce": {"cnt": {...}, "uri": ...}}
        ((key, shown_attributes),) = wrap(resource, attributes).items()
        return {"m2m:rce": {"uri": resource.path, key.split(":", 1)[-1]: shown_attributes}}
    if result_content == RCN.MODIFIED_ATTRIBUTES:
        return wrap(resource, changed_by_cse(attributes, requested))
    return wrap(resource, attributes)


async def _build(
    ctx: Context,
    spec: ResourceSpec,
    parent: Resource,
    attributes: dict[str, Any],
    owner: str,
    resource_id: str,
    request: Request,
    registered_id: str | None = None,
) -> tuple[Resource, list[Change]]:
    """Assemble the new resource and every change that goes with it (all under the lock)."""
    name = attributes.pop("rn", None)
    generated = registered_id is None  # resource_id came from ctx.new_resource_id
    named_by_id = name is None
    if name is None:
        name = resource_id
        ctx.quotas.check_name(name)  # an AE-ID or CSE-ID that becomes the name
    path = f"{parent.path}/{name}"
    # Where IDs made here are new to the database (and it refuses a second of one path or ID
    # anyway), looking for a generated one costs a read and finds nothing.
    fresh = generated and ctx.ids_are_unique
    if not (fresh and named_by_id) and await ctx.storage.get_by_path(path) is not None:
        raise Conflict(f"a resource named {name} already exists under {parent.path}")
    if not fresh and await ctx.storage.get(resource_id) is not None:
        raise OriginatorAlreadyRegistered(f"{resource_id} is already registered")
    now = ctx.timestamp()
    creator_requested = "cr" in attributes
    attributes.pop("cr", None)
    new: dict[str, Any] = {"ty": int(spec.type), "ri": resource_id, "rn": name, "pi": parent.ri}
    new.update(attributes)
    new["ct"] = new["lt"] = now
    new["et"] = _expiration(ctx, attributes.get("et"), parent)
    if creator_requested:
        new["cr"] = owner or resource_id
    if spec.has_acpi and "acpi" in new:
        new["acpi"] = await resolve_policies(ctx, new["acpi"])
    changes = await spec.rules.on_create(ctx, new, parent)
    changes.extend(await spec_of(parent).rules.on_child_added(ctx, parent, new))
    resource = Resource(new, path, owner or resource_id)
    changes.insert(0, Put(resource))
    return resource, changes


def _expiration(ctx: Context, requested: str | None, parent: Resource) -> str:
    limit = parent.et
    if requested is None:
        value = ctx.timestamp(ctx.settings.default_lifetime)
    else:
        if parse_timestamp(requested) <= ctx.clock.now():
            raise BadRequest("expiration time (et) is in the past")
        value = format_timestamp(parse_timestamp(requested))
    # A child never outlives its parent.
    return value if limit is None or value < limit else limit
