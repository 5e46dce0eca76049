"""Structure catalogue: TG-263 names with SNOMED CT codes, colours and RT ROI interpreted types.

The catalogue is data (``segmenter/data/catalogue.json``); this module only loads and checks it.
Unknown names are an error at load time, never a silently invented structure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

from segmenter.core.errors import CatalogueError

RT_ROI_INTERPRETED_TYPES = frozenset(
    {"EXTERNAL", "PTV", "CTV", "GTV", "ORGAN", "AVOIDANCE", "BOLUS", "CAVITY", "CONTRAST_AGENT",
     "MARKER", "REGISTRATION", "ISOCENTER", "FIXATION", "DOSE_REGION", "CONTROL", "SUPPORT", "TREATED_VOLUME",
     "IRRAD_VOLUME", "BRACHY_CHANNEL", "BRACHY_ACCESSORY", "BRACHY_SRC_APP", "BRACHY_CHNL_SHLD"}
)


MAX_NAME_CHARS = 16
_ENTRY_KEYS = frozenset({"category", "type", "modifier", "colour", "rt_type", "description", "source"})


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
    modifier: Code | None = None  # e.g. laterality (SCT 7771000 Left) refining ``type``
    source: str = ""  # where the codes were verified (see the catalogue's _sources)


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
        if not (isinstance(colour, list) and len(colour) == 3
                and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)):
            raise CatalogueError(f"catalogue entry {name!r}: colour must be three integers 0-255")
        rt_type = raw.get("rt_type")
        if rt_type not in RT_ROI_INTERPRETED_TYPES:
            raise CatalogueError(f"catalogue entry {name!r}: unknown RT ROI Interpreted Type {rt_type!r}")
        if not name or len(name) > MAX_NAME_CHARS or not name.isascii():
            raise CatalogueError(f"catalogue entry {name!r}: names must be 1-{MAX_NAME_CHARS} ASCII characters "
                                 "(TG-263)")
        unknown = sorted(set(raw) - _ENTRY_KEYS)
        if unknown:
            raise CatalogueError(f"catalogue entry {name!r}: unknown key(s) {', '.join(unknown)}")
        for which in ("category", "type", "modifier"):
            value = raw.get(which)
            if value is not None and isinstance(value, list) and len(value) == 3 and value[1] == "SRT":
                raise CatalogueError(f"catalogue entry {name!r} {which}: the deprecated SRT scheme is not allowed, "
                                     "use SCT")
        out[name] = StructureInfo(
            name=name,
            category=_code(raw.get("category"), f"catalogue entry {name!r} category"),
            type=_code(raw.get("type"), f"catalogue entry {name!r} type"),
            colour=(colour[0], colour[1], colour[2]),
            rt_type=str(rt_type),
            description=str(raw.get("description", "")),
            modifier=(None if raw.get("modifier") is None
                      else _code(raw["modifier"], f"catalogue entry {name!r} modifier")),
            source=str(raw.get("source", "")),
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


def parse_label_mapping(data: object, where: str = "label mapping") -> dict[int, str]:
    """``{"labels": {"1": "Spleen" | {"structure": "Spleen", ...}}}`` or ``{"1": "Spleen"}`` -> {1: "Spleen"}.

    Every label must be a positive integer and every name a catalogue structure; an unknown name is
    an error here, at load time, never later in a writer.
    """
    if isinstance(data, dict) and "labels" in data:
        data = data["labels"]
    if not isinstance(data, dict) or not data:
        raise CatalogueError(f"{where}: expected a non-empty mapping of label id -> structure name")
    catalogue = load_catalogue()
    out: dict[int, str] = {}
    unknown = []
    for key, value in data.items():
        name = value.get("structure") if isinstance(value, dict) else value
        try:
            label = int(key)
        except (TypeError, ValueError):
            raise CatalogueError(f"{where}: label {key!r} is not an integer") from None
        if label <= 0:
            raise CatalogueError(f"{where}: label {label} must be positive (0 is background)")
        if not isinstance(name, str):
            raise CatalogueError(f"{where}: label {label}: structure name must be a string, got {name!r}")
        if name not in catalogue:
            unknown.append(f"{label}={name!r}")
        out[label] = name
    if unknown:
        raise CatalogueError(f"{where}: structure name(s) not in the catalogue: {', '.join(unknown)}")
    return out


def load_label_mapping(path: Path) -> dict[int, str]:
    """A label mapping file (see :func:`parse_label_mapping`); unreadable files raise CatalogueError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CatalogueError(f"cannot read label mapping {path}: {exc}") from exc
    return parse_label_mapping(data, str(path))


@cache
def builtin_mapping(name: str) -> dict[int, str]:
    """A mapping shipped in ``segmenter/data`` (e.g. ``totalsegmentator_total``)."""
    resource = resources.files("segmenter").joinpath(f"data/{name}.json")
    if not resource.is_file():
        raise CatalogueError(f"no built-in label mapping {name!r}")
    return parse_label_mapping(json.loads(resource.read_text(encoding="utf-8")), name)
