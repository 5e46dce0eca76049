"""load_series on the real series in ../shared/data (see SOURCE.md sections 1, 3, 5, 6 and 9).

nsclc_lung1_001 and ibsi_ct_phantom are CC BY-NC: read here in tests only, never copied.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_node.dicom_header import slice_position
from dicom_node.errors import SeriesError
from dicom_node.outputs.seg import build_seg
from dicom_node.series_io import (
    CtSeries,
    decode_hu,
    load_series,
    read_header,
)
from segmenter.core.result import LabelledStructure, SegmentationResult
from tests.outputs_helpers import identity


def files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        pytest.fail(f"test data folder missing: {folder}")
    found = sorted(p for p in folder.iterdir() if p.is_file())
    if not found:
        pytest.fail(f"test data folder is empty: {folder}")
    return found


def data_file(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"test data file missing: {path}")
    return path


def sitk_read(paths: list[str]) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(paths)
    return reader.Execute()


def assert_matches(series: CtSeries, image: sitk.Image) -> None:
    v = series.volume
    assert v.origin == pytest.approx(image.GetOrigin(), abs=1e-4)
    assert v.spacing == pytest.approx(image.GetSpacing(), abs=1e-4)
    assert v.direction == pytest.approx(image.GetDirection(), abs=1e-6)
    assert np.array_equal(v.array, sitk.GetArrayFromImage(image))


def test_nsclc_matches_simpleitk(shared_data: Path) -> None:
    folder = shared_data / "ct/nsclc_lung1_001/ct"
    paths = files(folder)
    series = load_series(list(reversed(paths)))
    reader = sitk.ImageSeriesReader()
    image = sitk_read(list(reader.GetGDCMSeriesFileNames(str(folder))))
    assert series.volume.shape == (134, 512, 512)
    assert_matches(series, image)
    assert series.volume.array.dtype == np.int16
    assert int(series.volume.array.min()) == -1024 and int(series.volume.array.max()) == 3034
    assert series.volume.origin == pytest.approx((-249.51171875, -460.51171875, -681.5))
    positions = [slice_position(ds) for ds in series.datasets]
    assert positions == sorted(positions)  # type: ignore[type-var]
    assert all("PixelData" not in ds for ds in series.datasets)
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert series.study_uid == first.StudyInstanceUID and series.series_uid == first.SeriesInstanceUID
    assert series.frame_of_reference_uid == first.FrameOfReferenceUID
    assert len({ds.SOPInstanceUID for ds in series.datasets}) == 134


def test_totalseg_jpeg2000_with_empty_uids(shared_data: Path) -> None:
    paths = files(shared_data / "ct/totalseg_example_dicom/ct")
    series = load_series(paths)
    v = series.volume
    assert v.shape == (20, 512, 512)
    assert v.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))  # 3 mm slices 2 mm apart: overlap is fine
    assert v.origin[2] == pytest.approx(-804.5)
    assert v.origin[2] + 19 * v.spacing[2] == pytest.approx(-766.5)
    # the dataset UIDs are empty; SOP Instance UIDs come from the file meta
    assert series.study_uid == "" and series.series_uid == ""
    metas = {pydicom.dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID for p in paths}
    assert {ds.SOPInstanceUID for ds in series.datasets} == metas
    assert "" not in metas
    # the same files in our slice order through SimpleITK (GDCM's own J2K decoder)
    order = {read_header(p).SOPInstanceUID: str(p) for p in paths}
    assert_matches(series, sitk_read([order[ds.SOPInstanceUID] for ds in series.datasets]))
    assert -1024 <= int(v.array.min()) and int(v.array.max()) > 1000


def test_ibsi_phantom_matches_simpleitk(shared_data: Path) -> None:
    folder = shared_data / "ct/ibsi_ct_phantom/ct"
    series = load_series(files(folder))
    reader = sitk.ImageSeriesReader()
    assert series.volume.shape == (60, 201, 204)
    assert_matches(series, sitk_read(list(reader.GetGDCMSeriesFileNames(str(folder)))))


def test_dcmqi_three_slices_match_simpleitk(shared_data: Path) -> None:
    folder = shared_data / "ct/dcmqi_liver_3slice/ct"
    series = load_series(files(folder))
    reader = sitk.ImageSeriesReader()
    assert_matches(series, sitk_read(list(reader.GetGDCMSeriesFileNames(str(folder)))))
    # instances 1..3 go down in z: ascending along the normal puts instance 3 first
    assert [int(ds.InstanceNumber) for ds in series.datasets] == [3, 2, 1]


def test_two_slices_are_too_few(shared_data: Path) -> None:
    paths = [data_file(shared_data / "ct/rtutils_phantom_2slice" / n) for n in ("ct_1.dcm", "ct_2.dcm")]
    with pytest.raises(SeriesError, match="too few slices"):
        load_series(paths)
    assert load_series(paths, min_slices=2).volume.shape[0] == 2


@pytest.mark.parametrize(("folder", "words"), [
    ("gantrytilting", ("gantry tilt", "14.0°")),
    ("notavolume", ("all 4 instances share one position", "not a volume")),
    ("sliceincrement_ge", ("uneven slice spacing", "5.0, 5.0, 10.0 mm")),
    ("sliceincrement_missing_slice", ("missing slice", "between instances 3 and 5")),
])
def test_dicom2nifti_failing_series_are_refused(shared_data: Path, folder: str, words: tuple[str, ...]) -> None:
    with pytest.raises(SeriesError) as info:
        load_series(files(shared_data / "odd/dicom2nifti" / folder))
    for word in words:
        assert word in str(info.value), str(info.value)


def test_the_ge_series_is_not_called_missing(shared_data: Path) -> None:
    # its instance numbers 7..10 are consecutive across the 10 mm step: uneven, not a lost slice
    with pytest.raises(SeriesError) as info:
        load_series(files(shared_data / "odd/dicom2nifti/sliceincrement_ge"))
    assert "missing" not in str(info.value)


def single(shared_data: Path, name: str) -> CtSeries:
    return load_series([data_file(shared_data / name)], min_slices=1)


def test_jpeg2000_lossless_single_matches_uncompressed(shared_data: Path) -> None:
    j2k = single(shared_data, "odd/pydicom-data/693_J2KR.dcm").volume
    raw = single(shared_data, "odd/pydicom-data/693_UNCR.dcm").volume
    assert j2k.shape == (1, 512, 512)
    assert np.array_equal(j2k.array, raw.array)
    assert (j2k.origin, j2k.direction) == (raw.origin, raw.direction)


def test_jpeg2000_lossy_single_is_close_to_its_source(shared_data: Path) -> None:
    lossy = single(shared_data, "odd/pydicom/693_J2KI.dcm").volume.array.astype(np.float32)
    source = single(shared_data, "odd/pydicom-data/693_UNCI.dcm").volume.array.astype(np.float32)
    assert float(np.abs(lossy - source).mean()) < 5.0


@pytest.mark.parametrize("name", ["odd/pydicom-data/bad_sequence.dcm", "odd/pydicom-data/explicit_VR-UN.dcm",
                                  "odd/pydicom/J2K_pixelrep_mismatch.dcm", "odd/pydicom/CT_small.dcm",
                                  "odd/pynetdicom/CTImageStorage_bad_meta.dcm"])
def test_odd_ct_singles_decode_to_plausible_hu(shared_data: Path, name: str) -> None:
    array = single(shared_data, name).volume.array
    assert array.shape[0] == 1
    assert -3100 <= float(array.min()) < -500 and 500 < float(array.max()) <= 4100


def test_bad_meta_matches_ct_small(shared_data: Path) -> None:
    a = single(shared_data, "odd/pydicom/CT_small.dcm").volume.array
    b = single(shared_data, "odd/pynetdicom/CTImageStorage_bad_meta.dcm").volume.array
    assert np.array_equal(a, b)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_bigendian.dcm"])
def test_compressed_mr_singles_decode_like_the_uncompressed_one(shared_data: Path, name: str) -> None:
    reference = decode_hu(pydicom.dcmread(data_file(shared_data / "odd/pydicom/MR_small_implicit.dcm")))
    decoded = decode_hu(pydicom.dcmread(data_file(shared_data / "odd/pydicom" / name)))
    assert np.array_equal(decoded, reference)


def test_deflated_single_decodes(shared_data: Path) -> None:
    ds = pydicom.dcmread(data_file(shared_data / "odd/pydicom/image_dfl.dcm"))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    assert decode_hu(ds).shape == (1, 512, 512)


def test_enhanced_ct_with_two_frames(shared_data: Path) -> None:
    path = data_file(shared_data / "odd/pydicom-data/eCT_Supplemental.dcm")
    with pytest.raises(SeriesError, match=r"too few slices for a volume: 2 \(need ≥ 3\)"):
        load_series([path])
    series = load_series([path], min_slices=2)
    v = series.volume
    assert v.shape == (2, 512, 512)
    # FFS-like IOP (-1,0,0 / 0,1,0): normal -z, so the frame at z=-149 (frame 2) comes first
    assert series.frame_numbers == (2, 1)
    assert v.origin == pytest.approx((99.5, -301.5, -149.0))
    assert v.direction == pytest.approx((-1, 0, 0, 0, 1, 0, 0, 0, -1))
    assert v.spacing == pytest.approx((0.388672, 0.388672, 10.0))
    frames = decode_hu(pydicom.dcmread(path))
    assert np.array_equal(v.array[0], frames[1]) and np.array_equal(v.array[1], frames[0])


@pytest.mark.parametrize(("name", "words"), [
    ("odd/pydicom/MR_truncated.dcm", ("not a CT image",)),
    ("odd/pydicom/test-SR.dcm", ("not a CT image",)),
    ("odd/pydicom/rtstruct.dcm", ("not a CT image",)),
    ("odd/pydicom-data/liver_expb.dcm", ("not a CT image", "Segmentation")),
    ("odd/pydicom/no_meta.dcm", ()),
    ("odd/pydicom/meta_missing_tsyntax.dcm", ()),
])
def test_odd_non_ct_files_are_refused_with_a_reason(shared_data: Path, name: str, words: tuple[str, ...]) -> None:
    with pytest.raises(SeriesError) as info:
        single(shared_data, name)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_truncated_pixel_data_cannot_be_decoded(shared_data: Path) -> None:
    with pytest.raises(SeriesError, match="pixel data cannot be decoded"):
        decode_hu(pydicom.dcmread(data_file(shared_data / "odd/pydicom/MR_truncated.dcm")))


def test_an_empty_specific_character_set_is_read_as_the_default_and_the_seg_is_written(shared_data: Path) -> None:
    # dcmqi_liver_3slice carries SpecificCharacterSet with an empty value; highdicom refuses it in a SEG
    folder = shared_data / "ct/dcmqi_liver_3slice/ct"
    raw = pydicom.dcmread(files(folder)[0], stop_before_pixels=True)
    assert "SpecificCharacterSet" in raw and not str(raw.SpecificCharacterSet).strip()
    series = load_series(files(folder))
    assert all("SpecificCharacterSet" not in ds for ds in series.datasets)
    labels = np.zeros(series.volume.shape, dtype=np.uint8)
    labels[:, 10:40, 10:40] = 1
    result = SegmentationResult(series.volume.with_array(labels), (LabelledStructure(1, "Liver"),), "test", "1")
    seg = build_seg(series, result, identity())
    assert seg.NumberOfFrames == series.volume.shape[0]
