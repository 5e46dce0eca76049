"""Structure catalogue: every shipped entry valid, the TG-263 list, TotalSegmentator, SOARS and CADS covered,
unknown names rejected, a site's own structures added."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segmenter.core.catalogue import (
    Code,
    StructureInfo,
    builtin_mapping,
    extend_catalogue,
    load_catalogue,
    load_label_mapping,
    lookup,
    parse_catalogue,
    parse_label_mapping,
)
from segmenter.core.errors import CatalogueError
from segmenter.core.tg263 import deterministic_colour, read_rows

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


def test_every_entry_is_coded_and_named_as_tg263_says() -> None:
    catalogue = load_catalogue()
    assert len(catalogue) >= 6 + 117
    for info in catalogue.values():
        assert info.category.scheme == "SCT", info.name
        assert info.type.scheme in ("SCT", "FMA", "DCM"), info.name
        assert info.type.value.isdigit() and info.type.meaning, info.name
        assert len(info.name) <= 16 and info.name.isascii()
        assert len(info.type.meaning) <= 64 and len(info.category.meaning) <= 64
        if info.modifier is not None:
            assert info.modifier.scheme == "SCT"
        if info.type.scheme == "FMA":
            assert info.type.value == info.fma_id, info.name


def test_the_whole_tg263_list_loads_with_its_codes() -> None:
    rows = read_rows((DATA / "tg263.csv").read_text(encoding="utf-8"))
    names = [row["primary_name"] for row in rows]
    assert len(names) == len(set(names)) == 724  # 740 TG-263 names, less 16 patterns such as Bolus_xxmm
    catalogue = load_catalogue()
    assert set(names) <= set(catalogue)
    assert "Bolus_xxmm" not in catalogue and "SpinalCord_PRVxx" not in catalogue
    # TG-263's FMA IDs, SNOMED CT from its mCODE mapping, laterality as the modifier
    for name, fma, sct in (("Rectum", "14544", "34402009"), ("Femur_Head_L", "32843", "2812003"),
                           ("Femur_Head_R", "32842", "2812003"), ("PenileBulb", "19614", "52737000"),
                           ("Bowel", "7199", "113276009"), ("SeminalVes", "19387", "64739004"),
                           ("Prostate", "9600", "41216001"), ("Bladder", "15900", "89837001")):
        info = catalogue[name]
        assert (info.fma_id, info.type.value, info.type.scheme, info.rt_type) == (fma, sct, "SCT", "ORGAN"), name
    assert catalogue["Femur_Head_L"].modifier == Code("7771000", "SCT", "Left")
    assert catalogue["Femur_Head_R"].modifier == Code("24028007", "SCT", "Right")
    # a qualifier other than laterality: the FMA concept holds it
    node = catalogue["LN_Neck_IA_L"]
    assert (node.type.value, node.type.scheme, node.modifier) == ("235616", "FMA", None)
    # curated entries keep their codes and colours and gain TG-263's FMA ID
    assert (catalogue["Prostate"].colour, catalogue["Prostate"].source) == ((230, 158, 140),
                                                                           "DICOM PS3.16 SCT (pydicom codes)")


def test_targets_and_other_volumes_have_their_interpreted_types() -> None:
    catalogue = load_catalogue()
    expected = {"GTV": ("GTV", "228791009"), "CTV": ("CTV", "228792002"), "PTV": ("PTV", "228793007"),
                "ITV": ("CTV", "228792002"), "GTVp": ("GTV", "228791009"), "CTVn": ("CTV", "228792002"),
                "PTV_High": ("PTV", "228793007"), "SpinalCord_PRV": ("AVOIDANCE", "130057"),
                "Bolus": ("BOLUS", "260787004"), "Body": ("EXTERNAL", "38266002"),
                "Lungs-GTV": ("CONTROL", "309825002")}
    for name, (rt_type, code) in expected.items():
        assert (catalogue[name].rt_type, catalogue[name].type.value) == (rt_type, code), name


def test_colours_are_deterministic_and_curated_ones_kept() -> None:
    assert deterministic_colour("Rectum") == deterministic_colour("Rectum") == lookup("Rectum").colour
    assert deterministic_colour("Femur_Head_L") != deterministic_colour("Femur_Head_R")
    assert lookup("Lung_L").colour == (255, 179, 0)


def test_cads_167_labels_resolve() -> None:
    mapping = builtin_mapping("cads")
    assert sorted(mapping) == list(range(1, 168))
    assert len(set(mapping.values())) == 167
    raw = json.loads((DATA / "cads.json").read_text())["labels"]
    assert raw["110"] == {"source": "rectum", "structure": "Rectum"}
    assert (mapping[111], mapping[112], mapping[108], mapping[153]) == ("Prostate", "SeminalVes", "Bag_Bowel",
                                                                       "OpticNrv_L")


def _own(name: str = "Prostate_Bed2") -> StructureInfo:
    return StructureInfo(name, Code("123037004", "SCT", "Anatomical Structure"),
                         Code("399384005", "SCT", "Prostatic bed"), (10, 20, 30), "CTV")


def test_a_site_extends_the_catalogue_with_its_own_structures() -> None:
    catalogue = extend_catalogue([_own()])
    assert lookup("Prostate_Bed2", catalogue).colour == (10, 20, 30)
    assert parse_label_mapping({"1": "Prostate_Bed2"}, "m", catalogue) == {1: "Prostate_Bed2"}
    with pytest.raises(CatalogueError, match="not in the catalogue"):
        parse_label_mapping({"1": "Prostate_Bed2"}, "m")  # the built-in catalogue is untouched
    with pytest.raises(CatalogueError, match=r"'Rectum' is already in the catalogue \(TG-263\)"):
        extend_catalogue([_own("Rectum")])


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


def test_cads_folders_import_with_catalogue_names() -> None:
    from segmenter.nnunet.importer import map_label_names

    names = {0: "background", 1: "OAR_Brainstem", 2: "rectum", 3: "left psoas major", 4: "OAR_Eye_AL", 5: "bowel_bag"}
    assert map_label_names(names) == {1: "Brainstem", 2: "Rectum", 3: "Musc_Psoas_L", 4: "Eye_Ant_L", 5: "Bag_Bowel"}
