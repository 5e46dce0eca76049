"""The transfer syntaxes a destination may get its SEGs in (``seg_transfer_syntaxes``), and which SEG types each fits.

A BINARY SEG has 1 bit a pixel (Bits Allocated 1): it can only be sent natively, uncompressed or
deflated (Deflated Explicit VR Little Endian, the whole dataset zlib-deflated, PS3.5 A.5). A LABELMAP
SEG has 8 or 16 bits a pixel, so the lossless image compressions fit it too: RLE Lossless, JPEG-LS
Lossless and JPEG 2000 Lossless (PS3.5 8.2; the Segmentation IOD restricts none of them for 8/16-bit
pixels). Uncompressed Explicit VR Little Endian is always proposed last, as the fallback.

Each entry is named by its DICOM keyword (PS3.6 Table A-1) or its UID; the settings keep the keyword.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)


@dataclass(frozen=True)
class SegSyntax:
    keyword: str
    uid: str
    seg_types: tuple[str, ...]  # the SEG types it can carry
    encoder: str = ""  # the pydicom encoder it needs ("" for a native encoding)


UNCOMPRESSED = "ExplicitVRLittleEndian"
SEG_SYNTAXES: dict[str, SegSyntax] = {s.keyword: s for s in (
    SegSyntax("DeflatedExplicitVRLittleEndian", str(DeflatedExplicitVRLittleEndian),
              ("BINARY", "LABELMAP", "FRACTIONAL")),
    SegSyntax("RLELossless", str(RLELossless), ("LABELMAP",), "RLELosslessEncoder"),
    SegSyntax("JPEGLSLossless", str(JPEGLSLossless), ("LABELMAP",), "JPEGLSLosslessEncoder"),
    SegSyntax("JPEG2000Lossless", str(JPEG2000Lossless), ("LABELMAP",), "JPEG2000LosslessEncoder"),
    SegSyntax(UNCOMPRESSED, str(ExplicitVRLittleEndian), ("BINARY", "LABELMAP", "FRACTIONAL")),
)}
_BY_UID = {s.uid: s for s in SEG_SYNTAXES.values()}
_BY_LOWER = {k.lower(): s for k, s in SEG_SYNTAXES.items()}


def seg_syntax(name: str) -> SegSyntax | None:
    """The syntax of a keyword (any case) or UID; None when it is none of :data:`SEG_SYNTAXES`."""
    return _BY_UID.get(name.strip()) or _BY_LOWER.get(name.strip().lower())


def known_syntaxes() -> str:
    return ", ".join(f"{s.keyword} ({s.uid})" for s in SEG_SYNTAXES.values())


def missing_encoder(syntax: SegSyntax) -> str:
    """'' when pydicom can encode ``syntax`` here, else what is missing."""
    if not syntax.encoder:
        return ""
    from pydicom.pixels import encoders

    encoder = getattr(encoders, syntax.encoder)
    if encoder.is_available:
        return ""
    return "; ".join(encoder.missing_dependencies) or "no encoder plugin"


def syntaxes_for(configured: tuple[str, ...], seg_type: str) -> list[str]:
    """The UIDs proposed for a SEG of ``seg_type``: the configured ones that fit it, in order, then
    uncompressed (always, as the fallback)."""
    chosen = [s.uid for s in (SEG_SYNTAXES[k] for k in configured) if seg_type in s.seg_types]
    return list(dict.fromkeys([*chosen, SEG_SYNTAXES[UNCOMPRESSED].uid]))
