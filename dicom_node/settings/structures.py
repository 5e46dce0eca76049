"""[[structures]]: the department's own structures (name, code, colour, interpreted type), and the check that
every structure name a template uses is in the catalogue the node runs with (built-in + the department's).

The node's catalogue is :func:`site_catalogue` of the settings, built once from them and passed to
whatever resolves names (templates, writers, ``dicom-node write``); the built-in catalogue is never changed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, StrictInt, StrictStr, field_validator
from pydantic.dataclasses import dataclass

from dicom_node.errors import ConfigError
from dicom_node.settings.problems import Problem, toml_path
from dicom_node.settings.values import RoiName, problem
from segmenter.core.catalogue import (
    RT_ROI_INTERPRETED_TYPES,
    Catalogue,
    Code,
    StructureInfo,
    extend_catalogue,
    load_catalogue,
)
from segmenter.core.errors import CatalogueError

TABLE = ConfigDict(extra="forbid")
# the category a structure of each interpreted type gets when the table names none (DICOM CID 7150)
ANATOMICAL = ("123037004", "SCT", "Anatomical Structure")
SPATIAL = ("309825002", "SCT", "Spatial and Relational Concept")
PHYSICAL = ("260787004", "SCT", "Physical object")
_SPATIAL_TYPES = frozenset({"PTV", "CTV", "GTV", "TREATED_VOLUME", "IRRAD_VOLUME", "DOSE_REGION", "CONTROL"})
_PHYSICAL_TYPES = frozenset({"BOLUS", "MARKER", "REGISTRATION", "ISOCENTER", "FIXATION", "SUPPORT", "CONTRAST_AGENT",
                             "BRACHY_CHANNEL", "BRACHY_ACCESSORY", "BRACHY_SRC_APP", "BRACHY_CHNL_SHLD"})


def _code_value(value: str) -> str:
    if not value.strip() or len(value) > 16 or "\\" in value:
        raise problem(f"{value!r} is not a code value (1-16 characters, DICOM SH)")
    return value


def _scheme(value: str) -> str:
    if value == "SRT":
        raise problem("the deprecated SRT scheme is not allowed, use SCT")
    if not value.strip() or len(value) > 16 or "\\" in value:
        raise problem(f"{value!r} is not a coding scheme designator (1-16 characters, e.g. SCT, FMA, 99LOCAL)")
    return value


def _meaning(value: str) -> str:
    if not value.strip() or len(value) > 64 or "\\" in value:
        raise problem(f"{value!r} is not a code meaning (1-64 characters, DICOM LO)")
    return value


def _interpreted_type(value: str) -> str:
    if value.upper() not in RT_ROI_INTERPRETED_TYPES:
        raise problem(f"{value!r} is not an RT ROI Interpreted Type ({', '.join(sorted(RT_ROI_INTERPRETED_TYPES))})")
    return value.upper()


def _colour(value: tuple[int, ...]) -> tuple[int, ...]:
    if len(value) != 3 or any(not 0 <= c <= 255 for c in value):
        raise problem(f"must be three integers 0-255 (red, green, blue), got {list(value)}")
    return value


def _not_builtin(name: str) -> str:
    if name in load_catalogue():
        raise problem(f"{name!r} is already in the catalogue (TG-263 and the built-in structures); "
                      "a department structure needs a name of its own")
    return name


CodeValue = Annotated[StrictStr, AfterValidator(_code_value)]
Scheme = Annotated[StrictStr, AfterValidator(_scheme)]
Meaning = Annotated[StrictStr, AfterValidator(_meaning)]
InterpretedType = Annotated[StrictStr, AfterValidator(_interpreted_type)]
Colour = Annotated[tuple[StrictInt, ...], Field(json_schema_extra={"minItems": 3, "maxItems": 3}),
                   AfterValidator(_colour)]
DepartmentName = Annotated[RoiName, AfterValidator(_not_builtin)]


@dataclass(frozen=True, config=TABLE)
class StructureCode:
    """A coded concept: ``{ value = "399384005", scheme = "SCT", meaning = "Prostatic bed" }``."""

    value: CodeValue = Field(description="code value (SH, 16 characters)")
    scheme: Scheme = Field(description="coding scheme designator: SCT, FMA, DCM or a local 99... scheme")
    meaning: Meaning = Field(description="code meaning (LO, 64 characters)")

    def code(self) -> Code:
        return Code(self.value, self.scheme, self.meaning)


@dataclass(frozen=True, config=TABLE)
class DepartmentStructure:
    """[[structures]]: a structure of this department, added to the catalogue (templates may map to it)."""

    name: DepartmentName = Field(description="ROI Name / Segment Label; not a name the catalogue already has")
    code: StructureCode = Field(description="what it is: Segmented Property Type, RT ROI Identification Code")
    colour: Colour = Field(description="display colour [red, green, blue], 0-255 each")
    interpreted_type: InterpretedType = Field(
        description="RT ROI Interpreted Type: ORGAN, PTV, CTV, GTV, AVOIDANCE, EXTERNAL, ...")
    category: StructureCode | None = Field(
        default=None, description="Segmented Property Category; default from interpreted_type "
                                  "(Anatomical Structure, Spatial and Relational Concept or Physical object)")
    modifier: StructureCode | None = Field(
        default=None, description="type modifier, e.g. laterality (SCT 7771000 Left)")
    description: StrictStr = Field(default="", description="ROI Description / Segment Description text")

    @field_validator("description")
    @classmethod
    def _description_fits(cls, value: str) -> str:
        if len(value) > 64:
            raise problem(f"must be at most 64 characters (DICOM LO), got {len(value)}")
        return value

    def info(self) -> StructureInfo:
        if self.category is not None:
            category = self.category.code()
        else:
            category = Code(*(SPATIAL if self.interpreted_type in _SPATIAL_TYPES else
                              PHYSICAL if self.interpreted_type in _PHYSICAL_TYPES else ANATOMICAL))
        colour = (self.colour[0], self.colour[1], self.colour[2])
        return StructureInfo(self.name, category, self.code.code(), colour, self.interpreted_type, self.description,
                             None if self.modifier is None else self.modifier.code(), source="[[structures]]")


def site_catalogue(structures: Collection[DepartmentStructure]) -> Catalogue:
    """The built-in catalogue with the department's structures (a new mapping; the built-in one is unchanged)."""
    try:
        return extend_catalogue(s.info() for s in structures)
    except CatalogueError as exc:  # names are checked at load; two tables of one name built in code end here
        raise ConfigError(f"structures: {exc}") from exc


