"""SEG transfer syntaxes at send time: what to propose, which accepted one to use, and the encoded object.

A SEG is stored once, uncompressed (Explicit VR Little Endian, as written). When it is sent, each
transfer syntax the destination's ``seg_transfer_syntaxes`` names and that fits the SEG's type
(:func:`dicom_node.settings.syntaxes.syntaxes_for`) is proposed in a presentation context of its
own, so that the peer accepts or rejects each one separately (in one context with several syntaxes
the peer would pick one by its own preference); uncompressed is proposed too, as the fallback. The
first configured syntax the peer accepted is used, and the object is encoded for it from the stored
file: deflated by pynetdicom as it is sent, or its frames compressed by pydicom (lossless, the SOP
Instance UID kept). Why not store one file per syntax: which one is used is only known once the peer
has answered, a destination's list can change while deliveries wait, and one stored file per object
keeps the output folder, its housekeeping and a resend simple; encoding costs little next to
sending (``benchmarks/seg_transfer_syntax.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.errors import SendError
from dicom_node.settings.syntaxes import seg_syntax, syntaxes_for

log = logging.getLogger(__name__)

SEG_STORAGE_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
                                 "1.2.840.10008.5.1.4.1.1.66.7"})  # Label Map Segmentation Storage
UNCOMPRESSED = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))


@dataclass(frozen=True)
class StoredFile:
    """What the sender knows of a file before the association: its SOP class, stored syntax and
    the syntaxes to propose for it, preferred first (uncompressed last)."""

    path: Path
    sop_class: str
    stored_syntax: str
    proposals: tuple[str, ...]

    @property
    def recoded(self) -> tuple[str, ...]:
        """The proposed syntaxes that mean encoding the stored file anew."""
        return tuple(uid for uid in self.proposals if uid not in UNCOMPRESSED)


def stored_file(path: Path, meta: Dataset, configured: tuple[str, ...]) -> StoredFile:
    """``meta`` is the file read up to its pixels. Only a SEG stored in Explicit VR Little Endian (as the
    node writes them) is encoded anew; every other file is offered in its own syntax and the
    uncompressed ones, as before."""
    sop_class, stored = str(meta.SOPClassUID), str(meta.file_meta.TransferSyntaxUID)
    if sop_class in SEG_STORAGE_CLASSES and stored == ExplicitVRLittleEndian and configured:
        seg_type = str(meta.get("SegmentationType", "") or "BINARY")
        return StoredFile(path, sop_class, stored, (*syntaxes_for(configured, seg_type), str(ImplicitVRLittleEndian)))
    return StoredFile(path, sop_class, stored, tuple(dict.fromkeys([stored, *UNCOMPRESSED])))


def chosen_syntax(assoc: Any, item: StoredFile) -> str:
    """The first recoded syntax the peer accepted for the file's SOP class; '' for none (sent as stored)."""
    accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
    return next((uid for uid in item.recoded if (item.sop_class, uid) in accepted), "")


def sent_syntax(assoc: Any, item: StoredFile) -> str:
    """The syntax a file sent as stored travels in: its own, or the uncompressed one pynetdicom converts
    it to; '' when the peer accepted neither for its SOP class."""
    accepted = [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
                if str(cx.abstract_syntax) == item.sop_class]
    if item.stored_syntax in accepted:
        return item.stored_syntax
    if item.stored_syntax in UNCOMPRESSED:
        return next((uid for uid in UNCOMPRESSED if uid in accepted), "")
    return ""


def encoded(path: Path, uid: str) -> Dataset:
    """The stored (uncompressed) object at ``path`` in transfer syntax ``uid``; SendError when pydicom cannot."""
    try:
        ds = dcmread(path)
        if uid == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = UID(uid)  # pynetdicom deflates the encoded dataset
        else:
            ds.compress(uid, generate_instance_uid=False)
    except (OSError, ValueError, TypeError, AttributeError, RuntimeError, NotImplementedError) as exc:
        raise SendError(f"cannot encode {path.name} as {syntax_name(uid)}: {type(exc).__name__}: {exc}") from exc
    return ds


def syntax_name(uid: str) -> str:
    """The keyword of a SEG transfer syntax, or pydicom's name of any other, or the UID itself."""
    syntax = seg_syntax(uid)
    if syntax is not None:
        return syntax.keyword
    return UID(uid).keyword or uid
