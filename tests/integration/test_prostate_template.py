"""A prostate template on a synthetic CT, the way a job runs it: route (template + [[structures]] copied
into the routed action), segment, template, write; SEG and RTSTRUCT must pass dciodvfy (missing: a failure).

The model produces catalogue names (``Bowel_Small``, ``CTVp``); the template maps them to the site's
structures (``Bowel`` from TG-263, ``CTV_ProstSV`` from the department's [[structures]]). Also
``dicom-node write`` with a label map using TG-263's Rectum / Femur_Head_L / Femur_Head_R.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node import pipeline
from dicom_node.routing import RoutedAction, SeriesAttributes, route
from dicom_node.worker import settings_template
from segmenter.core.catalogue import lookup
from segmenter.core.result import LabelledStructure, SegmentationResult
from segmenter.core.volume import Volume
from segmenter.registry import FunctionEngine
from tests.conftest import REPO, make_settings
from tests.outputs_helpers import identity, synthetic_series, write_series
from tests.peers import dciodvfy_errors

SITE = ["Prostate", "SeminalVes", "Rectum", "Bladder", "Femur_Head_L", "Femur_Head_R", "PenileBulb", "Bowel"]
MODEL = ["Prostate", "SeminalVes", "Rectum", "Bladder", "Femur_Head_L", "Femur_Head_R", "PenileBulb", "Bowel_Small",
         "CTVp"]
DEPARTMENT = {"name": "CTV_ProstSV",
              "code": {"value": "228792002", "scheme": "SCT", "meaning": "Clinical Target Volume"},
              "colour": [255, 120, 0], "interpreted_type": "CTV",
              "description": "Prostate and proximal seminal vesicles"}


def _labels(shape: tuple[int, int, int]) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    for index in range(len(MODEL)):  # one block per structure, side by side
        row, column = divmod(index, 3)
        labels[2:10, 4 + row * 14:14 + row * 14, 4 + column * 14:14 + column * 14] = index + 1
    return labels


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], RoutedAction]:
    tmp = tmp_path_factory.mktemp("prostate")
    hu = np.full((12, 48, 48), 30, dtype=np.int16)
    _, datasets = synthetic_series(hu, "HFS")
    write_series(tmp / "ct", datasets)
    template = {"name": "prostate", "map": {"Bowel_Small": "Bowel", "CTVp": "CTV_ProstSV"},
                "rename": {"CTV_ProstSV": "CTV_Prostate"}, "outputs": ["SEG", "RTSTRUCT"]}
    settings = make_settings(tmp, structures=[DEPARTMENT], templates=[template], destinations=[
        {"name": "TPS", "ae_title": "TPS", "host": "127.0.0.1", "port": 104}],
        routing={"rules": [{"name": "prostate", "model": "builtin", "destinations": ["TPS"],
                            "template": "prostate"}]})
    (action,) = route(settings, SeriesAttributes(Modality="CT"))
    action = RoutedAction.from_json(action.to_json())  # as the job stores it

    def segment(volume: Volume) -> SegmentationResult:
        return SegmentationResult(volume.with_array(_labels(volume.shape)),
                                  tuple(LabelledStructure(i + 1, n) for i, n in enumerate(MODEL)), "pelvis-model", "2")

    job = pipeline.JobInput(1, tuple(sorted((tmp / "ct").iterdir())), action.outputs, tmp / "out",
                            settings_template(action.template), action.seg_types, catalogue=action.catalogue())
    output = pipeline.run(job, FunctionEngine("pelvis-model", "2", segment), identity())
    return {obj.kind: obj.path for obj in output.objects}, action


@pytest.mark.parametrize("kind", ["SEG", "RTSTRUCT"])
def test_prostate_outputs_pass_dciodvfy(written: tuple[dict[str, Path], RoutedAction], kind: str) -> None:
    errors, report = dciodvfy_errors(written[0][kind])
    assert errors == [], report


def test_rtstruct_has_the_site_names_types_and_colours(written: tuple[dict[str, Path], RoutedAction]) -> None:
    ds = pydicom.dcmread(written[0]["RTSTRUCT"])
    names = [str(roi.ROIName) for roi in ds.StructureSetROISequence]
    assert names == [*SITE, "CTV_Prostate"]
    types = {str(o.ROIObservationLabel): str(o.RTROIInterpretedType) for o in ds.RTROIObservationsSequence}
    assert types["CTV_Prostate"] == "CTV" and types["Rectum"] == "ORGAN"
    colours = dict(zip(names, ([int(c) for c in item.ROIDisplayColor] for item in ds.ROIContourSequence),
                       strict=True))
    assert colours["CTV_Prostate"] == [255, 120, 0]
    for name in SITE:
        assert tuple(colours[name]) == lookup(name).colour, name


def test_seg_carries_the_catalogue_and_department_codes(written: tuple[dict[str, Path], RoutedAction]) -> None:
    ds = pydicom.dcmread(written[0]["SEG"])
    items = {str(item.SegmentLabel): item for item in ds.SegmentSequence}
    assert sorted(items) == sorted([*SITE, "CTV_Prostate"])
    femur = items["Femur_Head_L"]
    assert femur.SegmentedPropertyTypeCodeSequence[0].CodeValue == "2812003"
    assert femur.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue \
        == "7771000"
    assert items["Bowel"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "113276009"  # mapped from Bowel_Small
    ctv = items["CTV_Prostate"]
    assert ctv.SegmentedPropertyTypeCodeSequence[0].CodeValue == "228792002"
    assert ctv.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "309825002"  # default for a CTV


def test_the_routed_action_holds_the_department_structures(written: tuple[dict[str, Path], RoutedAction]) -> None:
    action = written[1]
    assert [s.name for s in action.structures] == ["CTV_ProstSV"]
    assert action.template is not None and action.template.map == {"Bowel_Small": "Bowel", "CTVp": "CTV_ProstSV"}


def _write(tmp_path: Path, names: list[str], *extra: str, config: Path = REPO / "config" / "node.example.toml"
           ) -> subprocess.CompletedProcess[str]:
    """``dicom-node write`` of a synthetic CT with one block per name (label 1, 2, ...)."""
    hu = np.full((6, 32, 32), 20, dtype=np.int16)
    series, datasets = synthetic_series(hu, "HFS")
    write_series(tmp_path / "ct", datasets)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    for index in range(len(names)):
        row, column = divmod(index, 3)
        labels[1:5, 2 + row * 10:9 + row * 10, 2 + column * 10:9 + column * 10] = index + 1
    series.volume.with_array(labels).write(tmp_path / "labels.nii.gz")
    (tmp_path / "structures.json").write_text(json.dumps({str(i + 1): n for i, n in enumerate(names)}))
    return subprocess.run([sys.executable, "-m", "dicom_node.cli", "write", "--config",
                           str(config), "--ct", str(tmp_path / "ct"), "--labels",
                           str(tmp_path / "labels.nii.gz"), "--structures", str(tmp_path / "structures.json"),
                           "--out", str(tmp_path / "out"), *extra], capture_output=True, text=True, timeout=300)


def test_write_accepts_tg263_names_and_writes_their_codes(tmp_path: Path) -> None:
    """The reported bug: a label map naming Rectum, Femur_Head_L and Femur_Head_R was refused. With them, FMA
    (a TG-263 qualifier), DCM (a PRV), a target and a FALLBACK code, through SEG, RTSTRUCT and SR."""
    names = ["Rectum", "Femur_Head_L", "Femur_Head_R", "LN_Neck_IA_L", "SpinalCord_PRV", "PTV", "Bolus"]
    proc = _write(tmp_path, names, "--sr")
    assert proc.returncode == 0, proc.stderr
    for name in ("seg.dcm", "rtstruct.dcm", "sr.dcm"):
        errors, report = dciodvfy_errors(tmp_path / "out" / name)
        assert errors == [], report
    rt = pydicom.dcmread(tmp_path / "out" / "rtstruct.dcm")
    assert [str(roi.ROIName) for roi in rt.StructureSetROISequence] == names
    assert [str(o.RTROIInterpretedType) for o in rt.RTROIObservationsSequence] == \
        ["ORGAN", "ORGAN", "ORGAN", "ORGAN", "AVOIDANCE", "PTV", "BOLUS"]
    seg = pydicom.dcmread(tmp_path / "out" / "seg.dcm")
    types = {str(i.SegmentLabel): i.SegmentedPropertyTypeCodeSequence[0] for i in seg.SegmentSequence}
    assert (types["Rectum"].CodingSchemeDesignator, types["Rectum"].CodeValue) == ("SCT", "34402009")
    assert (types["LN_Neck_IA_L"].CodingSchemeDesignator, types["LN_Neck_IA_L"].CodeValue) == ("FMA", "235616")
    assert (types["SpinalCord_PRV"].CodingSchemeDesignator, types["SpinalCord_PRV"].CodeValue) == ("DCM", "130057")


def test_write_accepts_the_department_structures_of_its_config(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text((REPO / "config" / "node.example.toml").read_text(encoding="utf-8") + """
[[structures]]
name = "Spacer_Rect"
code = { value = "260787004", scheme = "SCT", meaning = "Physical object" }
colour = [0, 200, 200]
interpreted_type = "AVOIDANCE"
""", encoding="utf-8")
    proc = _write(tmp_path, ["Rectum", "Spacer_Rect"], config=config)
    assert proc.returncode == 0, proc.stderr
    ds = pydicom.dcmread(tmp_path / "out" / "rtstruct.dcm")
    assert [str(roi.ROIName) for roi in ds.StructureSetROISequence] == ["Rectum", "Spacer_Rect"]
    assert [int(c) for c in ds.ROIContourSequence[1].ROIDisplayColor] == [0, 200, 200]
    (tmp_path / "plain").mkdir()
    refused = _write(tmp_path / "plain", ["Rectum", "Spacer_Rect"])  # the example config has no such structure
    assert refused.returncode == 2 and "not in the catalogue: 2='Spacer_Rect'" in refused.stderr
