"""<node> (TS-0001 9.6.18): a device (an M2M node) and, below it, its management objects.

Made under the CSEBase or a remoteCSE; its children are the mgmtObj specializations that
describe and manage the device (firmware, memory, battery, deviceInfo, reboot, ...), and
flexContainers (as ACME allows).
Policies as ACME has them; the network-provided attributes (networkID, roamingStatus) are
never set by a request.
"""

from __future__ import annotations

from cse.core.resources.base import NP, Attribute, Kind, M, O, resource_spec
from cse.core.types import ResourceType as T

SPEC = resource_spec(
    T.NODE,
    "nod",
    {
        "ni": Attribute(Kind.STRING, M, O),  # nodeID: the M2M-Node-ID of the device
        "hcl": Attribute(Kind.STRING),  # hostedCSELink
        "hael": Attribute(Kind.STRINGS),  # hostedAELinks
        "hsl": Attribute(Kind.STRINGS),  # hostedServiceLinks
        "mgca": Attribute(Kind.STRINGS),  # mgmtClientAddress
        "nty": Attribute(Kind.COUNT),  # nodeType
        "nid": Attribute(Kind.STRING, NP, NP),  # networkID
        "rms": Attribute(Kind.BOOLEAN, NP, NP),  # roamingStatus
    },
    {T.MGMT_OBJ, T.SUBSCRIPTION, T.FLEX_CONTAINER},
    has_creator=False,  # as in ACME: no cr on a node
)
