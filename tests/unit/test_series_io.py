"""load_series on synthetic CT series made in memory and written to a temporary folder.

Each series is checked against the geometry it was built with, and (for the orientations) against
SimpleITK's ImageSeriesReader on the same files.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from dicom_node.errors import SeriesError
from dicom_node.series_io import (
    CtSeries,
    decode_hu,
    expected_instance_count,
    load_series,
    read_header,
    slice_position,
)

ORIENTATIONS: dict[str, tuple[float, ...]] = {
    "HFS": (1, 0, 0, 0, 1, 0),
    "FFS": (-1, 0, 0, 0, 1, 0),
    "HFP": (-1, 0, 0, 0, -1, 0),
    "FFP": (1, 0, 0, 0, -1, 0),
    "HFDL": (0, -1, 0, 1, 0, 0),
    "HFDR": (0, 1, 0, -1, 0, 0),
    "OBLIQUE": (0.9659258, 0.0, 0.2588190, 0.0, -1.0, 0.0),
}
ROWS, COLUMNS = 12, 10
PIXEL_SPACING = (0.7, 0.9)  # (row spacing, column spacing)


def normal_of(iop: Sequence[float]) -> np.ndarray:
    return np.cross(np.asarray(iop[:3], dtype=float), np.asarray(iop[3:], dtype=float))


def pixels(k: int, rows: int = ROWS, columns: int = COLUMNS) -> np.ndarray:
    """Distinct per slice and not symmetric, so any flip or reorder shows."""
    j, i = np.mgrid[0:rows, 0:columns]
    return (100 * k + 10 * j + i).astype(np.uint16)


def make_slice(k: int, position: Sequence[float], iop: Sequence[float] = ORIENTATIONS["HFS"], *,
               instance_number: int | None = None, series_uid: str = "1.2.3.4", rows: int = ROWS,
               columns: int = COLUMNS, pixel_spacing: Sequence[float] = PIXEL_SPACING,
               slope: float = 1.0, intercept: float = -1024.0) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.3", series_uid, "1.2.3.5"
    ds.Modality = "CT"
    ds.InstanceNumber = k + 1 if instance_number is None else instance_number
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.ImagePositionPatient = [round(float(v), 6) for v in position]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.SliceThickness = 2.5
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels(k, rows, columns).tobytes()
    return ds


def stack(n: int = 5, iop: Sequence[float] = ORIENTATIONS["HFS"], step: float = 2.5,
          origin: Sequence[float] = (-20.0, 35.0, 100.0), **kwargs: object) -> list[Dataset]:
    """n slices marching along +normal (so slice k is volume index k)."""
    normal = normal_of(iop)
    return [make_slice(k, np.asarray(origin) + normal * step * k, iop, **kwargs)  # type: ignore[arg-type]
            for k in range(n)]


def write(folder: Path, datasets: Sequence[Dataset], shuffle: bool = True) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(datasets):
        path = folder / f"{index:03d}_{ds.SOPInstanceUID[-6:]}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    if shuffle:
        random.Random(len(paths)).shuffle(paths)
    return paths


def load(tmp_path: Path, datasets: Sequence[Dataset], **kwargs: object) -> CtSeries:
    return load_series(write(tmp_path / "series", datasets), **kwargs)  # type: ignore[arg-type]


def expect_error(tmp_path: Path, datasets: Sequence[Dataset], *words: str, **kwargs: object) -> str:
    with pytest.raises(SeriesError) as info:
        load(tmp_path, datasets, **kwargs)
    message = str(info.value)
    for word in words:
        assert word in message, message
    return message


def voxel_to_patient(series: CtSeries, k: int, j: int, i: int) -> np.ndarray:
    v = series.volume
    d = np.asarray(v.direction).reshape(3, 3)
    return np.asarray(v.origin) + d @ (np.asarray([i, j, k], dtype=float) * np.asarray(v.spacing))


# ----------------------------------------------------------------------------------- orientations


@pytest.mark.parametrize("position", sorted(ORIENTATIONS))
@pytest.mark.parametrize("reverse", [False, True])
def test_orientations_give_physically_correct_geometry(tmp_path: Path, position: str, reverse: bool) -> None:
    iop = ORIENTATIONS[position]
    built = stack(6, iop, step=2.5 if not reverse else -2.5, origin=(10.0, -40.0, 250.0))
    series = load(tmp_path, built)
    v = series.volume
    assert v.shape == (6, ROWS, COLUMNS)
    assert v.spacing == pytest.approx((PIXEL_SPACING[1], PIXEL_SPACING[0], 2.5))
    d = np.asarray(v.direction).reshape(3, 3)
    assert np.allclose(d[:, 0], iop[:3]) and np.allclose(d[:, 1], iop[3:])
    assert np.allclose(d[:, 2], normal_of(iop))  # always +normal: ascending order along it
    assert float(np.linalg.det(d)) == pytest.approx(1.0)
    # every slice k sits where its own header says, and carries its own pixels
    for k, header in enumerate(series.datasets):
        source = next(ds for ds in built if ds.SOPInstanceUID == header.SOPInstanceUID)
        assert np.allclose(voxel_to_patient(series, k, 0, 0), [float(x) for x in source.ImagePositionPatient],
                           atol=1e-5)
        # one column to the right moves along the row cosine by the column spacing
        expected = np.asarray([float(x) for x in source.ImagePositionPatient]) + np.asarray(iop[:3]) * 0.9 * 3 \
            + np.asarray(iop[3:]) * 0.7 * 2
        assert np.allclose(voxel_to_patient(series, k, 2, 3), expected, atol=1e-5)
        stored = np.frombuffer(source.PixelData, dtype=np.uint16).reshape(ROWS, COLUMNS)
        assert np.array_equal(v.array[k], stored.astype(np.int32) - 1024)
        assert "PixelData" not in header
    projections = [slice_position(ds) for ds in series.datasets]
    assert projections == sorted(projections)  # type: ignore[type-var]


@pytest.mark.parametrize("position", ["HFS", "FFS", "HFP", "HFDL", "OBLIQUE"])
def test_agrees_with_simpleitk(tmp_path: Path, position: str) -> None:
    built = stack(5, ORIENTATIONS[position], step=-3.0)
    paths = write(tmp_path / "series", built)
    series = load_series(paths)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    image = reader.Execute()
    assert series.volume.origin == pytest.approx(image.GetOrigin(), abs=1e-4)
    assert series.volume.spacing == pytest.approx(image.GetSpacing(), abs=1e-4)
    assert series.volume.direction == pytest.approx(image.GetDirection(), abs=1e-5)
    assert np.array_equal(series.volume.array, sitk.GetArrayFromImage(image))


def test_headers_and_uids(tmp_path: Path) -> None:
    built = stack(4)
    series = load(tmp_path, built)
    assert (series.study_uid, series.series_uid, series.frame_of_reference_uid) == ("1.2.3", "1.2.3.4", "1.2.3.5")
    assert [int(ds.InstanceNumber) for ds in series.datasets] == [1, 2, 3, 4]
    assert series.frame_numbers == (None, None, None, None)
    assert series.volume.array.dtype == np.int16


def test_empty_uids_in_dataset_are_taken_from_file_meta(tmp_path: Path) -> None:
    built = stack(3)
    sop_uids = [ds.SOPInstanceUID for ds in built]
    for ds in built:
        ds.SOPInstanceUID = ""
        ds.SOPClassUID = ""
        ds.StudyInstanceUID = ""
        ds.SeriesInstanceUID = ""
    series = load(tmp_path, built)
    assert [ds.SOPInstanceUID for ds in series.datasets] == sop_uids
    assert all(ds.SOPClassUID == CTImageStorage for ds in series.datasets)
    assert series.study_uid == "" and series.series_uid == ""


# ------------------------------------------------------------------------------------- refusals


def test_gantry_tilt(tmp_path: Path) -> None:
    # IOP tilted by 14 degrees, positions stepping along z only: what a tilted gantry writes
    angle = np.radians(14.0)
    iop = (1.0, 0.0, 0.0, 0.0, float(np.cos(angle)), float(-np.sin(angle)))
    built = [make_slice(k, (0.0, 0.0, 5.0 * k), iop) for k in range(4)]
    for ds in built:
        ds.GantryDetectorTilt = 14.0
    message = expect_error(tmp_path, built, "gantry tilt", "14.0°", "GantryDetectorTilt")
    assert message.startswith("gantry tilt: slices are sheared by 14.0° relative to the slice normal")


def test_gantry_tilt_tag_alone_is_harmless(tmp_path: Path) -> None:
    built = stack(4)
    for ds in built:
        ds.GantryDetectorTilt = 12.0
    assert load(tmp_path, built).volume.shape[0] == 4


def test_slice_off_the_line(tmp_path: Path) -> None:
    built = stack(5)
    built[2].ImagePositionPatient = [float(built[2].ImagePositionPatient[0]) + 2.0,
                                     *[float(v) for v in built[2].ImagePositionPatient[1:]]]
    expect_error(tmp_path, built, "not on one line", "instance 3")


def test_all_one_position(tmp_path: Path) -> None:
    built = [make_slice(k, (0.0, 0.0, 7.0)) for k in range(4)]
    expect_error(tmp_path, built, "all 4 instances share one position; not a volume")


def test_duplicate_position(tmp_path: Path) -> None:
    built = stack(5)
    built[3].ImagePositionPatient = built[2].ImagePositionPatient
    expect_error(tmp_path, built, "duplicate slice position", "instance 3", "instance 4")


def test_uneven_spacing(tmp_path: Path) -> None:
    built = [make_slice(k, (0.0, 0.0, z)) for k, z in enumerate((0.0, 5.0, 10.0, 17.5))]
    expect_error(tmp_path, built, "uneven slice spacing: steps 5.0, 5.0, 7.5 mm")


def test_wide_step_with_consecutive_numbers_is_uneven_not_missing(tmp_path: Path) -> None:
    built = [make_slice(k, (0.0, 0.0, z)) for k, z in enumerate((0.0, 5.0, 10.0, 20.0))]
    message = expect_error(tmp_path, built, "uneven slice spacing: steps 5.0, 5.0, 10.0 mm")
    assert "missing" not in message


def test_missing_slice(tmp_path: Path) -> None:
    built = [make_slice(k, (0.0, 0.0, 3.0 * n), instance_number=n + 1) for k, n in enumerate((0, 1, 2, 4, 5))]
    expect_error(tmp_path, built,
                 "missing slice: gap of 6.0 mm where 3.0 mm expected between instances 3 and 5")


def test_many_steps_are_summarised(tmp_path: Path) -> None:
    zs = [3.0 * k for k in range(12)]
    zs[8:] = [z + 1.0 for z in zs[8:]]
    built = [make_slice(k, (0.0, 0.0, z)) for k, z in enumerate(zs)]
    expect_error(tmp_path, built, "uneven slice spacing: usual step 3.0 mm, but 4.0 mm between instances 8 and 9")


def test_mixed_orientations(tmp_path: Path) -> None:
    built = stack(4)
    built[2].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    expect_error(tmp_path, built, "mixed orientations")


def test_mixed_image_sizes(tmp_path: Path) -> None:
    built = [*stack(3), make_slice(3, (-20.0, 35.0, 107.5), rows=14)]
    expect_error(tmp_path, built, "mixed image sizes", "14×10")


def test_mixed_pixel_spacing(tmp_path: Path) -> None:
    built = [*stack(3), make_slice(3, (-20.0, 35.0, 107.5), pixel_spacing=(0.8, 0.9))]
    expect_error(tmp_path, built, "mixed pixel spacing")


def test_too_few_slices_and_the_minimum_is_a_parameter(tmp_path: Path) -> None:
    built = stack(2)
    expect_error(tmp_path, built, "too few slices", "2", "≥ 3")
    assert load_series(write(tmp_path / "two", built), min_slices=2).volume.shape[0] == 2
    one = load_series(write(tmp_path / "one", built[:1]), min_slices=1)
    assert one.volume.spacing[2] == 2.5  # the nominal SliceThickness
    with pytest.raises(ValueError):
        load_series(write(tmp_path / "zero", built[:1]), min_slices=0)


def test_two_series_at_once(tmp_path: Path) -> None:
    built = [*stack(3), make_slice(3, (-20.0, 35.0, 107.5), series_uid="1.2.3.9")]
    expect_error(tmp_path, built, "2 different series")


def test_not_ct(tmp_path: Path) -> None:
    built = stack(3)
    built[1].SOPClassUID = MRImageStorage
    expect_error(tmp_path, built, "not a CT image", "MR Image Storage")


def test_missing_position(tmp_path: Path) -> None:
    built = stack(3)
    del built[1].ImagePositionPatient
    expect_error(tmp_path, built, "instance 2 has no ImagePositionPatient")


def test_invalid_orientation(tmp_path: Path) -> None:
    built = stack(3)
    for ds in built:
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    expect_error(tmp_path, built, "ImageOrientationPatient", "not two orthogonal unit vectors")


def test_unreadable_file_and_no_files(tmp_path: Path) -> None:
    with pytest.raises(SeriesError, match=r"cannot read missing\.dcm"):
        load_series([tmp_path / "missing.dcm"])
    with pytest.raises(SeriesError, match="no instances"):
        load_series([])
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM at all")
    with pytest.raises(SeriesError):
        load_series([text], min_slices=1)


def test_truncated_pixel_data(tmp_path: Path) -> None:
    built = stack(3)
    built[1].PixelData = built[1].PixelData[:-40]
    expect_error(tmp_path, built, "pixel data cannot be decoded", "instance 2")


def test_colour_image_is_refused(tmp_path: Path) -> None:
    built = stack(3)
    for ds in built:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = bytes(ROWS * COLUMNS * 3)
    expect_error(tmp_path, built, "not a greyscale image")


# ----------------------------------------------------------------------------------- pixel values


def test_fractional_rescale_gives_float32(tmp_path: Path) -> None:
    series = load(tmp_path, stack(3, slope=0.5, intercept=-1000.25))
    assert series.volume.array.dtype == np.float32
    assert series.volume.array[1, 2, 3] == pytest.approx(0.5 * (100 + 20 + 3) - 1000.25)


def test_values_beyond_int16_promote_to_float32(tmp_path: Path) -> None:
    built = stack(3, intercept=0.0)
    data = np.frombuffer(built[2].PixelData, dtype=np.uint16).copy()
    data[0] = 60000
    built[2].PixelData = data.tobytes()
    series = load(tmp_path, built)
    assert series.volume.array.dtype == np.float32
    assert series.volume.array[2, 0, 0] == 60000.0 and series.volume.array[0, 1, 1] == 11.0


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless, DeflatedExplicitVRLittleEndian])
def test_compressed_transfer_syntaxes(tmp_path: Path, syntax: str) -> None:
    # J2K needs frames larger than its resolution levels; 64x64 is still tiny
    built = stack(3, rows=64, columns=64)
    reference = load(tmp_path / "plain", built).volume.array
    for ds in built:
        if syntax == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax)
    series = load(tmp_path / "compressed", built)
    assert all(pydicom.dcmread(p).file_meta.TransferSyntaxUID == syntax
               for p in (tmp_path / "compressed" / "series").iterdir())
    assert np.array_equal(series.volume.array, reference)


def test_decode_hu_of_one_dataset() -> None:
    ds = make_slice(2, (0.0, 0.0, 0.0), slope=2.0, intercept=-1000.0)
    hu = decode_hu(ds)
    assert hu.shape == (1, ROWS, COLUMNS) and hu.dtype == np.float32
    assert hu[0, 1, 1] == 2.0 * 211 - 1000.0


# ---------------------------------------------------------------------------------- Enhanced CT


def enhanced(positions: Sequence[float], shared_geometry: bool = True) -> Dataset:
    """An Enhanced CT with frames listed in the given z order (HFS)."""
    n = len(positions)
    ds = make_slice(0, (0.0, 0.0, 0.0))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "SliceThickness",
                    "RescaleSlope", "RescaleIntercept"):
        delattr(ds, keyword)
    ds.NumberOfFrames = n
    orientation, measures, transform = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    measures.PixelSpacing, measures.SliceThickness = list(PIXEL_SPACING), 2.0
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1024, "HU"
    shared = Dataset()
    shared.PixelValueTransformationSequence = [transform]
    if shared_geometry:
        shared.PlaneOrientationSequence = [orientation]
        shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for z in positions:
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [0.0, 0.0, float(z)]
        item.PlanePositionSequence = [plane]
        if not shared_geometry:
            item.PlaneOrientationSequence = [orientation]
            item.PixelMeasuresSequence = [measures]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = b"".join(pixels(f).tobytes() for f in range(n))
    return ds


@pytest.mark.parametrize("shared_geometry", [True, False])
def test_enhanced_ct_frames_are_sorted_by_position(tmp_path: Path, shared_geometry: bool) -> None:
    ds = enhanced([6.0, 0.0, 3.0, 9.0], shared_geometry)
    series = load(tmp_path, [ds])
    assert series.frame_numbers == (2, 3, 1, 4)
    assert len(series.datasets) == 4 and all("PixelData" not in h for h in series.datasets)
    assert series.volume.origin == (0.0, 0.0, 0.0) and series.volume.spacing == pytest.approx((0.9, 0.7, 3.0))
    for k, frame in enumerate(series.frame_numbers):
        assert frame is not None
        assert np.array_equal(series.volume.array[k], pixels(frame - 1).astype(np.int32) - 1024)


def test_enhanced_ct_checks_apply_to_frames(tmp_path: Path) -> None:
    expect_error(tmp_path, [enhanced([0.0, 3.0])], "too few slices", "2")
    expect_error(tmp_path / "b", [enhanced([0.0, 3.0, 6.0, 12.0])], "missing slice", "frame")
    expect_error(tmp_path / "c", [enhanced([0.0, 0.0, 0.0])], "all 3 frames share one position")


def test_enhanced_ct_without_plane_position(tmp_path: Path) -> None:
    ds = enhanced([0.0, 3.0, 6.0])
    del ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence
    expect_error(tmp_path, [ds], "frame 2", "no ImagePositionPatient")


# ------------------------------------------------------------------------------ receive summaries


def test_slice_position_is_the_projection_on_the_normal() -> None:
    assert slice_position(make_slice(0, (1.0, 2.0, 30.0))) == pytest.approx(30.0)
    assert slice_position(make_slice(0, (1.0, 2.0, 30.0), ORIENTATIONS["FFS"])) == pytest.approx(-30.0)
    ds = make_slice(0, (0.0, 0.0, 0.0))
    del ds.ImagePositionPatient
    assert slice_position(ds) is None
    ds = make_slice(0, (0.0, 0.0, 0.0))
    ds.ImageOrientationPatient = [0, 0, 0, 0, 0, 0]
    assert slice_position(ds) is None
    assert slice_position(Dataset()) is None
    assert slice_position(enhanced([0.0, 3.0, 6.0])) is None


def test_expected_instance_count() -> None:
    ds = make_slice(0, (0.0, 0.0, 0.0))
    assert expected_instance_count(ds) is None
    ds.ImagesInAcquisition = 134
    assert expected_instance_count(ds) == 134
    ds.ImagesInAcquisition = 1
    assert expected_instance_count(ds) is None
    ds.ImagesInAcquisition = 99999
    assert expected_instance_count(ds) is None


def test_read_header_has_no_pixel_data(tmp_path: Path) -> None:
    path = write(tmp_path, stack(1), shuffle=False)[0]
    header = read_header(path)
    assert "PixelData" not in header and header.Rows == ROWS
