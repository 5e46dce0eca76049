"""Structure catalogue: TG-263 names with SNOMED CT codes, colours and RT ROI interpreted types.

The catalogue is data (``segmenter/data/catalogue.json``); this module only loads and checks it.
Unknown names are an error at load time, never a silently invented structure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from segmenter.errors import CatalogueError

RT_ROI_INTERPRETED_TYPES = frozenset(
    {"EXTERNAL", "PTV", "CTV", "GTV", "ORGAN", "AVOIDANCE", "BOLUS", "CAVITY", "CONTRAST_AGENT",
     "MARKER", "REGISTRATION", "ISOCENTER", "FIXATION", "DOSE_REGION", "CONTROL", "SUPPORT", "TREATED_VOLUME",
     "IRRAD_VOLUME", "BRACHY_CHANNEL", "BRACHY_ACCESSORY", "BRACHY_SRC_APP", "BRACHY_CHNL_SHLD"}
)


@dataclass(frozen=True)
class Code:
    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class StructureInfo:
    name: str
    category: Code
    type: Code
    colour: tuple[int, int, int]
    rt_type: str
    description: str = ""


def _code(raw: object, where: str) -> Code:
    if not (isinstance(raw, list) and len(raw) == 3 and all(isinstance(v, str) and v for v in raw)):
        raise CatalogueError(f"{where}: a code must be [value, scheme, meaning], got {raw!r}")
    return Code(*raw)


def parse_catalogue(data: dict[str, object]) -> dict[str, StructureInfo]:
    """Validate the catalogue document and return name -> StructureInfo."""
    entries = data.get("structures")
    if not isinstance(entries, dict) or not entries:
        raise CatalogueError("catalogue: 'structures' must be a non-empty mapping")
    out: dict[str, StructureInfo] = {}
    for name, raw in entries.items():
        if not isinstance(raw, dict):
            raise CatalogueError(f"catalogue entry {name!r}: must be a mapping")
        colour = raw.get("colour")
        if not (isinstance(colour, list) and len(colour) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)):
            raise CatalogueError(f"catalogue entry {name!r}: colour must be three integers 0-255")
        rt_type = raw.get("rt_type")
        if rt_type not in RT_ROI_INTERPRETED_TYPES:
            raise CatalogueError(f"catalogue entry {name!r}: unknown RT ROI Interpreted Type {rt_type!r}")
        if len(name) > 16 and not name.isascii():
            raise CatalogueError(f"catalogue entry {name!r}: names must be ASCII")
        out[name] = StructureInfo(
            name=name,
            category=_code(raw.get("category"), f"catalogue entry {name!r} category"),
            type=_code(raw.get("type"), f"catalogue entry {name!r} type"),
            colour=(colour[0], colour[1], colour[2]),
            rt_type=str(rt_type),
            description=str(raw.get("description", "")),
        )
    return out


@lru_cache(maxsize=1)
def load_catalogue() -> dict[str, StructureInfo]:
    text = resources.files("segmenter").joinpath("data/catalogue.json").read_text(encoding="utf-8")
    return parse_catalogue(json.loads(text))


def lookup(name: str) -> StructureInfo:
    """The catalogue entry of a structure; unknown names raise CatalogueError."""
    catalogue = load_catalogue()
    try:
        return catalogue[name]
    except KeyError:
        raise CatalogueError(f"structure {name!r} is not in the catalogue") from None
