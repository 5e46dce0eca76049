"""The AAPM TG-263 structure list (``segmenter/data/tg263.csv``) as catalogue entries.

The list is data (see ``segmenter/data/SOURCES.md``); this module only turns its rows into
:class:`~segmenter.core.catalogue.StructureInfo`:

- **type code**: the SNOMED CT code TG-263's mCODE mapping gives, when its qualifiers are none or a
  laterality only (that laterality becomes the type modifier, as DICOM SEG and SR expect); else the FMA
  ID TG-263 gives (scheme ``FMA``, which holds the qualifiers in one concept); else a FALLBACK code
  (Anatomical Structure, Physical object or Spatial and Relational Concept) named in ``source``;
- **category**: Anatomical Structure; Physical object for devices; Spatial and Relational Concept for
  targets, PRVs and derived volumes;
  (PRVs: DICOM's Planning Organ At Risk Volume, from the catalogue's ``tg263`` rules);
- **RT ROI Interpreted Type**: the catalogue's ``tg263`` rules (by name, then by TG-263 target type);
- **colour**: :func:`deterministic_colour` of the name (TG-263 gives none).

Rows whose name is a pattern (``Bolus_xxmm``, ``SpinalCord_PRVxx``: ``x`` stands for digits) are not
structures and are left out.
"""

from __future__ import annotations

import colorsys
import csv
import hashlib
import io
import re
from collections.abc import Mapping

from segmenter.core.errors import CatalogueError

PATTERN_NAME = re.compile(r"x{2,}|PRVx(_|$)")
LATERALITY = {"left": ("7771000", "Left"), "right": ("24028007", "Right"), "right+left": ("51440002", "Right and left")}
ANATOMICAL = ("123037004", "SCT", "Anatomical Structure")
PHYSICAL = ("260787004", "SCT", "Physical object")
SPATIAL = ("309825002", "SCT", "Spatial and Relational Concept")
FALLBACK_TYPE = {ANATOMICAL: ("91723000", "SCT", "Anatomical Structure"), PHYSICAL: PHYSICAL, SPATIAL: SPATIAL}
SPATIAL_TARGET_TYPES = frozenset({"Target", "PRV", "Derived"})
PHYSICAL_CATEGORIES = frozenset({"Devices", "Bolus"})
PHYSICAL_RT_TYPES = frozenset({"AVOIDANCE", "BOLUS", "MARKER"})  # outside PRVs: devices, catheters, prostheses
COLUMNS = ("target_type", "major_category", "minor_category", "anatomic_group", "primary_name", "reverse_name",
           "description", "fma_id", "snomed_code", "snomed_term", "qualifiers", "sheet")
SOURCE = "AAPM TG-263 via HL7 mCODE TG263 workbook"
_SEMANTIC_TAG = re.compile(r"\s*\((body structure|physical object|qualifier value|morphologic abnormality)\)\s*$",
                           re.IGNORECASE)


def deterministic_colour(name: str) -> tuple[int, int, int]:
    """A vivid colour fixed by the name alone (the same on every node and in every release)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536
    saturation = 0.55 + digest[2] / 255 * 0.4
    value = 0.75 + digest[3] / 255 * 0.25
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def _meaning(text: str, fallback: str) -> str:
    meaning = _SEMANTIC_TAG.sub("", " ".join(text.split())) or fallback
    return meaning[:64]


def _category(row: Mapping[str, str], rt_type: str) -> tuple[str, str, str]:
    target_type = row["target_type"].strip()
    if target_type in SPATIAL_TARGET_TYPES:
        return SPATIAL
    if row["major_category"].strip() in PHYSICAL_CATEGORIES or rt_type in PHYSICAL_RT_TYPES:
        return PHYSICAL
    return SPATIAL if target_type.startswith("Non") else ANATOMICAL


def row_entry(row: Mapping[str, str], rt_types: Mapping[str, str], rt_by_target_type: Mapping[str, str],
              type_by_target_type: Mapping[str, list[str]]) -> dict[str, object]:
    """One CSV row -> a catalogue document entry (the shape ``catalogue.json`` uses)."""
    name = row["primary_name"]
    description = " ".join(row["description"].split()) or name
    qualifiers = row["qualifiers"].strip().lower().replace(" ", "")
    rt_type = rt_types.get(name) or rt_by_target_type.get(row["target_type"].strip()) or "ORGAN"
    category = _category(row, rt_type)
    entry: dict[str, object] = {"category": list(category), "description": description}
    snomed = row["snomed_code"].strip()
    if row["sheet"] == "mapped" and snomed.isdigit() and (not qualifiers or qualifiers in LATERALITY):
        entry["type"] = [snomed, "SCT", _meaning(row["snomed_term"], description)]
        if qualifiers:
            value, meaning = LATERALITY[qualifiers]
            entry["modifier"] = [value, "SCT", meaning]
        entry["source"] = f"{SOURCE} (SNOMED CT)"
    elif row["fma_id"].strip().isdigit():
        entry["type"] = [row["fma_id"].strip(), "FMA", description[:64]]
        entry["source"] = f"{SOURCE} (FMA)"
    elif row["target_type"].strip() in type_by_target_type:  # a PRV: DICOM's Planning Organ At Risk Volume
        entry["type"] = list(type_by_target_type[row["target_type"].strip()])
        entry["source"] = f"{SOURCE} (target type {row['target_type'].strip()}); DICOM PS3.16"
    else:
        entry["type"] = list(FALLBACK_TYPE[category])
        entry["source"] = f"FALLBACK: TG-263 gives no code for {name}; {category[2]} used"
    if row["fma_id"].strip().isdigit():
        entry["fma_id"] = row["fma_id"].strip()
    entry["rt_type"] = rt_type
    entry["colour"] = list(deterministic_colour(name))
    return entry


def read_rows(text: str) -> list[dict[str, str]]:
    """The CSV's rows (header checked), pattern names left out."""
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise CatalogueError(f"tg263.csv: expected the columns {', '.join(COLUMNS)}, got {reader.fieldnames}")
    return [row for row in reader if row["primary_name"] and not PATTERN_NAME.search(row["primary_name"])]


def tg263_entries(text: str, rules: Mapping[str, object]) -> dict[str, dict[str, object]]:
    """name -> catalogue entry for every structure of the TG-263 list."""
    by_name = rules.get("rt_type_by_name", {})
    by_target_type = rules.get("rt_type_by_target_type", {})
    types = rules.get("type_by_target_type", {})
    if not all(isinstance(v, dict) for v in (by_name, by_target_type, types)):
        raise CatalogueError("catalogue 'tg263': rt_type_by_name, rt_type_by_target_type and type_by_target_type "
                             "must be mappings")
    return {row["primary_name"]: row_entry(row, by_name, by_target_type, types)  # type: ignore[arg-type]
            for row in read_rows(text)}
