"""SEG options: BINARY / LABELMAP / FRACTIONAL, structure groups, and the per-destination fallback."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_node.errors import ConfigError, OutputError
from dicom_node.outputs.common import write_dataset
from dicom_node.outputs.seg import build_seg, build_seg_instances
from dicom_node.pipeline import WrittenObject, write_stage
from dicom_node.seg_variants import objects_for_variant, resolve_seg_type, seg_type_for, variants_to_write
from dicom_node.settings import RoutingRule, Template, parse_settings
from tests.conftest import settings_dict
from tests.outputs_helpers import identity, synthetic_series
from tests.peers import dciodvfy_errors, require_tool
from tests.unit.test_outputs import phantom, result_for

LABELMAP_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def _read_back(paths: list[Path], uids: list[str]) -> dict[str, np.ndarray]:
    """Segment label -> mask over the whole series, from every SEG instance given."""
    masks: dict[str, np.ndarray] = {}
    for path in paths:
        back = hd.seg.segread(path)
        items = [item for item in back.SegmentSequence if int(item.SegmentNumber) > 0]  # LABELMAP: 0 = background
        numbers = [int(item.SegmentNumber) for item in items]
        pixels = back.get_pixels_by_source_instance(uids, segment_numbers=numbers, combine_segments=False,
                                                    ignore_spatial_locations=False,
                                                    assert_missing_frames_are_empty=True)
        for index, item in enumerate(items):
            assert item.SegmentLabel not in masks, item.SegmentLabel
            masks[item.SegmentLabel] = pixels[..., index] > 0
    return masks


@pytest.mark.parametrize("with_body", [False, True], ids=["labelmap", "with-body"])
@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP", "FRACTIONAL"])
def test_every_seg_type_reads_back_equal_to_the_label_map(tmp_path: Path, seg_type: str, with_body: bool) -> None:
    hu, labels, body = phantom()
    series, _ = synthetic_series(hu, "HFS")
    instances = build_seg_instances(series, result_for(series, labels, body if with_body else None), identity(),
                                    seg_type=seg_type)
    # LABELMAP segments cannot overlap: the body (which contains the organs) gets its own instance
    assert len(instances) == (2 if seg_type == "LABELMAP" and with_body else 1)
    assert len({str(ds.SeriesInstanceUID) for ds in instances}) == 1
    assert [int(ds.InstanceNumber) for ds in instances] == list(range(1, len(instances) + 1))
    expected_class = LABELMAP_SOP_CLASS if seg_type == "LABELMAP" else SEG_SOP_CLASS
    assert {str(ds.SOPClassUID) for ds in instances} == {expected_class}
    paths = []
    for n, ds in enumerate(instances):
        paths.append(tmp_path / f"seg{n}.dcm")
        write_dataset(ds, paths[-1])
        assert pydicom.dcmread(paths[-1]).SegmentationType == seg_type
    masks = _read_back(paths, [str(ds.SOPInstanceUID) for ds in series.datasets])
    expected = {"Lung_L": labels == 1, "SpinalCord": labels == 2, **({"External": body} if with_body else {})}
    assert masks.keys() == expected.keys()
    for name, mask in expected.items():
        assert np.array_equal(masks[name], mask), name


@pytest.mark.parametrize("seg_type", ["BINARY", "FRACTIONAL"])
def test_dciodvfy_accepts_binary_and_fractional(tmp_path: Path, seg_type: str) -> None:
    hu, labels, body = phantom()
    series, _ = synthetic_series(hu, "HFS")
    write_dataset(build_seg(series, result_for(series, labels, body), identity(), seg_type=seg_type),
                  tmp_path / "seg.dcm")
    errors, report = dciodvfy_errors(tmp_path / "seg.dcm")
    assert errors == [], report


def test_structure_groups_split_into_instances_of_one_series(tmp_path: Path) -> None:
    hu, labels, body = phantom()
    series, _ = synthetic_series(hu, "FFP")
    instances = build_seg_instances(series, result_for(series, labels, body), identity(), max_segments=2)
    assert [len(ds.SegmentSequence) for ds in instances] == [2, 1]
    assert [[int(s.SegmentNumber) for s in ds.SegmentSequence] for ds in instances] == [[1, 2], [1]]
    assert len({str(ds.SeriesInstanceUID) for ds in instances}) == 1
    assert len({str(ds.SOPInstanceUID) for ds in instances}) == 2
    paths = []
    for n, ds in enumerate(instances):
        paths.append(tmp_path / f"seg{n}.dcm")
        write_dataset(ds, paths[-1])
    masks = _read_back(paths, [str(ds.SOPInstanceUID) for ds in series.datasets])
    assert np.array_equal(masks["Lung_L"], labels == 1) and np.array_equal(masks["SpinalCord"], labels == 2)
    assert np.array_equal(masks["External"], body)
    # a group of label-map structures alone: one segment per instance, still equal
    one_each = build_seg_instances(series, result_for(series, labels), identity(), max_segments=1)
    assert [ds.SegmentSequence[0].SegmentLabel for ds in one_each] == ["Lung_L", "SpinalCord"]


def test_bad_seg_options_are_refused() -> None:
    hu, labels, body = phantom()
    series, _ = synthetic_series(hu, "HFS")
    with pytest.raises(OutputError, match="SEG type 'PROBABILITY' is not one of BINARY, LABELMAP, FRACTIONAL"):
        build_seg_instances(series, result_for(series, labels), identity(), seg_type="PROBABILITY")
    with pytest.raises(OutputError, match="max_segments must be >= 0"):
        build_seg_instances(series, result_for(series, labels), identity(), max_segments=-1)
    with pytest.raises(OutputError, match="need 2 instances"):
        build_seg(series, result_for(series, labels, body), identity(), seg_type="LABELMAP")


def test_labelmap_falls_back_to_binary_per_destination() -> None:
    assert seg_type_for("LABELMAP", True) == "LABELMAP"
    assert seg_type_for("LABELMAP", False) == "BINARY"
    assert seg_type_for("FRACTIONAL", False) == "FRACTIONAL"
    def to_write(seg_type: str, accepts: list[bool]) -> tuple[str, ...]:
        return variants_to_write(seg_type, [seg_type_for(seg_type, flag) for flag in accepts])

    assert to_write("LABELMAP", [True, False]) == ("LABELMAP", "BINARY")
    assert to_write("LABELMAP", [False, False]) == ("BINARY",)
    assert to_write("LABELMAP", [True]) == ("LABELMAP",)
    assert to_write("LABELMAP", []) == ("LABELMAP",)
    assert to_write("BINARY", [True, False]) == ("BINARY",)
    objects = [WrittenObject("SEG", Path("seg-labelmap.dcm"), "1", LABELMAP_SOP_CLASS, "LABELMAP"),
               WrittenObject("SEG", Path("seg-labelmap-2.dcm"), "2", LABELMAP_SOP_CLASS, "LABELMAP"),
               WrittenObject("SEG", Path("seg.dcm"), "3", SEG_SOP_CLASS, "BINARY"),
               WrittenObject("RTSTRUCT", Path("rtstruct.dcm"), "4", "1.2.840.10008.5.1.4.1.1.481.3")]
    modern = objects_for_variant(objects, "LABELMAP")
    legacy = objects_for_variant(objects, "BINARY")
    assert [o.sop_uid for o in modern] == ["1", "2", "4"]
    assert [o.sop_uid for o in legacy] == ["3", "4"]
    with pytest.raises(OutputError, match=r"no BINARY SEG was written.*\['LABELMAP'\]"):
        objects_for_variant(objects[:2], "BINARY")


def test_template_seg_type_overrides_the_rule() -> None:
    rule = RoutingRule("r", "builtin", ("PACS",), seg_type="LABELMAP")
    assert resolve_seg_type(rule, None) == "LABELMAP"
    assert resolve_seg_type(rule, Template("t")) == "LABELMAP"
    assert resolve_seg_type(rule, Template("t", seg_type="FRACTIONAL")) == "FRACTIONAL"


def test_settings_parse_seg_options(tmp_path: Path) -> None:
    dests = [{"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242,
              "accepts_labelmap_seg": True},
             {"name": "TPS", "ae_title": "TPS", "host": "127.0.0.1", "port": 4243}]
    rules = [{"name": "r", "model": "builtin", "destinations": ["PACS", "TPS"], "seg_type": "labelmap",
              "seg_max_segments": 50}]
    settings = parse_settings(settings_dict(tmp_path, destinations=dests, routing={"rules": rules}), tmp_path)
    assert settings.destinations["PACS"].accepts_labelmap_seg and not settings.destinations["TPS"].accepts_labelmap_seg
    assert (settings.rules[0].seg_type, settings.rules[0].seg_max_segments) == ("LABELMAP", 50)
    for change, message in (({"seg_type": "MULTI"}, "routing.rules[0].seg_type: 'MULTI' is not one of"),
                            ({"seg_max_segments": -1}, "routing.rules[0].seg_max_segments: must be >= 0")):
        bad = [{**rules[0], **change}]
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_settings(settings_dict(tmp_path, destinations=dests, routing={"rules": bad}), tmp_path)


def test_write_stage_writes_each_variant(tmp_path: Path) -> None:
    hu, labels, body = phantom()
    series, _ = synthetic_series(hu, "HFS")
    written = write_stage(series, result_for(series, labels, body), ["SEG"], identity(), tmp_path,
                          seg_types=("LABELMAP", "BINARY"))
    assert [(o.path.name, o.seg_type) for o in written] == [
        ("seg-labelmap.dcm", "LABELMAP"), ("seg-labelmap-2.dcm", "LABELMAP"), ("seg.dcm", "BINARY")]
    assert [o.sop_class_uid for o in written] == [LABELMAP_SOP_CLASS, LABELMAP_SOP_CLASS, SEG_SOP_CLASS]


def test_dcmqi_reads_our_binary_seg_equal_to_the_label_map(tmp_path: Path) -> None:
    beside = Path(sys.executable).parent / "segimage2itkimage"  # the test extra's dcmqi, in the venv
    tool = str(beside) if beside.exists() else shutil.which("segimage2itkimage") or require_tool("segimage2itkimage")
    hu, labels, body = phantom()
    series, _ = synthetic_series(hu, "HFS")
    write_dataset(build_seg(series, result_for(series, labels, body), identity()), tmp_path / "seg.dcm")
    out = tmp_path / "dcmqi"
    out.mkdir()
    run = subprocess.run([tool, "--inputDICOM", str(tmp_path / "seg.dcm"), "--outputDirectory", str(out),
                          "--outputType", "nifti", "--prefix", "seg"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    files = sorted(out.glob("seg-*.nii.gz"), key=lambda p: int(p.name.split("-")[1].split(".")[0]))
    expected = [labels == 1, labels == 2, body]
    assert len(files) == len(expected), [p.name for p in files]
    for path, mask in zip(files, expected, strict=True):
        image = sitk.ReadImage(str(path))
        # dcmqi writes each segment on the source images' grid: same origin and spacing as the CT volume
        assert np.allclose(image.GetOrigin(), series.volume.origin, atol=1e-3), path.name
        assert np.allclose(image.GetSpacing(), series.volume.spacing, atol=1e-3), path.name
        array = sitk.GetArrayFromImage(image) > 0  # (k, j, i)
        assert np.array_equal(array, mask), path.name


SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR


def _sr_references(sr: pydicom.Dataset) -> tuple[set[tuple[str, int]], set[str]]:
    """(SEG instance, segment number) of every measurement group's region, and the SOP instances of
    the SR's evidence: read from the content tree and the evidence sequence, not through highdicom."""
    def walk(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
        return [x for item in ds.get("ContentSequence", []) for x in (item, *walk(item))]

    segments = {(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
                 int(item.ReferencedSOPSequence[0].ReferencedSegmentNumber))
                for item in walk(sr) if item.get("ValueType") == "IMAGE"
                and item.ConceptNameCodeSequence[0].CodeValue == "121191"}  # DCM Referenced Segment
    evidence = {str(sop.ReferencedSOPInstanceUID) for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}
    return segments, evidence


def test_one_sr_per_seg_variant_each_referring_to_its_own_seg(tmp_path: Path) -> None:
    hu, labels, body = phantom()
    series, _ = synthetic_series(hu, "HFS")
    written = write_stage(series, result_for(series, labels, body), ["SR", "SEG"], identity(), tmp_path,
                          seg_types=("LABELMAP", "BINARY"), seg_max_segments=2)
    assert [(o.kind, o.path.name, o.seg_type) for o in written] == [
        ("SEG", "seg-labelmap.dcm", "LABELMAP"), ("SEG", "seg-labelmap-2.dcm", "LABELMAP"),
        ("SEG", "seg.dcm", "BINARY"), ("SEG", "seg-2.dcm", "BINARY"),
        ("SR", "sr-labelmap.dcm", "LABELMAP"), ("SR", "sr.dcm", "BINARY")]
    seg_uids = {t: {o.sop_uid for o in written if o.kind == "SEG" and o.seg_type == t} for t in ("LABELMAP", "BINARY")}
    labels_of = {}
    for o in written:
        if o.kind == "SEG":
            seg = pydicom.dcmread(o.path)
            labels_of.update({(o.sop_uid, int(s.SegmentNumber)): str(s.SegmentLabel) for s in seg.SegmentSequence})
    ct_uids = {str(ds.SOPInstanceUID) for ds in series.datasets}
    for sr_obj in (o for o in written if o.kind == "SR"):
        sr = pydicom.dcmread(sr_obj.path)
        assert str(sr.SOPClassUID) == SR_SOP_CLASS
        segments, evidence = _sr_references(sr)
        # every structure measured once, on a segment of this SR's own SEG variant, none of the other's
        assert {uid for uid, _ in segments} == seg_uids[sr_obj.seg_type]
        assert sorted(labels_of[ref] for ref in segments) == ["External", "Lung_L", "SpinalCord"]
        assert evidence == ct_uids | seg_uids[sr_obj.seg_type]
    errors, report = dciodvfy_errors(tmp_path / "sr.dcm")
    assert errors == [], report
    # each destination gets its SEG variant and the SR that resolves to it, never the other one
    modern = objects_for_variant(written, "LABELMAP")
    legacy = objects_for_variant(written, "BINARY")
    assert [o.path.name for o in modern] == ["seg-labelmap.dcm", "seg-labelmap-2.dcm", "sr-labelmap.dcm"]
    assert [o.path.name for o in legacy] == ["seg.dcm", "seg-2.dcm", "sr.dcm"]


def test_sr_without_seg_goes_everywhere_and_a_missing_sr_variant_is_an_error(tmp_path: Path) -> None:
    hu, labels, body = phantom()
    series, _ = synthetic_series(hu, "HFS")
    (sr_only,) = write_stage(series, result_for(series, labels, body), ["SR"], identity(), tmp_path)
    assert (sr_only.path.name, sr_only.seg_type) == ("sr.dcm", "")
    assert objects_for_variant([sr_only], "BINARY") == [sr_only]
    objects = [WrittenObject("SEG", Path("seg-labelmap.dcm"), "1", LABELMAP_SOP_CLASS, "LABELMAP"),
               WrittenObject("SEG", Path("seg.dcm"), "2", SEG_SOP_CLASS, "BINARY"),
               WrittenObject("SR", Path("sr-labelmap.dcm"), "3", SR_SOP_CLASS, "LABELMAP")]
    with pytest.raises(OutputError, match=r"no BINARY SR was written.*\['LABELMAP'\]"):
        objects_for_variant(objects, "BINARY")
