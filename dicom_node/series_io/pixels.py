"""Reading CT files and decoding their pixels to HU.

Reading is tolerant (``force=True``, file meta repaired where the transfer syntax is missing);
a file that cannot be read or decoded is a ``SeriesError`` naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.dicom_header import header_text
from dicom_node.errors import SeriesError
from dicom_node.series_io.slices import Slice, rescale

log = logging.getLogger(__name__)

# pydicom raises many kinds when a header or pixel stream is malformed; these are the ones seen.
PYDICOM_ERRORS = (InvalidDicomError, OSError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                  EOFError, RuntimeError, NotImplementedError, OverflowError)


def read_header(path: Path) -> Dataset:
    """The header of one file without its pixel data; tolerant of missing preamble and file meta.

    Empty SOP Class/Instance UIDs in the dataset are taken from the file meta, where exporters that
    blank the dataset (``ct/totalseg_example_dicom``) still keep them.
    """
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except PYDICOM_ERRORS as exc:
        raise SeriesError(f"cannot read {path.name}: {exc}") from exc
    _repair_meta(ds)
    if "SpecificCharacterSet" in ds and not any(str(v).strip() for v in _values(ds.SpecificCharacterSet)):
        # present but empty means the default repertoire (PS3.3 C.12.1.1.2); highdicom refuses the
        # empty value when it copies it into a SEG, so the header is read as if it were absent
        del ds.SpecificCharacterSet
    meta = ds.file_meta
    for keyword, meta_keyword in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                                  ("SOPClassUID", "MediaStorageSOPClassUID")):
        if not header_text(ds, keyword) and str(meta.get(meta_keyword, "") or "").strip():
            setattr(ds, keyword, str(meta.get(meta_keyword)).strip())
            log.debug("%s of %s taken from the file meta", keyword, path.name)
    return ds


def _values(value: object) -> list[object]:
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]


def decode_hu(ds: Dataset) -> np.ndarray:
    """Pixel data of a full dataset as (frames, rows, columns) float32 after the modality rescale.

    Uses the top-level RescaleSlope/Intercept, or the shared/per-frame Pixel Value Transformation of
    an Enhanced CT. Raises SeriesError when the pixels cannot be decoded.
    """
    _repair_meta(ds)
    raw = _pixels(ds, "the image")
    out = np.empty(raw.shape, dtype=np.float32)
    for f in range(raw.shape[0]):
        slope, intercept = rescale(ds, f)
        out[f] = raw[f].astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return out


def decode_stack(paths: Sequence[Path], ordered: list[Slice]) -> np.ndarray:
    """Decode each file once and put its frames in their sorted slots, in HU.

    int16 while every slope/intercept is integral and the values fit (exact and half the memory of
    float32); the buffer is promoted to float32 the first time they do not.
    """
    first = ordered[0]
    array: np.ndarray = np.empty((len(ordered), first.rows, first.columns), dtype=np.int16)
    slots: dict[int, list[tuple[int, Slice]]] = {}
    for k, s in enumerate(ordered):
        slots.setdefault(s.file_index, []).append((k, s))
    for file_index, members in slots.items():
        path = Path(paths[file_index])
        label = members[0][1].label.split(" of ")[-1]
        try:
            ds = pydicom.dcmread(path, force=True)
        except PYDICOM_ERRORS as exc:
            raise SeriesError(f"cannot read {path.name}: {exc}") from exc
        _repair_meta(ds)
        raw = _pixels(ds, label)
        if raw.shape[1:] != (first.rows, first.columns):
            raise SeriesError(f"pixel data cannot be decoded: {label} decodes to {raw.shape[1]}×{raw.shape[2]} "
                              f"pixels but declares {first.rows}×{first.columns}")
        for k, s in members:
            index = (s.frame or 1) - 1
            if index >= raw.shape[0]:
                raise SeriesError(f"pixel data cannot be decoded: {label} holds {raw.shape[0]} frames, "
                                  f"{s.label} is missing")
            exact = float(s.slope).is_integer() and float(s.intercept).is_integer()
            if array.dtype == np.int16 and exact:
                values = raw[index].astype(np.int32) * int(s.slope) + int(s.intercept)
                if values.min() >= -32768 and values.max() <= 32767:
                    array[k] = values
                    continue
            if array.dtype != np.float32:
                log.debug("HU not exact in int16 from %s on: promoting the volume to float32", s.label)
                array = array.astype(np.float32)
            array[k] = raw[index].astype(np.float32) * np.float32(s.slope) + np.float32(s.intercept)
        del ds  # the pixel bytes of one file at a time, never of the whole series
    return array


def _repair_meta(ds: Dataset) -> None:
    """Give a dataset read without a transfer syntax the one it was actually read with, so pydicom
    can decode its (necessarily native) pixel data."""
    meta = ds.file_meta
    if "TransferSyntaxUID" in meta and str(meta.TransferSyntaxUID).strip():
        return
    implicit, little = ds.original_encoding
    if little:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def _pixels(ds: Dataset, label: str) -> np.ndarray:
    """Decoded stored values as (frames, rows, columns)."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise SeriesError(f"{label} is not a greyscale image (SamplesPerPixel {ds.SamplesPerPixel})")
    try:
        raw = ds.pixel_array
    except PYDICOM_ERRORS as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID")
        name = syntax.name if syntax else "unknown transfer syntax"
        raise SeriesError(f"pixel data cannot be decoded: {label} ({name}): {exc}") from exc
    return raw[np.newaxis] if raw.ndim == 2 else raw
