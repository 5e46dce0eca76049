"""The C-STORE fast path: header scan and hand-built file meta must agree with pydicom/pynetdicom."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from dicom_node.receive.handlers import CT_IMAGE_STORAGE, extract_meta
from dicom_node.receive.header_scan import (
    WANTED_TAGS,
    HeaderScanError,
    PlainHeader,
    scan_header,
)
from dicom_node.receive.storage import file_header

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _dataset_stream(path: Path) -> tuple[bytes, pydicom.uid.UID] | None:
    """The bytes after the File Meta group and the transfer syntax, as a C-STORE would carry them."""
    with open(path, "rb") as fh:
        try:
            read_preamble(fh, False)
            meta = _read_file_meta_info(fh)
        except Exception:
            return None
        syntax = meta.get("TransferSyntaxUID")
        return fh.read(), syntax


def _little_endian_files() -> list[Path]:
    files = [p for p in sorted(DATA.rglob("*")) if p.is_file() and p.suffix.lower() in ("", ".dcm")]
    assert files, f"no test data under {DATA}"
    return files


def _pydicom_header(stream: bytes, implicit: bool) -> Dataset:
    return read_dataset(io.BytesIO(stream), implicit, True)


def test_scan_agrees_with_pydicom_on_every_shared_file() -> None:
    scanned = fell_back = plain = 0
    for path in _little_endian_files():
        found = _dataset_stream(path)
        if found is None or found[1] is None:
            continue
        stream, syntax = found
        if not syntax.is_little_endian or syntax.is_deflated:
            continue
        try:
            reference = _pydicom_header(stream, syntax.is_implicit_VR)
            reference_meta = extract_meta(reference, "1.2.3", str(reference.get("SOPClassUID", CT_IMAGE_STORAGE)),
                                          str(syntax))
        except Exception:
            continue  # files pydicom itself cannot read are refused either way
        try:
            header = scan_header(stream, syntax.is_implicit_VR)
        except HeaderScanError:
            fell_back += 1
            continue
        scanned += 1
        if isinstance(header, PlainHeader):
            plain += 1
            for keyword in header:
                assert keyword in reference, f"{path.name}: {keyword}"
        else:
            for tag in WANTED_TAGS:
                assert (tag in header) == (tag in reference), f"{path.name}: {tag:08X}"
                if tag in reference:
                    assert header[tag].value == reference[tag].value, f"{path.name}: {tag:08X}"
        meta = extract_meta(header, "1.2.3", str(reference.get("SOPClassUID", CT_IMAGE_STORAGE)), str(syntax))
        assert meta == reference_meta, path.name
    # the real CT series alone has 134 plain slices; the fallback is for oddities only
    assert scanned >= 200, (scanned, fell_back)
    assert fell_back <= scanned // 10, (scanned, fell_back)
    assert plain >= 134, plain


def _ct_header(implicit: bool, undefined_sequences: bool) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = "20260102"
    ds.Modality = "CT"
    item = Dataset()
    item.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    item.ReferencedSOPInstanceUID = generate_uid()
    inner = Dataset()
    inner.CodeValue = "123"
    inner.CodingSchemeDesignator = "DCM"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds.SeriesDescription = "Thorax 3mm Müller"  # Latin-1 text decoded with the charset
    ds.PatientID = "ID-1"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.InstanceNumber = 7
    ds.ImagePositionPatient = [-250.0, -250.0, 12.5]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagesInAcquisition = 120
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = 16
    ds.PixelData = b"\0" * 8
    if undefined_sequences:
        for seq in (ds.ReferencedImageSequence, item.PurposeOfReferenceCodeSequence):
            seq.is_undefined_length = True
            for entry in seq:
                entry.is_undefined_length_sequence_item = True
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    write_dataset(fp, ds)
    return fp.getvalue()


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("undefined", [False, True])
def test_scan_skips_nested_sequences(implicit: bool, undefined: bool) -> None:
    stream = _ct_header(implicit, undefined)
    header = scan_header(stream, implicit)
    reference = _pydicom_header(stream, implicit)
    assert "ReferencedImageSequence" not in header  # not wanted: skipped, not parsed
    # Latin-1 text is not plain ASCII: pydicom decodes it with the character set
    assert not isinstance(header, PlainHeader)
    assert header.SeriesDescription == reference.SeriesDescription == "Thorax 3mm Müller"
    meta = extract_meta(header, "9.9", CT_IMAGE_STORAGE,
                        str(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian))
    assert meta == extract_meta(reference, "9.9", CT_IMAGE_STORAGE,
                                str(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian))
    assert meta.instance_number == 7 and meta.expected_count == 120 and meta.slice_position == pytest.approx(12.5)


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192", ""])
def test_plain_ascii_header_gives_the_same_meta(charset: str) -> None:
    ds = pydicom.dcmread(io.BytesIO(_file(_ct_header(False, False))))
    ds.SeriesDescription = "Thorax 3mm  "  # trailing padding as pydicom strips it
    ds.PatientID = "ID-1\0"
    ds.ImagesInAcquisition = " 120"
    if charset:
        ds.SpecificCharacterSet = charset
    else:
        del ds.SpecificCharacterSet
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, ds)
    header = scan_header(fp.getvalue(), False)
    assert isinstance(header, PlainHeader)
    reference = _pydicom_header(fp.getvalue(), False)
    assert (extract_meta(header, "9.9", CT_IMAGE_STORAGE, "1.2")
            == extract_meta(reference, "9.9", CT_IMAGE_STORAGE, "1.2"))
    assert header.SeriesDescription == "Thorax 3mm" and header.PatientID == "ID-1"


def test_japanese_character_set_is_left_to_pydicom() -> None:
    ds = pydicom.dcmread(io.BytesIO(_file(_ct_header(False, False))))
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.SeriesDescription = "CT"
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, ds)
    assert not isinstance(scan_header(fp.getvalue(), False), PlainHeader)


def _file(stream: bytes) -> bytes:
    return file_header(CT_IMAGE_STORAGE, "1.2.3", ExplicitVRLittleEndian) + stream


@pytest.mark.parametrize("cut", [3, 20, 200])
def test_truncated_stream_is_refused_not_misread(cut: int) -> None:
    stream = _ct_header(False, True)
    with pytest.raises(HeaderScanError):
        scan_header(stream[:cut], False)


def test_wrong_syntax_is_refused() -> None:
    # an implicit stream read as explicit finds no VR where it expects one
    with pytest.raises(HeaderScanError):
        scan_header(_ct_header(True, False), False)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.4.70"])
@pytest.mark.parametrize("sop_uid", ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498.12345678901234567890"])
def test_file_header_equals_pynetdicom(syntax: str, sop_uid: str) -> None:
    expected = b"\0" * 128 + b"DICM" + encode_file_meta(create_file_meta(
        sop_class_uid=CT_IMAGE_STORAGE, sop_instance_uid=sop_uid, transfer_syntax=pydicom.uid.UID(syntax)))
    assert file_header(CT_IMAGE_STORAGE, sop_uid, syntax) == expected
