"""TS-0023 (SDT information models) flexContainer specializations, as data.

Each model class is one table: its wrapper key (domain prefix and short name), its
containerDefinition (`cnd`) and its data points by short name, with the value kind and
whether the model says it is always there (cardinality 1: it may be left out of a CREATE, as
in ACME, but an UPDATE may not remove it). The short names and `cnd` values are those of
TS-0023 Release 5 (the `common` and `city` domains), which ACME uses too.

A smart electric meter is the `deviceSmartElectricMeter` device; of its module classes these
are the ones a meter's registers and its service switch fill in. Adding a model class is one
table here and one line in `MODEL_CLASSES`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cse.core.resources.base import Kind


@dataclass(frozen=True, slots=True)
class DataPoint:
    short: str
    name: str  # the SDT long name, for readers
    kind: Kind
    required: bool = False


@dataclass(frozen=True, slots=True)
class ModelClass:
    key: str  # wrapper key on the wire, e.g. cod:eneCn
    definition: str  # containerDefinition (cnd)
    data_points: tuple[DataPoint, ...]


_GENERATED_AT = DataPoint("dgt", "dataGenerationTime", Kind.TIMESTAMP)

ENERGY_CONSUMPTION = ModelClass(
    "cod:eneCn",
    "org.onem2m.common.moduleclass.energyConsumption",
    (
        _GENERATED_AT,
        DataPoint("power", "power", Kind.NUMBER),  # W
        DataPoint("abECn", "absoluteEnergyConsumption", Kind.NUMBER, required=True),  # kWh
        DataPoint("roECn", "roundingEnergyConsumption", Kind.INTEGER),
        DataPoint("sigDs", "significantDigits", Kind.INTEGER),
        DataPoint("mulFs", "multiplyingFactors", Kind.INTEGER),
        DataPoint("volte", "voltage", Kind.NUMBER),  # V
        DataPoint("currt", "current", Kind.NUMBER),  # A
        DataPoint("freqy", "frequency", Kind.NUMBER),  # Hz
        DataPoint("meaSe", "measuringScope", Kind.STRING),
    ),
)

ENERGY_GENERATION = ModelClass(
    "cod:eneGn",
    "org.onem2m.common.moduleclass.energyGeneration",
    (
        _GENERATED_AT,
        DataPoint("poGDa", "powerGenerationData", Kind.NUMBER),
        DataPoint("roEGn", "roundingEnergyGeneration", Kind.INTEGER),
        DataPoint("sigDs", "significantDigits", Kind.INTEGER),
        DataPoint("mulFs", "multiplyingFactors", Kind.INTEGER),
        DataPoint("genSe", "generationSource", Kind.STRING, required=True),
    ),
)

BINARY_SWITCH = ModelClass(
    "cod:binSh",
    "org.onem2m.common.moduleclass.binarySwitch",
    (_GENERATED_AT, DataPoint("state", "state", Kind.BOOLEAN, required=True)),
)

SMART_ELECTRIC_METER = ModelClass(
    "cid:dSEMr",
    "org.onem2m.city.device.deviceSmartElectricMeter",
    (
        DataPoint("nodLk", "nodeLink", Kind.STRING),
        DataPoint("flNLk", "flexNodeLink", Kind.STRING),
    ),
)

MODEL_CLASSES = (SMART_ELECTRIC_METER, ENERGY_CONSUMPTION, ENERGY_GENERATION, BINARY_SWITCH)
