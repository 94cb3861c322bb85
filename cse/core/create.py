"""CREATE: registration of AEs and remote CSEs, and every other resource type."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from cse.core import groups, subscriptions
from cse.core.addressing import Address
from cse.core.clock import format_timestamp, parse_timestamp
from cse.core.errors import (
    BadRequest,
    Conflict,
    InvalidChildResourceType,
    NotAcceptable,
    NotFound,
    OperationNotAllowed,
    OriginatorAlreadyRegistered,
    OriginatorHasNoPrivilege,
    TargetNotSubscribable,
)
from cse.core.identity import Role
from cse.core.primitives import Request, Response
from cse.core.registry import SPECS, ResourceSpec, check_attributes, spec_for, unwrap_content
from cse.core.representation import check_result_content, wrap
from cse.core.types import Operation, ResponseStatusCode
from cse.core.types import ResourceType as T
from cse.core.types import ResultContent as RCN
from cse.storage.base import Change, DeleteTree, Put, RecordRequest, Resource

if TYPE_CHECKING:
    from cse.core.handler import CommonServicesEntity

_CREATE_RESULTS = {
    RCN.NOTHING,
    RCN.ATTRIBUTES,
    RCN.HIERARCHICAL_ADDRESS,
    RCN.HIERARCHICAL_ADDRESS_AND_ATTRIBUTES,
    RCN.MODIFIED_ATTRIBUTES,
}
_CONTENT_FORMAT = re.compile(r"^[\w.+\-]+/[\w.+\-]+:[0-2](:[0-9]+)?$")


async def handle_create(
    cse: CommonServicesEntity, request: Request, originator: str, address: Address
) -> Response:
    if request.resource_type is None:
        raise BadRequest("resource type (ty) missing in CREATE")
    resource_type = int(request.resource_type)
    if resource_type == T.CSE_BASE:
        raise OperationNotAllowed("a CSEBase cannot be created by a request")
    if address.virtual is not None:
        if address.virtual == "fopt":
            return await groups.fan_out(cse, request, originator, address)
        raise OperationNotAllowed(f"cannot create under the virtual resource {address.virtual}")
    spec = spec_for(resource_type)
    if request.content is None:
        raise BadRequest("content (pc) missing in CREATE")
    attributes = dict(unwrap_content(spec, request.content))
    check_attributes(spec, attributes, create=True)
    if "rn" in attributes:
        cse.quotas.check_name(attributes["rn"])
    requested = dict(attributes)
    result_content = check_result_content(request.result_content, _CREATE_RESULTS, RCN.ATTRIBUTES)

    parent = await cse.lookup(address)
    if resource_type == T.SUBSCRIPTION and not SPECS[parent.ty].subscribable:
        raise TargetNotSubscribable(f"{parent.path} cannot be subscribed to")
    if resource_type not in SPECS[parent.ty].children:
        raise InvalidChildResourceType(f"{spec.key} cannot be created under {SPECS[parent.ty].key}")
    if resource_type == T.AE:
        owner, resource_id = await _register_ae(cse, request, originator, parent, attributes)
    elif resource_type == T.REMOTE_CSE:
        owner, resource_id = await _register_remote_cse(cse, originator, parent, attributes)
    else:
        await cse.access.check(originator, Operation.CREATE, parent)
        owner, resource_id = originator, cse.new_resource_id(spec.id_prefix)
    if resource_type in (T.AE, T.REMOTE_CSE):
        # Who may register, and whether the CSE will send to its poa (cse/core/egress.py).
        await cse.egress.check_registration(request, resource_type, originator, attributes)

    if resource_type == T.SUBSCRIPTION:
        await subscriptions.prepare(cse, originator, parent, attributes)
    elif resource_type == T.GROUP:
        await groups.prepare(cse, attributes)
    elif resource_type == T.ACCESS_CONTROL_POLICY:
        check_privileges(attributes)
    elif resource_type == T.CONTAINER:
        cse.quotas.apply_container_limits(originator, attributes, create=True)

    async with cse.write_lock:
        key = f"{originator}\n{request.request_id}" if request.deduplicate else None
        if key is not None:
            earlier = await cse.storage.recorded_request(key)
            if earlier is not None:
                return await _replay(cse, request, earlier, result_content, requested)
        # Re-read the parent under the lock: a concurrent CREATE may have changed its counters.
        current = await cse.storage.get(parent.ri)
        if current is None or cse.is_expired(current):
            raise NotFound(f"{parent.path} was deleted")
        parent = current
        await cse.quotas.check_create(originator, parent, resource_type)
        resource, changes = await _build(cse, spec, parent, attributes, owner, resource_id, request)
        if key is not None:
            changes.append(RecordRequest(key, resource.ri, cse.clock.now()))
        changes.extend(await cse.notifier.on_child_created(parent, resource))
        await cse.storage.apply(changes)
    await cse.durable(changes)
    return cse.response(
        request,
        ResponseStatusCode.CREATED,
        _render_created(resource, result_content, requested),
        location=resource.path,
    )


async def _replay(
    cse: CommonServicesEntity,
    request: Request,
    resource_id: str,
    result_content: RCN,
    requested: dict[str, Any],
) -> Response:
    """A redelivered CREATE: answer as the first time, create nothing."""
    await cse.storage.sync()  # the first one's answer waited for this too
    resource = await cse.storage.get(resource_id)
    if resource is None:  # created, then deleted or expired since
        return cse.response(request, ResponseStatusCode.CREATED)
    return cse.response(
        request,
        ResponseStatusCode.CREATED,
        _render_created(resource, result_content, requested),
        location=resource.path,
    )


def _render_created(
    resource: Resource, result_content: RCN, requested: dict[str, Any]
) -> dict[str, Any] | None:
    if result_content == RCN.NOTHING:
        return None
    if result_content == RCN.HIERARCHICAL_ADDRESS:
        return {"m2m:uri": resource.path}
    if result_content == RCN.HIERARCHICAL_ADDRESS_AND_ATTRIBUTES:
        return {"m2m:rce": {"uri": resource.path, **wrap(resource)}}
    if result_content == RCN.MODIFIED_ATTRIBUTES:
        changed = {
            name: value
            for name, value in resource.attributes.items()
            if name not in requested or requested[name] != value
        }
        return wrap(resource, changed)
    return wrap(resource)


async def _build(
    cse: CommonServicesEntity,
    spec: ResourceSpec,
    parent: Resource,
    attributes: dict[str, Any],
    owner: str,
    resource_id: str,
    request: Request,
) -> tuple[Resource, list[Change]]:
    """Assemble the new resource and every change that goes with it (all under the lock)."""
    name = attributes.pop("rn", None)
    if name is None:
        name = resource_id
        cse.quotas.check_name(name)  # an AE-ID or CSE-ID that becomes the name
    path = f"{parent.path}/{name}"
    if await cse.storage.get_by_path(path) is not None:
        raise Conflict(f"a resource named {name} already exists under {parent.path}")
    if await cse.storage.get(resource_id) is not None:
        raise OriginatorAlreadyRegistered(f"{resource_id} is already registered")
    now = cse.timestamp()
    creator_requested = "cr" in attributes
    attributes.pop("cr", None)
    new: dict[str, Any] = {"ty": int(spec.type), "ri": resource_id, "rn": name, "pi": parent.ri}
    new.update(attributes)
    new["ct"] = new["lt"] = now
    new["et"] = _expiration(cse, attributes.get("et"), parent)
    if creator_requested:
        new["cr"] = owner or resource_id
    if spec.has_acpi and "acpi" in new:
        await _check_policies_exist(cse, new["acpi"])
    changes: list[Change] = []
    if spec.type == T.AE:
        new["aei"] = resource_id
    elif spec.type == T.CONTAINER:
        new.update(cni=0, cbs=0, st=0)
    elif spec.type == T.GROUP:
        new["cnm"] = len(new["mid"])
        new["mtv"] = True
    elif spec.type == T.CONTENT_INSTANCE:
        changes.extend(await _add_instance(cse, parent, new))
    resource = Resource(new, path, owner or resource_id)
    changes.insert(0, Put(resource))
    return resource, changes


def _expiration(cse: CommonServicesEntity, requested: str | None, parent: Resource) -> str:
    limit = parent.et
    if requested is None:
        value = cse.timestamp(cse.settings.default_lifetime)
    else:
        if parse_timestamp(requested) <= cse.clock.now():
            raise BadRequest("expiration time (et) is in the past")
        value = format_timestamp(parse_timestamp(requested))
    # A child never outlives its parent.
    return value if limit is None or value < limit else limit


def content_size(content: Any) -> int:
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, bytes):
        return len(content)
    return len(json.dumps(content, separators=(",", ":")).encode())


async def _add_instance(
    cse: CommonServicesEntity, container: Resource, new: dict[str, Any]
) -> list[Change]:
    """Size the instance, number it, and evict the oldest ones the container cannot keep."""
    cnf = new.get("cnf")
    if cnf is not None and not _CONTENT_FORMAT.match(cnf):
        raise BadRequest(f"content info (cnf) {cnf!r} is not media-type:encoding[:security]")
    size = content_size(new["con"])
    attrs = container.attributes
    max_size = attrs.get("mbs")
    if max_size is not None and size > max_size:
        raise NotAcceptable(f"content of {size} bytes exceeds the container's mbs {max_size}")
    if attrs.get("mni") == 0:  # no instance fits, not even the new one: as for mbs above
        raise NotAcceptable("the container's mni is 0: it keeps no content instance")
    new["cs"] = size
    state = int(attrs.get("st", 0)) + 1
    new["st"] = state
    max_age = attrs.get("mia")
    if max_age is not None:
        latest = cse.timestamp(max_age)
        if new["et"] > latest:
            new["et"] = latest
    count = int(attrs.get("cni", 0)) + 1
    total = int(attrs.get("cbs", 0)) + size
    max_count = attrs.get("mni")

    def over_limits() -> bool:
        return (max_count is not None and count > max_count) or (
            max_size is not None and total > max_size
        )

    changes: list[Change] = []
    evicted = 0
    while over_limits():
        page = await cse.storage.instances(container.ri, newest=False, limit=evicted + 32)
        page = page[evicted:]
        if not page:
            break
        for victim in page:
            if not over_limits():
                break
            changes.append(DeleteTree(victim))
            evicted += 1
            count -= 1
            total -= int(victim.attributes.get("cs", 0))
    updated = container.with_attributes(cni=count, cbs=total, st=state, lt=new["ct"])
    changes.append(Put(updated))
    return changes


async def _check_policies_exist(cse: CommonServicesEntity, policy_ids: list[str]) -> None:
    for policy_id in policy_ids:
        policy = await cse.find(policy_id)
        if policy is None or policy.ty != T.ACCESS_CONTROL_POLICY:
            raise BadRequest(f"access control policy {policy_id} does not exist")


def check_privileges(attributes: dict[str, Any]) -> None:
    """pv / pvs must be {"acr": [{"acor": [...], "acop": 0..63, ...}, ...]}."""
    for name in ("pv", "pvs"):
        value = attributes.get(name)
        if value is None:
            continue
        rules = value.get("acr")
        if not isinstance(rules, list):
            raise BadRequest(f"{name} must hold a list acr")
        for rule in rules:
            if not isinstance(rule, dict):
                raise BadRequest(f"every rule in {name}.acr must be an object")
            acor, acop = rule.get("acor"), rule.get("acop")
            if not isinstance(acor, list) or not all(isinstance(o, str) for o in acor):
                raise BadRequest(f"{name}.acr.acor must be a list of originators")
            if isinstance(acop, bool) or not isinstance(acop, int) or not 0 <= acop <= 63:
                raise BadRequest(f"{name}.acr.acop must be an operation bitmask 0..63")


async def _register_ae(
    cse: CommonServicesEntity,
    request: Request,
    originator: str,
    parent: Resource,
    attributes: dict[str, Any],
) -> tuple[str, str]:
    """Pick the AE-ID from the originator (TS-0001 §10.2.2.2) and check the AE attributes."""
    if parent.ty != T.CSE_BASE:
        raise InvalidChildResourceType("an AE registers with the CSEBase")
    principal = request.principal
    if principal.role is Role.DEVICE:
        # A provisioned device registers under the name it was provisioned for, and nobody
        # else can take that name: its AE-ID is bound to its credential.
        attributes.setdefault("rn", principal.name)
        if attributes["rn"] != principal.name:
            raise OriginatorHasNoPrivilege(
                f"{principal.name} may register only as {principal.name}, not {attributes['rn']}"
            )
    api = attributes["api"]
    if not api or api[0] not in "RrN":
        raise BadRequest(f"App-ID (api) {api!r} must start with R, r or N")
    if not attributes["srv"]:
        raise BadRequest("supported release versions (srv) must not be empty")
    if originator in ("", "C"):
        ae_id = cse.new_resource_id("C")
    elif originator == "S":
        ae_id = cse.new_resource_id("S")
    elif originator[0] in "CS":
        cse.quotas.check_name(originator, "AE-ID")
        ae_id = originator
    elif originator == cse.settings.admin_originator:
        ae_id = cse.new_resource_id("C")
    else:
        raise BadRequest(f"originator {originator!r} is not an AE-ID (C... or S...)")
    existing = await cse.storage.get(ae_id)
    if existing is not None and not cse.is_expired(existing):
        raise OriginatorAlreadyRegistered(f"an AE with AE-ID {ae_id} is already registered")
    # Only a registration that creates an AE counts: a meter finding its AE after a restart
    # (4117 above) costs nothing.
    await cse.quotas.check_ae_count(originator)
    cse.quotas.check_registration(request, originator)
    return ae_id, ae_id


async def _register_remote_cse(
    cse: CommonServicesEntity, originator: str, parent: Resource, attributes: dict[str, Any]
) -> tuple[str, str]:
    if not originator.startswith("/") or originator.count("/") != 1:
        raise OperationNotAllowed("only a CSE (originator /cse-id) may register a remoteCSE")
    if attributes["csi"] != originator:
        raise BadRequest(f"csi {attributes['csi']} does not match the originator {originator}")
    if originator == cse.settings.cse_id:
        raise BadRequest("a CSE cannot register with itself")
    if not attributes["cb"].startswith(originator + "/"):
        raise BadRequest("cb must be the CSEBase of the registering CSE (/cse-id/name)")
    ri = originator.lstrip("/")
    cse.quotas.check_name(ri, "CSE-ID")
    if await cse.storage.get(ri) is not None:
        raise OriginatorAlreadyRegistered(f"CSE {originator} is already registered")
    attributes.setdefault("rn", ri)
    return originator, ri
