"""<deviceInfo> mgmtObj (TS-0001 D.8, mgd 1007, `m2m:dvi`): what a device is and runs.

Optionality as ACME has it: hardware version and country are set when the object is made
and not changed afterwards.
"""

from __future__ import annotations

from cse.core.resources.base import NP, Attribute, Kind, M, O
from cse.core.resources.mgmt_obj import MgmtDefinition, specialization_spec

SPEC = specialization_spec(
    MgmtDefinition.DEVICE_INFO,
    "dvi",
    {
        "dlb": Attribute(Kind.STRING, M, O),  # deviceLabel (e.g. its serial number)
        "man": Attribute(Kind.STRING, M, O),  # manufacturer
        "mfdl": Attribute(Kind.STRING),  # manufacturerDetailsLink
        "mfd": Attribute(Kind.TIMESTAMP),  # manufacturingDate
        "mod": Attribute(Kind.STRING, M, O),  # model
        "smod": Attribute(Kind.STRING),  # subModel
        "dty": Attribute(Kind.STRING, M, O),  # deviceType
        "dvnm": Attribute(Kind.STRING),  # deviceName
        "fwv": Attribute(Kind.STRING),  # fwVersion
        "swv": Attribute(Kind.STRING),  # swVersion
        "hwv": Attribute(Kind.STRING, O, NP),  # hwVersion
        "osv": Attribute(Kind.STRING),  # osVersion
        "cnty": Attribute(Kind.STRING, O, NP),  # country
        "loc": Attribute(Kind.STRING),  # location
        "syst": Attribute(Kind.TIMESTAMP),  # systemTime
        "spur": Attribute(Kind.STRING),  # supportURL
        "purl": Attribute(Kind.STRING),  # presentationURL
        "ptl": Attribute(Kind.STRINGS),  # protocol
    },
)
