"""[[structures]] (the department's own structures) and templates' map: every error names the key,
the node's catalogue is the built-in one plus the department's, map checked against the model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dicom_node.cli import cmd_check_config
from dicom_node.errors import ConfigError, OutputError
from dicom_node.live_config import problems_of
from dicom_node.settings import parse_settings, parse_templates
from dicom_node.templates import apply_template
from segmenter.core.catalogue import load_catalogue, lookup
from segmenter.core.result import LabelledStructure, SegmentationResult
from segmenter.core.volume import Volume
from tests.conftest import settings_dict

OWN: dict[str, Any] = {"name": "Prostate_Bed2", "code": {"value": "399384005", "scheme": "SCT",
                                                          "meaning": "Prostatic bed"},
                       "colour": [10, 20, 30], "interpreted_type": "ctv"}


def _settings(tmp_path: Path, structures: list[dict[str, Any]], templates: list[dict[str, Any]] | None = None,
              rules: list[dict[str, Any]] | None = None) -> Any:
    return parse_settings(settings_dict(tmp_path, structures=structures, templates=templates or [],
                                        destinations=[{"name": "TPS", "ae_title": "TPS", "host": "127.0.0.1",
                                                       "port": 104}],
                                        routing={"rules": rules or []}), tmp_path)


def _problems(tmp_path: Path, structures: list[dict[str, Any]], templates: list[dict[str, Any]] | None = None
              ) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, structures, templates)
    return [line.strip() for line in str(caught.value).splitlines()[1:]]


def test_department_structures_join_the_catalogue(tmp_path: Path) -> None:
    laterality = {**OWN, "name": "Hip_Implant_L", "interpreted_type": "AVOIDANCE",
                  "code": {"value": "24419001", "scheme": "SCT", "meaning": "Hip prosthesis"},
                  "modifier": {"value": "7771000", "scheme": "SCT", "meaning": "Left"},
                  "category": {"value": "260787004", "scheme": "SCT", "meaning": "Physical object"},
                  "description": "Left hip implant"}
    settings = _settings(tmp_path, [OWN, laterality])
    catalogue = settings.catalogue()
    bed = catalogue["Prostate_Bed2"]
    assert (bed.rt_type, bed.colour, bed.type.value, bed.category.value) == ("CTV", (10, 20, 30), "399384005",
                                                                          "309825002")  # a CTV: spatial
    hip = lookup("Hip_Implant_L", catalogue)
    assert hip.modifier is not None and hip.modifier.meaning == "Left" and hip.category.value == "260787004"
    assert len(catalogue) == len(load_catalogue()) + 2
    assert "Prostate_Bed2" not in load_catalogue()  # the built-in catalogue is never changed


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "Rectum"}, "structures[0].name: 'Rectum' is already in the catalogue (TG-263"),
    ({"colour": [0, 0, 256]}, "structures[0].colour: must be three integers 0-255 (red, green, blue), got [0, 0, 256]"),
    ({"colour": [1, 2]}, "structures[0].colour: must be three integers 0-255"),
    ({"interpreted_type": "OAR"}, "structures[0].interpreted_type: 'OAR' is not an RT ROI Interpreted Type"),
    ({"code": {"value": "T-62000", "scheme": "SRT", "meaning": "Liver"}},
     "structures[0].code.scheme: the deprecated SRT scheme is not allowed, use SCT"),
    ({"code": {"value": "12345678901234567", "scheme": "SCT", "meaning": "x"}}, "structures[0].code.value:"),
    ({"code": {"value": "1", "scheme": "SCT"}}, "structures[0].code.meaning: missing"),
    ({"shade": 1}, "structures[0].shade: unknown key"),
    ({"name": "A\\B"}, "structures[0].name: 'A\\\\B' is not a valid ROI name"),
])
def test_bad_department_structures_name_the_key(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    problems = _problems(tmp_path, [{**OWN, **change}])
    assert any(p.startswith(message) for p in problems), problems


def test_duplicate_department_structures(tmp_path: Path) -> None:
    assert "structures[1].name: duplicate structure name 'Prostate_Bed2' (also structures[0])" in \
        _problems(tmp_path, [OWN, {**OWN, "colour": [1, 1, 1]}])


def test_templates_use_department_structures_and_maps_are_checked(tmp_path: Path) -> None:
    ok = {"name": "pelvis", "map": {"Femur_L": "Femur_Head_L", "Prostate": "Prostate_Bed2"},
          "include": ["Femur_Head_L", "Prostate_Bed2"], "rename": {"Prostate_Bed2": "ProstBed"}}
    settings = _settings(tmp_path, [OWN], [ok])
    assert settings.templates["pelvis"].map == {"Femur_L": "Femur_Head_L", "Prostate": "Prostate_Bed2"}
    problems = _problems(tmp_path, [], [ok])  # without the department's structure
    assert problems == ["templates[0].include[1]: 'Prostate_Bed2' is not a structure of the catalogue",
                        "templates[0].rename.Prostate_Bed2: 'Prostate_Bed2' is not a structure of the catalogue",
                        "templates[0].map.Prostate: 'Prostate_Bed2' is not a structure of the catalogue"]
    assert _problems(tmp_path, [OWN], [{"name": "t", "map": {"Prostate_Bed2": "Prostate"}}]) == [
        "templates[0].map.Prostate_Bed2: 'Prostate_Bed2' is not a structure any model produces "
        "(model outputs are catalogue names)"]
    with pytest.raises(ConfigError, match="Femur_L and Femur_R both map to Femur; use merge"):
        parse_templates([{"name": "t", "map": {"Femur_L": "Femur", "Femur_R": "Femur"}}])
    # the live config (web admin, config import) checks with the department's names too
    tables: dict[str, list[dict[str, Any]]] = {"destination": [], "rule": [], "template": [ok]}
    assert problems_of(tables, ["Prostate_Bed2"]) == []
    assert str(problems_of(tables)[0]).startswith("templates[0].include[1]: 'Prostate_Bed2'")


def _pelvis() -> SegmentationResult:
    array = np.zeros((2, 3, 3), dtype=np.uint8)
    array[0, 0, :] = [1, 2, 3]
    volume = Volume(array, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    names = ("Prostate", "Femur_L", "Bladder")
    return SegmentationResult(volume, tuple(LabelledStructure(i + 1, n) for i, n in enumerate(names)), "m", "1",
                              {"External": array >= 0})


def test_map_renames_to_the_site_structure_first(tmp_path: Path) -> None:
    settings = _settings(tmp_path, [OWN], [{"name": "t", "map": {"Prostate": "Prostate_Bed2", "External": "Body",
                                                                  "Rectum": "Bowel"},
                                            "include": ["Prostate_Bed2", "Bladder", "Body"]}])
    applied = apply_template(_pelvis(), settings.templates["t"], ("RTSTRUCT",), settings.catalogue())
    assert [(s.label, s.name) for s in applied.result.structures] == [(1, "Prostate_Bed2"), (3, "Bladder")]
    assert list(applied.result.extra_masks) == ["Body"]
    assert applied.naming.catalogue is not None and "Prostate_Bed2" in applied.naming.catalogue
    clash = _settings(tmp_path, [], [{"name": "t", "map": {"Femur_L": "Bladder"}}])
    with pytest.raises(OutputError, match=r"map target\(s\) Bladder are also produced by model 'm'"):
        apply_template(_pelvis(), clash.templates["t"], ("RTSTRUCT",))


def test_check_config_checks_map_sources_against_the_rule_model(tmp_path: Path) -> None:
    rule = {"name": "pelvis", "model": "builtin", "destinations": ["TPS"], "template": "t"}
    good = _settings(tmp_path, [], [{"name": "t", "map": {"SpinalCord": "SpinalCanal"}}], [rule])
    assert cmd_check_config(good, argparse.Namespace()) == 0
    bad = _settings(tmp_path, [], [{"name": "t", "map": {"Prostate": "Prostate", "Lung_L": "Lungs"}}], [rule])
    with pytest.raises(ConfigError, match=r"routing.rules\[0\].template: template 't' maps 'Prostate', which model "
                                          r"'builtin' \(rule 'pelvis'\) does not produce"):
        cmd_check_config(bad, argparse.Namespace())
