"""SR (structure volumes) and QA preview writers, on small series made in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import SecondaryCaptureImageStorage

from dicom_node.errors import OutputError
from dicom_node.outputs.common import write_dataset
from dicom_node.outputs.preview import (
    PreviewView,
    build_preview,
    display_volume,
    render_views,
)
from dicom_node.outputs.seg import build_seg
from dicom_node.outputs.sr import build_sr, structure_volumes_cm3
from dicom_node.pipeline import PREVIEW_PNG, write_stage
from dicom_node.series_io import CtSeries
from dicom_node.settings import DEFAULT_OUTPUT_KINDS, OUTPUT_KINDS
from dicom_node.templates import OutputNaming
from segmenter.core.result import LabelledStructure, SegmentationResult
from segmenter.core.volume import Volume
from tests.outputs_helpers import ORIENTATIONS, TEST_ROOT, identity, synthetic_series, voxel_to_patient
from tests.peers import dciodvfy_errors
from tests.unit.test_outputs import phantom, result_for

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
LUNG_L_RGB = (255, 179, 0)  # catalogue colours (test_outputs checks them on the RTSTRUCT)
CORD_RGB = (255, 0, 255)


def _content_items(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    items = []
    for item in ds.get("ContentSequence", []):
        items.append(item)
        items.extend(_content_items(item))
    return items


def _measured(sr: pydicom.Dataset) -> dict[str, float]:
    """Tracking identifier -> volume (cm3), walking the content tree (independent of highdicom's parser)."""
    volumes = {}
    for group in _content_items(sr):
        if group.get("ValueType") != "CONTAINER" or group.ConceptNameCodeSequence[0].CodeValue != "125007":
            continue  # not a Measurement Group
        children = group.ContentSequence
        name = next(c.TextValue for c in children if c.ConceptNameCodeSequence[0].CodeValue == "112039")
        (num,) = [c for c in children if c.get("ValueType") == "NUM"
                  and c.ConceptNameCodeSequence[0].CodeValue == "118565006"]
        value = num.MeasuredValueSequence[0]
        assert value.MeasurementUnitsCodeSequence[0].CodeValue == "cm3"
        volumes[str(name)] = float(value.NumericValue)
    return volumes


# --- SR ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_seg", [False, True], ids=["alone", "with-seg"])
def test_sr_volumes_are_voxel_counts_times_voxel_volume(tmp_path: Path, with_seg: bool) -> None:
    hu, labels, body = phantom()
    series, _ = synthetic_series(hu, "HFP", spacing=(0.7, 1.3, 3.0))
    result = result_for(series, labels, body)
    seg = build_seg(series, result, identity()) if with_seg else None
    ident = identity(sr_series_number=77)
    sr = build_sr(series, result, ident, seg=seg)
    write_dataset(sr, tmp_path / "sr.dcm")
    errors, report = dciodvfy_errors(tmp_path / "sr.dcm")
    assert errors == [], report
    back = pydicom.dcmread(tmp_path / "sr.dcm")
    voxel_cm3 = 0.7 * 1.3 * 3.0 / 1000
    expected = {"Lung_L": (labels == 1).sum() * voxel_cm3, "SpinalCord": (labels == 2).sum() * voxel_cm3,
                "External": body.sum() * voxel_cm3}
    measured = _measured(back)
    assert measured.keys() == expected.keys()
    for name, value in expected.items():
        assert measured[name] == pytest.approx(value, abs=1e-4), name
    assert structure_volumes_cm3(result) == pytest.approx(expected)
    assert back.SOPClassUID == COMPREHENSIVE_3D_SR and back.Modality == "SR"
    assert back.SeriesNumber == 77 and back.SeriesInstanceUID.startswith(TEST_ROOT + ".")
    assert back.SeriesDescription.startswith("AI-generated") and "test-model 1.2.3" in back.SeriesDescription
    assert (back.Manufacturer, back.ManufacturerModelName, back.DeviceSerialNumber) == (
        "Test Physics", "dicom-autocontour-node", "TEST-1")
    assert back.StudyInstanceUID == series.study_uid and back.PatientID == "PH-1"
    evidence = {str(i.ReferencedSOPInstanceUID) for s in back.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert {str(ds.SOPInstanceUID) for ds in series.datasets} <= evidence
    # finding type: the catalogue's SCT code (left lung), laterality as a finding site modifier
    items = _content_items(back)
    assert any(i.get("ValueType") == "CODE" and i.ConceptCodeSequence[0].CodeValue == "44029006" for i in items)
    references = [i for i in items if i.get("ValueType") == "IMAGE"
                  and i.ConceptNameCodeSequence[0].CodeValue == "121191"]  # Referenced Segment
    if with_seg:
        assert seg is not None and str(seg.SOPInstanceUID) in evidence
        by_number = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
        assert len(references) == 3
        labels_referenced = []
        for ref in references:
            sop = ref.ReferencedSOPSequence[0]
            assert sop.ReferencedSOPInstanceUID == seg.SOPInstanceUID
            labels_referenced.append(by_number[int(sop.ReferencedSegmentNumber)])
        assert labels_referenced == ["Lung_L", "SpinalCord", "External"]
    else:
        assert references == []


def test_sr_uses_the_site_names_of_the_template_and_finds_them_in_the_seg(tmp_path: Path) -> None:
    hu, labels, _ = phantom()
    series, _ = synthetic_series(hu, "FFS")
    result = result_for(series, labels)
    naming = OutputNaming("lung-sbrt", {"SpinalCord": "Cord"})
    seg = build_seg(series, result, identity(), naming=naming)
    sr = build_sr(series, result, identity(), naming=naming, seg=[seg])
    assert set(_measured(sr)) == {"Lung_L", "Cord"}
    with pytest.raises(OutputError, match="no segment labelled 'Cord'"):
        build_sr(series, result, identity(), naming=naming, seg=build_seg(series, result, identity()))


def test_sr_refusals() -> None:
    hu, labels, _ = phantom()
    series, _ = synthetic_series(hu, "HFS")
    other, _ = synthetic_series(hu, "HFS")
    with pytest.raises(OutputError, match="no non-empty structure"):
        build_sr(series, result_for(series, np.zeros_like(labels)), identity())
    with pytest.raises(OutputError, match="another study"):
        build_sr(series, result_for(series, labels), identity(),
                 seg=build_seg(other, result_for(other, labels), identity()))
    not_a_seg = pydicom.Dataset()
    not_a_seg.SOPClassUID = SecondaryCaptureImageStorage
    with pytest.raises(OutputError, match="not a Segmentation Storage class"):
        build_sr(series, result_for(series, labels), identity(), seg=not_a_seg)
    with pytest.raises(OutputError, match="shape"):
        build_sr(series, SegmentationResult(Volume(labels[:-1], series.volume.spacing, series.volume.origin,
                                                   series.volume.direction),
                                            result_for(series, labels).structures, "m", "1"), identity())


# --- preview -------------------------------------------------------------------------------------

def _lateral_phantom(series_shape: tuple[int, int, int], position: str) -> tuple[CtSeries, np.ndarray]:
    """Lung_L at the patient's left, anterior and superior; SpinalCord at the right, posterior, inferior.

    Placed by patient coordinates (LPS: +x left, +y posterior, +z superior), not by array index.
    """
    hu = np.full(series_shape, -800, dtype=np.int16)
    series, _ = synthetic_series(hu, position)
    kji = np.indices(series_shape).reshape(3, -1).T
    xyz = voxel_to_patient(series.volume, kji).reshape(*series_shape, 3)
    centre = xyz.reshape(-1, 3).mean(axis=0)
    rel = xyz - centre
    labels = np.zeros(series_shape, dtype=np.uint8)
    labels[(rel[..., 0] > 3) & (rel[..., 1] < -3) & (rel[..., 2] > 2)] = 1
    labels[(rel[..., 0] < -3) & (rel[..., 1] > 3) & (rel[..., 2] < -2)] = 2
    assert (labels == 1).any() and (labels == 2).any()
    return series, labels


def _pixels(view: PreviewView, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.argwhere(np.all(view.rgb == np.asarray(rgb, dtype=np.uint8), axis=-1))


@pytest.mark.parametrize("position", [*sorted(ORIENTATIONS), "HFDL"])
def test_preview_shows_patient_left_on_image_right_in_every_orientation(
        monkeypatch: pytest.MonkeyPatch, position: str) -> None:
    # decubitus: rows run front to back, columns right to left (patient lying on the left side)
    monkeypatch.setitem(ORIENTATIONS, "HFDL", (0.0, 1.0, 0.0, -1.0, 0.0, 0.0))
    series, labels = _lateral_phantom((14, 30, 34), position)
    views, structures = render_views(series, result_for(series, labels))
    assert [s.name for s in structures] == ["Lung_L", "SpinalCord"]
    axial, coronal = views[:3], views[3]
    seen = {"Lung_L": 0, "SpinalCord": 0}
    for view in axial:
        assert view.orientation == ("R", "L", "A", "P")
        rows, cols = view.rgb.shape[:2]
        lung, cord = _pixels(view, LUNG_L_RGB), _pixels(view, CORD_RGB)
        if len(lung):  # patient left -> image right, anterior -> image top
            seen["Lung_L"] += 1
            assert lung[:, 1].min() > cols / 2 and lung[:, 0].max() < rows / 2, view.title
        if len(cord):
            seen["SpinalCord"] += 1
            assert cord[:, 1].max() < cols / 2 and cord[:, 0].min() > rows / 2, view.title
    assert seen["Lung_L"] and seen["SpinalCord"], seen
    assert coronal.orientation == ("R", "L", "S", "I")
    rows, cols = coronal.rgb.shape[:2]
    lung, cord = _pixels(coronal, LUNG_L_RGB), _pixels(coronal, CORD_RGB)
    assert len(lung) or len(cord)
    # superior -> image top (on the mean: a tilted volume's coronal plane is the nearest axis-aligned one)
    if len(lung):
        assert lung[:, 0].mean() < rows / 2 and lung[:, 1].min() > cols / 2
    if len(cord):
        assert cord[:, 0].mean() > rows / 2 and cord[:, 1].max() < cols / 2


def test_display_volume_keeps_physical_aspect_and_sources() -> None:
    hu, labels, body = phantom((6, 24, 40))
    series, _ = synthetic_series(hu, "FFS", spacing=(0.5, 1.0, 4.0))
    display = display_volume(series.volume)
    assert display.array.shape == (6, 24, 40) and display.spacing == (4.0, 1.0, 0.5)
    assert display.flips == (True, False, True)  # feet first: slice 0 is cranial; rows point to patient right
    views, _ = render_views(series, result_for(series, labels, body))
    axial = views[0]
    assert axial.rgb.shape[0] / axial.rgb.shape[1] == pytest.approx(24 * 1.0 / (40 * 0.5), rel=0.02)
    coronal = views[3]
    assert coronal.rgb.shape[0] / coronal.rgb.shape[1] == pytest.approx(6 * 4.0 / (40 * 0.5), rel=0.02)
    assert all(v.source_slice is not None and 0 <= v.source_slice < 6 for v in views[:3])


def test_preview_secondary_capture_and_png(tmp_path: Path) -> None:
    series, labels = _lateral_phantom((14, 30, 34), "FFP")
    ident = identity(preview_series_number=88)
    preview = build_preview(series, result_for(series, labels), ident, naming=OutputNaming("t", {"SpinalCord": "Cord"}))
    sc = preview.save_png(tmp_path / "preview.png")
    write_dataset(sc, tmp_path / "preview.dcm")
    errors, report = dciodvfy_errors(tmp_path / "preview.dcm")
    assert errors == [], report
    back = pydicom.dcmread(tmp_path / "preview.dcm")
    assert back.SOPClassUID == SecondaryCaptureImageStorage and back.Modality == "OT"
    assert back.SeriesNumber == 88 and back.SeriesDescription.startswith("AI-generated")
    assert "QA preview" in back.SeriesDescription
    source = series.datasets[0]
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyID"):
        assert back[keyword].value == source[keyword].value, keyword
    assert back.SeriesInstanceUID != source.SeriesInstanceUID and back.SeriesInstanceUID.startswith(TEST_ROOT)
    assert back.PhotometricInterpretation == "RGB" and back.SamplesPerPixel == 3
    png = np.asarray(Image.open(tmp_path / "preview.png").convert("RGB"))
    assert np.array_equal(back.pixel_array, png) and np.array_equal(png, preview.image)
    shown = {str(ref.ReferencedSOPInstanceUID) for ref in back.SourceImageSequence}
    assert shown and shown <= {str(ds.SOPInstanceUID) for ds in series.datasets}
    # legend colours are in the picture
    for colour in (LUNG_L_RGB, CORD_RGB):
        assert np.all(preview.image == np.asarray(colour, dtype=np.uint8), axis=-1).any()


def test_preview_refusals() -> None:
    hu, labels, _ = phantom()
    series, _ = synthetic_series(hu, "HFS")
    with pytest.raises(OutputError, match="no non-empty structure"):
        build_preview(series, result_for(series, np.zeros_like(labels)), identity())
    with pytest.raises(OutputError, match="window 'bone' is not one of"):
        build_preview(series, result_for(series, labels), identity(), window="bone")
    d = np.asarray(series.volume.direction).reshape(3, 3)
    diagonal = np.stack([d[:, 0], (d[:, 0] + d[:, 2]) / np.sqrt(2), d[:, 2]], axis=1)  # not a rotation,
    skewed = Volume(hu, series.volume.spacing, series.volume.origin, tuple(diagonal.ravel()))  # two axes along x
    with pytest.raises(OutputError, match="same patient axis"):
        display_volume(skewed)


# --- pipeline ------------------------------------------------------------------------------------

def test_output_kinds_and_defaults() -> None:
    assert OUTPUT_KINDS == ("SEG", "RTSTRUCT", "SR", "PREVIEW") and DEFAULT_OUTPUT_KINDS == ("SEG", "RTSTRUCT")


def test_write_stage_writes_sr_referencing_the_seg_and_the_preview(tmp_path: Path) -> None:
    hu, labels, body = phantom()
    series, _ = synthetic_series(hu, "HFS")
    result = SegmentationResult(series.volume.with_array(labels),
                                (LabelledStructure(1, "Lung_L"), LabelledStructure(2, "SpinalCord")),
                                "test-model", "1.2.3", {"External": body})
    written = write_stage(series, result, ["SR", "PREVIEW", "SEG"], identity(), tmp_path)
    assert sorted(o.kind for o in written) == ["PREVIEW", "SEG", "SR"]
    by_kind = {o.kind: o for o in written}
    assert by_kind["SR"].path.name == "sr.dcm" and by_kind["PREVIEW"].path.name == "preview.dcm"
    assert (tmp_path / PREVIEW_PNG).is_file()
    assert PREVIEW_PNG not in {o.path.name for o in written}  # the PNG is kept, not sent
    sr = pydicom.dcmread(by_kind["SR"].path)
    refs = {str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in _content_items(sr)
            if i.get("ValueType") == "IMAGE" and i.ConceptNameCodeSequence[0].CodeValue == "121191"}
    assert refs == {by_kind["SEG"].sop_uid}
    assert by_kind["PREVIEW"].sop_class_uid == SecondaryCaptureImageStorage
    for obj in written:
        errors, report = dciodvfy_errors(obj.path)
        assert errors == [], f"{obj.kind}: {report}"


def test_sr_refers_to_every_instance_of_a_split_seg(tmp_path: Path) -> None:
    hu, labels, body = phantom()
    series, _ = synthetic_series(hu, "FFP")
    written = write_stage(series, result_for(series, labels, body), ["SEG", "SR"], identity(), tmp_path,
                          seg_max_segments=1)
    segs = {o.sop_uid: pydicom.dcmread(o.path) for o in written if o.kind == "SEG"}
    assert len(segs) == 3  # one segment per instance
    (sr_obj,) = [o for o in written if o.kind == "SR"]
    sr = pydicom.dcmread(sr_obj.path)
    referenced = []
    for item in _content_items(sr):
        if item.get("ValueType") == "IMAGE" and item.ConceptNameCodeSequence[0].CodeValue == "121191":
            sop = item.ReferencedSOPSequence[0]
            seg = segs[str(sop.ReferencedSOPInstanceUID)]
            number = int(sop.ReferencedSegmentNumber)
            referenced.append(next(str(s.SegmentLabel) for s in seg.SegmentSequence if int(s.SegmentNumber) == number))
    assert referenced == ["Lung_L", "SpinalCord", "External"]
    errors, report = dciodvfy_errors(sr_obj.path)
    assert errors == [], report
