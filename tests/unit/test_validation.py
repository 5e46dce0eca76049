"""The checks at the door (``receive/validation.py``) on the corpus and on real CT data, without a network."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import UID
from pynetdicom.dsutils import decode

from dicom_node.receive.handlers import CT_IMAGE_STORAGE, extract_meta
from dicom_node.receive.validation import (
    CANNOT_UNDERSTAND,
    MEGABYTE,
    BadInstance,
    DoorLimits,
    refusal_status,
    screen,
)
from tests.conftest import SHARED_DATA, make_settings
from tests.corpus.datasets import _encapsulated, _fragments, dataset_cases, good_stream

LIMITS = DoorLimits(MEGABYTE, MEGABYTE)  # the corpus assumes 1 MB limits


def _screen(stream: bytes, syntax: str, limits: DoorLimits = LIMITS) -> None:
    uid = UID(syntax)
    header = screen(stream, uid, lambda: decode(io.BytesIO(stream), uid.is_implicit_VR, uid.is_little_endian,
                                                uid.is_deflated), limits)
    extract_meta(header, "1.2.3", CT_IMAGE_STORAGE, syntax)


@pytest.mark.parametrize("case", dataset_cases(), ids=lambda case: case.name)
def test_each_corpus_dataset_is_refused_with_its_status(case: object) -> None:
    with pytest.raises(BadInstance) as refused:
        _screen(case.stream, case.syntax)  # type: ignore[attr-defined]
    assert refused.value.status in case.statuses, str(refused.value)  # type: ignore[attr-defined]
    status = refusal_status(refused.value)
    assert status.Status == refused.value.status and 0 < len(status.ErrorComment) <= 64


def test_the_well_formed_images_the_corpus_starts_from_pass() -> None:
    _screen(good_stream()[1], "1.2.840.10008.1.2.1")
    _screen(good_stream(explicit=False)[1], "1.2.840.10008.1.2")
    _screen(_encapsulated(_fragments(b"", b"\xff\xd8\xff\xd9"))[1], "1.2.840.10008.1.2.4.50")
    _screen(_encapsulated(_fragments(b"\0\0\0\0", b"\xff\xd8", b"\xff\xd9"))[1], "1.2.840.10008.1.2.4.50")


def test_an_empty_dataset_is_refused() -> None:
    with pytest.raises(BadInstance) as refused:
        _screen(b"", "1.2.840.10008.1.2.1")
    assert refused.value.status == CANNOT_UNDERSTAND


def test_limits_come_from_the_node_settings(tmp_path: Path) -> None:
    node = make_settings(tmp_path, node={"max_dataset_mb": 3, "max_pixel_mb": 5}).node
    assert DoorLimits.of(node) == DoorLimits(3 * MEGABYTE, 5 * MEGABYTE)
    defaults = DoorLimits.of(make_settings(tmp_path).node)
    assert defaults == DoorLimits()


def _real_ct_files() -> list[Path]:
    return sorted(p for p in (SHARED_DATA / "ct").rglob("*") if p.is_file() and p.suffix.lower() in ("", ".dcm"))


def test_every_real_ct_image_of_the_shared_data_passes() -> None:
    passed = 0
    for path in _real_ct_files():
        with open(path, "rb") as fh:
            try:
                read_preamble(fh, False)
                meta = _read_file_meta_info(fh)
            except Exception:
                continue  # not a DICOM file (labels, notes)
            if meta.get("MediaStorageSOPClassUID") not in ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"):
                continue
            stream = fh.read()
        _screen(stream, str(meta.TransferSyntaxUID), DoorLimits())
        passed += 1
    assert passed >= 134, passed
