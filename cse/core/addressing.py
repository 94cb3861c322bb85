"""Turning a request's `to` into something to look up.

Forms accepted (TS-0001 §9.3.1): CSE-relative structured (`cse-in/ae/cnt`, `-/ae/cnt`) and
unstructured (`cnt0a1b`), SP-relative (`/id-in/...`) and absolute (`//sp/id-in/...`).
A trailing `la`/`ol` (container), `pcu` (pollingChannel), or `fopt[/...]` after a group,
addresses a virtual resource.
"""

from __future__ import annotations

from dataclasses import dataclass

from cse.core.errors import BadRequest, NotFound


@dataclass(frozen=True, slots=True)
class Address:
    """Where a request points. Exactly one of path / ri / remote_cse is set."""

    path: str | None = None  # structured CSE-relative, e.g. "cse-in/ae/cnt"
    ri: str | None = None  # unstructured resource ID
    virtual: str | None = None  # "la", "ol", "pcu" or "fopt"
    fanout_suffix: str = ""  # what follows "fopt/"
    remote_cse: str | None = None  # a CSE-ID that is not ours, e.g. "/id-mn"
    remote_to: str = ""  # the SP-relative target to forward there


def parse_address(to: str, *, cse_id: str, cse_name: str, sp_id: str | None) -> Address:
    if not to:
        raise BadRequest("the target (to) is empty")
    if to.startswith("//"):
        domain, _, rest = to[2:].partition("/")
        if sp_id is not None and domain != sp_id.lstrip("/"):
            # No route leads to another SP's CSEs: ACME answers 4004, as for a CSE-ID that
            # is not registered (TS-0004 7.3.2.6), not 4000.
            raise NotFound(f"target is in another service provider domain: //{domain}")
        to = "/" + rest
    if to.startswith("/"):
        csi, _, rest = to[1:].partition("/")
        if "/" + csi != cse_id:
            return Address(remote_cse="/" + csi, remote_to=to)
        if not rest:
            return Address(path=cse_name)
        to = rest
    segments = to.split("/")
    if any(not segment for segment in segments):
        raise BadRequest(f"target {to!r} has an empty path segment")
    if segments[0] == "-":
        segments[0] = cse_name
    virtual = None
    suffix = ""
    if "fopt" in segments[1:]:
        index = segments.index("fopt", 1)
        suffix = "/".join(segments[index + 1 :])
        segments = segments[:index]
        virtual = "fopt"
    elif len(segments) > 1 and segments[-1] in ("la", "ol", "pcu"):
        virtual = segments.pop()
    if segments[0] == cse_name:
        return Address(path="/".join(segments), virtual=virtual, fanout_suffix=suffix)
    if len(segments) != 1:
        raise BadRequest(f"target {to!r}: an unstructured ID has no path below it")
    return Address(ri=segments[0], virtual=virtual, fanout_suffix=suffix)


def normalize_originator(originator: str, cse_id: str) -> str:
    """`/id-in/Cmeter` (SP-relative, our CSE) and `Cmeter` name the same AE."""
    prefix = cse_id + "/"
    if originator.startswith(prefix):
        return originator[len(prefix) :]
    if originator.startswith("//"):
        _, _, rest = originator[2:].partition("/")
        rest = "/" + rest
        if rest.startswith(prefix):
            return rest[len(prefix) :]
        return rest
    return originator
