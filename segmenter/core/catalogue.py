"""Structure catalogue: TG-263 names with their codes, colours and RT ROI interpreted types.

The catalogue is data: ``segmenter/data/catalogue.json`` (curated entries with verified SNOMED CT
codes and colours, the TG-263 targets and the CADS labels TG-263 has no name for) and
``segmenter/data/tg263.csv`` (the whole TG-263 list, turned into entries by :mod:`segmenter.core.tg263`
for every name the curated file does not have). This module only loads and checks them.
Unknown names are an error at load time, never a silently invented structure.

A site adds its own structures with :func:`extend_catalogue` (the node's ``[[structures]]``); the
functions that resolve names take that extended catalogue as an argument, the built-in one otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

from segmenter.core.errors import CatalogueError
from segmenter.core.tg263 import tg263_entries

RT_ROI_INTERPRETED_TYPES = frozenset(
    {"EXTERNAL", "PTV", "CTV", "GTV", "ORGAN", "AVOIDANCE", "BOLUS", "CAVITY", "CONTRAST_AGENT",
     "MARKER", "REGISTRATION", "ISOCENTER", "FIXATION", "DOSE_REGION", "CONTROL", "SUPPORT", "TREATED_VOLUME",
     "IRRAD_VOLUME", "BRACHY_CHANNEL", "BRACHY_ACCESSORY", "BRACHY_SRC_APP", "BRACHY_CHNL_SHLD"}
)


MAX_NAME_CHARS = 16
_ENTRY_KEYS = frozenset({"category", "type", "modifier", "colour", "rt_type", "description", "source", "fma_id"})
SCHEMES = frozenset({"SCT", "FMA", "DCM"})  # what the shipped entries may use; a site's own codes may use others


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
    fma_id: str = ""  # the FMA ID TG-263 gives for this name ("" when it gives none)


Catalogue = Mapping[str, StructureInfo]


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
            fma_id=str(raw.get("fma_id", "")),
        )
    return out


def merged_document(curated: dict[str, object], tg263_csv: str) -> dict[str, object]:
    """The curated document with every TG-263 name it lacks added (curated entries win; they get TG-263's FMA ID)."""
    structures = curated.get("structures")
    rules = curated.get("tg263", {})
    if not isinstance(structures, dict) or not isinstance(rules, dict):
        raise CatalogueError("catalogue: 'structures' and 'tg263' must be mappings")
    merged: dict[str, object] = {}
    for name, entry in tg263_entries(tg263_csv, rules).items():
        own = structures.get(name)
        if isinstance(own, dict):
            merged[name] = {**own, "fma_id": entry["fma_id"]} if "fma_id" in entry and "fma_id" not in own else own
        else:
            merged[name] = entry
    merged.update({name: entry for name, entry in structures.items() if name not in merged})
    return {**curated, "structures": merged}


@lru_cache(maxsize=1)
def load_catalogue() -> dict[str, StructureInfo]:
    """The built-in catalogue: the curated entries and the whole TG-263 list."""
    data = resources.files("segmenter").joinpath("data")
    curated = json.loads(data.joinpath("catalogue.json").read_text(encoding="utf-8"))
    catalogue = parse_catalogue(merged_document(curated, data.joinpath("tg263.csv").read_text(encoding="utf-8")))
    for info in catalogue.values():
        for code in (info.category, info.type, info.modifier):
            if code is not None and code.scheme not in SCHEMES:
                raise CatalogueError(f"catalogue entry {info.name!r}: coding scheme {code.scheme!r} "
                                     f"is not one of {', '.join(sorted(SCHEMES))}")
    return catalogue


def extend_catalogue(extra: Iterable[StructureInfo], base: Catalogue | None = None) -> dict[str, StructureInfo]:
    """``base`` (the built-in catalogue) with a site's own structures; a name already there is an error."""
    out = dict(load_catalogue() if base is None else base)
    for info in extra:
        if info.name in out:
            raise CatalogueError(f"structure {info.name!r} is already in the catalogue"
                                 + (" (TG-263)" if info.name in load_catalogue() else ""))
        out[info.name] = replace(info)
    return out


def lookup(name: str, catalogue: Catalogue | None = None) -> StructureInfo:
    """The catalogue entry of a structure; unknown names raise CatalogueError."""
    try:
        return (load_catalogue() if catalogue is None else catalogue)[name]
    except KeyError:
        raise CatalogueError(f"structure {name!r} is not in the catalogue") from None


def parse_label_mapping(data: object, where: str = "label mapping",
                        catalogue: Catalogue | None = None) -> dict[int, str]:
    """``{"labels": {"1": "Spleen" | {"structure": "Spleen", ...}}}`` or ``{"1": "Spleen"}`` -> {1: "Spleen"}.

    Every label must be a positive integer and every name a catalogue structure; an unknown name is
    an error here, at load time, never later in a writer.
    """
    if isinstance(data, dict) and "labels" in data:
        data = data["labels"]
    if not isinstance(data, dict) or not data:
        raise CatalogueError(f"{where}: expected a non-empty mapping of label id -> structure name")
    catalogue = load_catalogue() if catalogue is None else catalogue
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


def load_label_mapping(path: Path, catalogue: Catalogue | None = None) -> dict[int, str]:
    """A label mapping file (see :func:`parse_label_mapping`); unreadable files raise CatalogueError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CatalogueError(f"cannot read label mapping {path}: {exc}") from exc
    return parse_label_mapping(data, str(path), catalogue)


@cache
def builtin_mapping(name: str) -> dict[int, str]:
    """A mapping shipped in ``segmenter/data`` (e.g. ``totalsegmentator_total``)."""
    resource = resources.files("segmenter").joinpath(f"data/{name}.json")
    if not resource.is_file():
        raise CatalogueError(f"no built-in label mapping {name!r}")
    return parse_label_mapping(json.loads(resource.read_text(encoding="utf-8")), name)
