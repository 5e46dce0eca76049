"""Structure catalogue: every shipped entry valid, TotalSegmentator and SOARS covered, unknown names rejected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segmenter.core.catalogue import (
    builtin_mapping,
    load_catalogue,
    load_label_mapping,
    lookup,
    parse_catalogue,
    parse_label_mapping,
)
from segmenter.core.errors import CatalogueError

ORIGINAL = {
    "External": ("38266002", "EXTERNAL"), "Lung_L": ("44029006", "ORGAN"), "Lung_R": ("3341006", "ORGAN"),
    "Trachea": ("44567001", "AVOIDANCE"), "SpinalCord": ("2748008", "AVOIDANCE"), "Bone": ("272673000", "ORGAN"),
}
DATA = Path(__file__).resolve().parents[2] / "segmenter" / "data"


def _entry(**changes: object) -> dict[str, object]:
    entry: dict[str, object] = {"category": ["123037004", "SCT", "Anatomical Structure"],
                                "type": ["10200004", "SCT", "Liver"], "colour": [1, 2, 3], "rt_type": "ORGAN"}
    entry.update(changes)
    return entry


def test_original_entries_are_unchanged() -> None:
    for name, (code, rt_type) in ORIGINAL.items():
        info = lookup(name)
        assert (info.type.value, info.type.scheme, info.rt_type) == (code, "SCT", rt_type)
        assert info.modifier is None


def test_every_entry_uses_sct_and_distinct_names() -> None:
    catalogue = load_catalogue()
    assert len(catalogue) >= 6 + 117
    for info in catalogue.values():
        assert info.category.scheme == "SCT" and info.type.scheme == "SCT", info.name
        assert info.type.value.isdigit(), info.name
        assert len(info.name) <= 16 and info.name.isascii()
        if info.modifier is not None:
            assert info.modifier.scheme == "SCT"


def test_totalsegmentator_total_maps_all_117_classes(shared_data: Path) -> None:
    names = json.loads((shared_data / "nifti" / "totalseg_example" / "total_labels.json").read_text())
    mapping = builtin_mapping("totalsegmentator_total")
    assert sorted(mapping) == list(range(1, 118))
    raw = json.loads((DATA / "totalsegmentator_total.json").read_text())["labels"]
    assert {k: v["source"] for k, v in raw.items()} == names
    assert mapping[5] == "Liver" and mapping[16] == "Trachea" and mapping[79] == "SpinalCord"
    assert mapping[10] == "Lung_LUL" and mapping[14] == "Lung_RLL"
    # left and right never collapse onto one structure
    assert len(set(mapping.values())) == 117


def test_laterality_is_carried_by_a_modifier_or_the_code() -> None:
    left, right = lookup("Kidney_L"), lookup("Kidney_R")
    assert left.type == right.type
    assert left.modifier is not None and left.modifier.value == "7771000"
    assert right.modifier is not None and right.modifier.value == "24028007"
    assert lookup("A_Subclavian_L").type.value != lookup("A_Subclavian_R").type.value


def test_soars_head_and_neck_42_are_in_the_catalogue() -> None:
    names = json.loads((DATA / "soars_hn42.json").read_text())["structures"]
    assert len(names) == len(set(names)) == 42
    for name in names:
        lookup(name)


def test_unknown_structure_name_is_a_load_time_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match=r"not in the catalogue: 2='Liverr'"):
        parse_label_mapping({"1": "Spleen", "2": "Liverr"})
    path = tmp_path / "structures.json"
    path.write_text(json.dumps({"labels": {"1": {"structure": "Nope"}}}))
    with pytest.raises(CatalogueError, match="'Nope'"):
        load_label_mapping(path)
    with pytest.raises(CatalogueError, match="not in the catalogue"):
        lookup("Nope")


@pytest.mark.parametrize(("data", "message"), [
    ({"0": "Liver"}, "must be positive"),
    ({"x": "Liver"}, "not an integer"),
    ({"1": 5}, "must be a string"),
    ({}, "non-empty mapping"),
])
def test_bad_label_mappings(data: dict[str, object], message: str) -> None:
    with pytest.raises(CatalogueError, match=message):
        parse_label_mapping(data)


def test_unreadable_mapping_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="cannot read label mapping"):
        load_label_mapping(tmp_path / "missing.json")


@pytest.mark.parametrize(("entry", "message"), [
    (_entry(type=["T-62000", "SRT", "Liver"]), "deprecated SRT"),
    (_entry(rt_type="LIVER"), "RT ROI Interpreted Type"),
    (_entry(colour=[0, 0, 256]), "colour"),
    (_entry(modifier=["7771000", "SCT"]), "modifier"),
    (_entry(extra=1), "unknown key"),
])
def test_bad_catalogue_entries(entry: dict[str, object], message: str) -> None:
    with pytest.raises(CatalogueError, match=message):
        parse_catalogue({"structures": {"Liver": entry}})


def test_long_names_are_rejected() -> None:
    with pytest.raises(CatalogueError, match="1-16 ASCII"):
        parse_catalogue({"structures": {"A_Very_Long_Name_X": _entry()}})
