"""SEG and RTSTRUCT writers on small series made in memory, in every patient orientation."""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    RTStructureSetStorage,
    SegmentationStorage,
)

from dicom_node.errors import OutputError
from dicom_node.outputs.common import new_uid, write_dataset
from dicom_node.outputs.rtstruct.builder import build_rtstruct
from dicom_node.outputs.seg import build_seg
from dicom_node.series_io import CtSeries
from segmenter.core.result import LabelledStructure, SegmentationResult
from segmenter.core.volume import Volume
from tests.outputs_helpers import (
    ORIENTATIONS,
    TEST_ROOT,
    identity,
    patient_to_voxel,
    synthetic_series,
)
from tests.unit.test_contours import skimage_xor

SHAPE = (5, 24, 30)


def phantom(shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU image, an asymmetric label map (1 = Lung_L, 2 = SpinalCord ring) and a body mask."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[1:4, 3:12, 4:10] = 1  # top-left block: mirrored in any axis it lands elsewhere
    labels[1:4, 5:9, 6:8] = 0  # a hole in it
    labels[0:3, 15:22, 18:28] = 2
    labels[0:3, 17:20, 21:25] = 0  # another hole
    labels[4, 20, 2] = 2  # one-voxel island
    body = np.zeros(shape, dtype=bool)
    body[:, 1:23, 1:29] = True
    hu = np.where(body, 0, -1000).astype(np.int16)
    return hu, labels, body


def result_for(series: CtSeries, labels: np.ndarray, body: np.ndarray | None = None) -> SegmentationResult:
    extra = {"External": body} if body is not None else {}
    return SegmentationResult(series.volume.with_array(labels),
                              (LabelledStructure(1, "Lung_L"), LabelledStructure(2, "SpinalCord")),
                              "test-model", "1.2.3", extra)


@pytest.mark.parametrize("with_body", [False, True], ids=["labelmap", "stacked"])
@pytest.mark.parametrize("position", sorted(ORIENTATIONS))
def test_seg_round_trip_without_mirroring(tmp_path: Path, position: str, with_body: bool) -> None:
    hu, labels, body = phantom()
    series, _ = synthetic_series(hu, position)
    seg = build_seg(series, result_for(series, labels, body if with_body else None), identity())
    write_dataset(seg, tmp_path / "seg.dcm")
    back = hd.seg.segread(tmp_path / "seg.dcm")
    uids = [str(ds.SOPInstanceUID) for ds in series.datasets]
    numbers = [int(item.SegmentNumber) for item in back.SegmentSequence]
    pixels = back.get_pixels_by_source_instance(uids, segment_numbers=numbers, ignore_spatial_locations=False,
                                                assert_missing_frames_are_empty=True)
    expected = [labels == 1, labels == 2] + ([body] if with_body else [])
    assert [item.SegmentLabel for item in back.SegmentSequence] == ["Lung_L", "SpinalCord", "External"][:len(expected)]
    for index, mask in enumerate(expected):
        assert np.array_equal(pixels[..., index].astype(bool), mask), f"segment {index + 1}"
    # every frame sits on its source image's plane, with the source's orientation
    by_uid = {str(ds.SOPInstanceUID): ds for ds in series.datasets}
    orientation = back.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert np.allclose([float(v) for v in orientation], ORIENTATIONS[position], atol=1e-6)
    for frame in back.PerFrameFunctionalGroupsSequence:
        source = by_uid[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        position_xyz = frame.PlanePositionSequence[0].ImagePositionPatient
        assert np.allclose([float(v) for v in position_xyz], [float(v) for v in source.ImagePositionPatient])
    # physical check: where highdicom puts the segment equals where the volume puts the label
    volume = back.get_volume(segment_numbers=[1], combine_segments=False)
    inside = np.argwhere(volume.array[..., 0] > 0)
    xyz = volume.map_indices_to_reference(inside)
    kji = np.rint(patient_to_voxel(series.volume, xyz)).astype(int)
    assert np.all(labels[kji[:, 0], kji[:, 1], kji[:, 2]] == 1)
    assert len(kji) == int((labels == 1).sum())


def test_seg_attributes(tmp_path: Path) -> None:
    hu, labels, body = phantom()
    series, _ = synthetic_series(hu, "HFP")
    ident = identity()
    seg = build_seg(series, result_for(series, labels, body), ident)
    assert seg.SOPClassUID == SegmentationStorage and seg.SegmentationType == "BINARY"
    assert seg.SeriesInstanceUID.startswith(TEST_ROOT + ".") and seg.SOPInstanceUID.startswith(TEST_ROOT + ".")
    assert seg.SeriesNumber == ident.seg_series_number
    assert seg.SeriesDescription.startswith("AI-generated") and "test-model 1.2.3" in seg.SeriesDescription
    assert (seg.Manufacturer, seg.ManufacturerModelName, seg.SoftwareVersions, seg.DeviceSerialNumber) == (
        "Test Physics", "dicom-autocontour-node", "0.1.0", "TEST-1")
    assert seg.StudyInstanceUID == series.study_uid and seg.FrameOfReferenceUID == series.frame_of_reference_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    first = seg.SegmentSequence[0]
    assert first.SegmentedPropertyTypeCodeSequence[0].CodeValue == "44029006"  # SCT left lung
    assert first.SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert first.SegmentAlgorithmType == "AUTOMATIC"
    assert first.SegmentAlgorithmName == "test-model"
    assert first.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "1.2.3"
    assert hd.color.CIELabColor.from_dicom_value(first.RecommendedDisplayCIELabValue).to_rgb() == (255, 179, 0)
    # empty frames omitted: SpinalCord covers 4 of 5 slices, Lung_L 3, External all 5
    assert int(seg.NumberOfFrames) == 3 + 4 + 5


def test_empty_structure_is_omitted_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    hu, labels, _ = phantom()
    labels[labels == 1] = 0
    series, _ = synthetic_series(hu, "FFS")
    with caplog.at_level(logging.INFO):
        seg = build_seg(series, result_for(series, labels), identity())
        rt = build_rtstruct(series, result_for(series, labels), identity())
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["SpinalCord"]
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["SpinalCord"]
    assert sum("Lung_L" in r.getMessage() and "empty" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("position", sorted(ORIENTATIONS))
def test_rtstruct_contours_lie_on_their_images_and_fill_back_to_the_mask(tmp_path: Path, position: str) -> None:
    hu, labels, body = phantom()
    series, _ = synthetic_series(hu, position)
    rt = build_rtstruct(series, result_for(series, labels, body), identity())
    write_dataset(rt, tmp_path / "rt.dcm")
    rt = pydicom.dcmread(tmp_path / "rt.dcm")
    by_uid = {str(ds.SOPInstanceUID): (k, ds) for k, ds in enumerate(series.datasets)}
    names = {int(r.ROINumber): str(r.ROIName) for r in rt.StructureSetROISequence}
    expected = {"Lung_L": labels == 1, "SpinalCord": labels == 2, "External": body}
    for roi in rt.ROIContourSequence:
        name = names[int(roi.ReferencedROINumber)]
        polygons: dict[int, list[np.ndarray]] = {}
        for contour in roi.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            (ref,) = contour.ContourImageSequence
            k, image = by_uid[str(ref.ReferencedSOPInstanceUID)]
            assert ref.ReferencedSOPClassUID == image.SOPClassUID
            xyz = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
            assert len(xyz) == int(contour.NumberOfContourPoints) >= 3
            # map back with the referenced image's own header (not the writer's geometry)
            row, col = (np.asarray([float(v) for v in image.ImageOrientationPatient[i:i + 3]]) for i in (0, 3))
            ps = [float(v) for v in image.PixelSpacing]
            rel = xyz - np.asarray([float(v) for v in image.ImagePositionPatient])
            assert np.allclose(rel @ np.cross(row, col), 0, atol=1e-3)  # on the image plane
            polygons.setdefault(k, []).append(np.stack([rel @ col / ps[0], rel @ row / ps[1]], axis=1))
        filled = np.zeros(SHAPE, dtype=bool)
        for k, polys in polygons.items():
            filled[k] = skimage_xor(polys, SHAPE[1:])
        assert np.array_equal(filled, expected[name]), name


def test_rtstruct_attributes() -> None:
    hu, labels, body = phantom()
    series, _ = synthetic_series(hu, "FFP")
    ident = identity()
    rt = build_rtstruct(series, result_for(series, labels, body), ident)
    assert rt.SOPClassUID == RTStructureSetStorage and rt.Modality == "RTSTRUCT"
    assert rt.SOPInstanceUID.startswith(TEST_ROOT + ".") and rt.SeriesInstanceUID.startswith(TEST_ROOT + ".")
    assert rt.SeriesNumber == ident.rtstruct_series_number
    assert rt.SeriesDescription.startswith(ident.series_description_prefix) and len(rt.SeriesDescription) <= 64
    for keyword in ("ReferringPhysicianName", "AccessionNumber", "OperatorsName", "FrameOfReferenceUID",
                    "PositionReferenceIndicator", "StudyID", "PatientBirthDate", "PatientSex", "StudyDate"):
        assert keyword in rt, keyword
    frame = rt.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == series.frame_of_reference_uid
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == series.study_uid
    refs = study.RTReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == series.series_uid
    assert [r.ReferencedSOPInstanceUID for r in refs.ContourImageSequence] == [
        ds.SOPInstanceUID for ds in series.datasets]
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["Lung_L", "SpinalCord", "External"]
    assert all(r.ROIGenerationAlgorithm == "AUTOMATIC" and "test-model 1.2.3" in r.ROIDescription
               for r in rt.StructureSetROISequence)
    assert [o.RTROIInterpretedType for o in rt.RTROIObservationsSequence] == ["ORGAN", "AVOIDANCE", "EXTERNAL"]
    assert [list(c.ROIDisplayColor) for c in rt.ROIContourSequence] == [[255, 179, 0], [255, 0, 255], [0, 255, 0]]
    for roi in rt.ROIContourSequence:
        for contour in roi.ContourSequence:
            assert all(len(str(v)) <= 16 for v in contour.ContourData)


def test_write_dataset_is_explicit_little_endian_and_atomic(tmp_path: Path) -> None:
    hu, labels, _ = phantom()
    series, _ = synthetic_series(hu, "HFS")
    rt = build_rtstruct(series, result_for(series, labels), identity())
    target = tmp_path / "out" / "rt.dcm"
    write_dataset(rt, target)
    write_dataset(rt, target)  # replacing an existing file is fine
    back = pydicom.dcmread(target)
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.file_meta.MediaStorageSOPInstanceUID == rt.SOPInstanceUID
    assert sorted(p.name for p in target.parent.iterdir()) == ["rt.dcm"]  # no temporary file left


def test_write_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="SOPClassUID"):
        write_dataset(pydicom.Dataset(), tmp_path / "x.dcm")
    hu, labels, _ = phantom()
    series, _ = synthetic_series(hu, "HFS")
    rt = build_rtstruct(series, result_for(series, labels), identity())
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write"):
        write_dataset(rt, blocker / "rt.dcm")


# --- every error path of the builders -----------------------------------------------------------

@pytest.fixture(params=["seg", "rtstruct"])
def builder(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return build_seg if request.param == "seg" else build_rtstruct


def test_label_map_off_the_grid_is_refused(builder) -> None:  # type: ignore[no-untyped-def]
    hu, labels, _ = phantom()
    series, _ = synthetic_series(hu, "HFS")
    volume = series.volume
    bad = SegmentationResult(Volume(labels, volume.spacing, (0.0, 0.0, 0.0), volume.direction),
                             result_for(series, labels).structures, "m", "1")
    with pytest.raises(OutputError, match="origin"):
        builder(series, bad, identity())
    wrong_shape = SegmentationResult(Volume(labels[:-1], volume.spacing, volume.origin, volume.direction),
                                     result_for(series, labels).structures, "m", "1")
    with pytest.raises(OutputError, match="shape"):
        builder(series, wrong_shape, identity())


def test_unknown_structure_is_refused(builder) -> None:  # type: ignore[no-untyped-def]
    hu, labels, _ = phantom()
    series, _ = synthetic_series(hu, "HFS")
    result = SegmentationResult(series.volume.with_array(labels),
                                (LabelledStructure(1, "Lung_L"), LabelledStructure(2, "Kidney_Martian")), "m", "1")
    with pytest.raises(OutputError, match="Kidney_Martian"):
        builder(series, result, identity())


def test_undescribed_label_and_duplicates_are_refused(builder) -> None:  # type: ignore[no-untyped-def]
    hu, labels, _ = phantom()
    series, _ = synthetic_series(hu, "HFS")
    labels = labels.copy()
    labels[0, 0, 0] = 7
    with pytest.raises(OutputError, match=r"\[7\]"):
        builder(series, result_for(series, labels), identity())
    duplicate = SegmentationResult(series.volume.with_array(phantom()[1]),
                                   (LabelledStructure(1, "Lung_L"), LabelledStructure(2, "Lung_L")), "m", "1")
    with pytest.raises(OutputError, match="duplicate"):
        builder(series, duplicate, identity())


def test_nothing_to_write_is_refused(builder) -> None:  # type: ignore[no-untyped-def]
    hu, labels, _ = phantom()
    series, _ = synthetic_series(hu, "HFS")
    with pytest.raises(OutputError, match="no non-empty structure"):
        builder(series, result_for(series, np.zeros_like(labels)), identity())


def test_header_disagreeing_with_volume_is_refused(builder) -> None:  # type: ignore[no-untyped-def]
    hu, labels, _ = phantom()
    series, _ = synthetic_series(hu, "HFS")
    headers = list(series.datasets)
    moved = headers[2].copy()
    moved.ImagePositionPatient = [float(v) + (5.0 if i == 2 else 0.0) for i, v in enumerate(moved.ImagePositionPatient)]
    headers[2] = moved
    shifted = CtSeries(series.volume, tuple(headers), series.study_uid, series.series_uid,
                       series.frame_of_reference_uid)
    with pytest.raises(OutputError, match="ImagePositionPatient"):
        builder(shifted, result_for(series, labels), identity())
    flipped = headers[0].copy()
    flipped.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
    headers[2], headers[0] = series.datasets[2], flipped
    with pytest.raises(OutputError, match="ImageOrientationPatient"):
        builder(CtSeries(series.volume, tuple(headers), series.study_uid, series.series_uid,
                         series.frame_of_reference_uid), result_for(series, labels), identity())


def test_bad_uid_root_is_refused() -> None:
    with pytest.raises(OutputError, match="uid_root"):
        new_uid("1.2.abc")
    assert new_uid(TEST_ROOT + ".").startswith(TEST_ROOT + ".")
    assert len({new_uid(TEST_ROOT) for _ in range(100)}) == 100