# -- the names templates use ------------------------------------------------------------------

def department_names(data: dict[str, Any]) -> set[str]:
    """The names of a raw document's [[structures]] (valid or not: their own errors say what is wrong)."""
    raw = data.get("structures", [])
    return {t["name"] for t in raw if isinstance(t, dict) and isinstance(t.get("name"), str)} \
        if isinstance(raw, list) else set()


def _names(where: tuple[str | int, ...], value: object, keys: bool) -> Iterator[tuple[str, str]]:
    """(TOML path, name) of the names in a template's list or table (its keys, or its values)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if keys:
                yield toml_path((*where, key)), key
            elif isinstance(item, str):
                yield toml_path((*where, key)), item
            elif isinstance(item, list):
                yield from ((toml_path((*where, key, i)), s) for i, s in enumerate(item) if isinstance(s, str))
    elif isinstance(value, list):
        yield from ((toml_path((*where, i)), s) for i, s in enumerate(value) if isinstance(s, str))


def template_structure_problems(data: dict[str, Any], extra: Collection[str] = ()) -> list[Problem]:
    """Every structure name of every [[templates]] entry that is not in the catalogue + ``extra`` (the
    department's names): include, rename and merge names, and map targets. Map sources are what a model
    produces, so they must be built-in catalogue names (``dicom-node check-config`` checks them against
    the rule's model)."""
    builtin = load_catalogue()
    known = set(builtin) | set(extra)
    problems: list[Problem] = []
    raw = data.get("templates", [])
    for index, template in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(template, dict):
            continue
        names = [*_names(("templates", index, "include"), template.get("include"), keys=False),
                 *_names(("templates", index, "rename"), template.get("rename"), keys=True),
                 *_names(("templates", index, "merge"), template.get("merge"), keys=True),
                 *_names(("templates", index, "merge"), template.get("merge"), keys=False),
                 *_names(("templates", index, "map"), template.get("map"), keys=False)]
        for path, name in names:
            if name not in known:
                problems.append(Problem(path, f"{name!r} is not a structure of the catalogue"))
        for path, name in _names(("templates", index, "map"), template.get("map"), keys=True):
            if name not in builtin:
                problems.append(Problem(path, f"{name!r} is not a structure any model produces (model outputs "
                                              "are catalogue names)"))
    return problems
