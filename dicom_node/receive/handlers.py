"""pynetdicom event handlers: thin, get their dependencies bound, return a status, never raise.

C-STORE answers success only after the file is fsync'd and renamed into the store and its index
row is committed. Logs carry no patient names or IDs; UIDs only at debug level.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import index
from dicom_node.db.index import InstanceMeta, StoredInstance
from dicom_node.dicom_header import Header, expected_instance_count, header_int, header_text, slice_position
from dicom_node.errors import IndexError_, StorageError
from dicom_node.receive.group_commit import GroupCommitter
from dicom_node.receive.polling import ReactorPolling
from dicom_node.receive.storage import InstanceStore, file_header, is_valid_uid
from dicom_node.receive.validation import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    SOP_CLASS_NOT_SUPPORTED,
    SUCCESS,
    BadInstance,
    DoorLimits,
    check_context,
    refusal_status,
    screen,
)

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
ENHANCED_CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2.1")
ACCEPTED_SOP_CLASSES = (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE)


@dataclass
class ReceiverContext:
    factory: sessionmaker[Session]
    store: InstanceStore
    # pynetdicom Association object id -> our association row id
    associations: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    polling: ReactorPolling = field(default_factory=ReactorPolling)
    limits: DoorLimits = field(default_factory=DoorLimits)  # [node] max_dataset_mb, max_pixel_mb
    committer: GroupCommitter = field(init=False)
    # the same SOP Instance arriving on two associations at once is handled one after the other,
    # so one copy's failed write cannot withdraw the row the other copy was acknowledged with
    _sop_locks: tuple[threading.Lock, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.committer = GroupCommitter(self.factory)
        self._sop_locks = tuple(threading.Lock() for _ in range(64))

    def sop_lock(self, sop_uid: str) -> threading.Lock:
        return self._sop_locks[hash(sop_uid) % len(self._sop_locks)]

    def close(self) -> None:
        self.committer.close()
        self.store.close()


def extract_meta(ds: Header, affected_sop_uid: str, sop_class_uid: str, transfer_syntax: str) -> InstanceMeta:
    """Read what the index needs from a received header; raise BadInstance with the status to answer."""
    ds_class = header_text(ds, "SOPClassUID")
    if ds_class and ds_class != sop_class_uid:
        raise BadInstance(DATASET_DOES_NOT_MATCH_SOP_CLASS,
                          f"dataset SOP Class {ds_class} differs from the negotiated {sop_class_uid}")
    if sop_class_uid not in ACCEPTED_SOP_CLASSES:
        raise BadInstance(SOP_CLASS_NOT_SUPPORTED, f"SOP Class {sop_class_uid} is not accepted (CT only)")
    # some exporters leave SOPInstanceUID empty in the dataset; the request always carries it
    sop_uid = header_text(ds, "SOPInstanceUID") or affected_sop_uid
    study_uid = header_text(ds, "StudyInstanceUID")
    series_uid = header_text(ds, "SeriesInstanceUID")
    for name, uid in (("SOP Instance UID", sop_uid), ("Study Instance UID", study_uid),
                      ("Series Instance UID", series_uid)):
        if not is_valid_uid(uid):
            raise BadInstance(CANNOT_UNDERSTAND, f"missing or invalid {name}")
    # both never raise; geometry is checked properly when the volume is built
    expected = expected_instance_count(ds)
    position = slice_position(ds)
    return InstanceMeta(
        sop_uid=sop_uid, sop_class_uid=sop_class_uid, transfer_syntax_uid=transfer_syntax,
        study_uid=study_uid, series_uid=series_uid,
        patient_key=header_text(ds, "PatientID") or f"anonymous:{study_uid}",
        modality=header_text(ds, "Modality"), series_description=header_text(ds, "SeriesDescription"),
        body_part=header_text(ds, "BodyPartExamined"), study_date=header_text(ds, "StudyDate")[:8],
        accession_number=header_text(ds, "AccessionNumber")[:16],
        instance_number=header_int(ds, "InstanceNumber"), slice_position=position,
        expected_count=expected,
    )


def handle_store(event: Any, ctx: ReceiverContext) -> int | Dataset:
    """EVT_C_STORE: check at the door (``validation``), store durably, index, then answer; any
    failure is a failure status, a refusal's with a short ErrorComment."""
    try:
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        syntax = event.context.transfer_syntax
        encoded = request.DataSet.getvalue()  # the dataset as the sender encoded it: one copy, used twice
        try:
            check_context(sop_class, str(event.context.abstract_syntax))
            header = screen(encoded, syntax, lambda: event.dataset, ctx.limits)
            meta = extract_meta(header, str(request.AffectedSOPInstanceUID), sop_class, str(syntax))
        except BadInstance:
            raise
        except Exception as exc:  # pydicom raises many kinds on a malformed header
            raise BadInstance(CANNOT_UNDERSTAND, f"cannot decode the dataset: {type(exc).__name__}") from exc
        target = ctx.store.path_for(meta.study_uid, meta.series_uid, meta.sop_uid)
        with ctx.sop_lock(meta.sop_uid):
            return _store_and_index(event, ctx, meta, target, encoded)
    except BadInstance as exc:
        log.warning("refused an instance from %s: %s (status 0x%04X)", _calling(event), exc, exc.status)
        return refusal_status(exc)
    except StorageError as exc:
        log.error("storage failure, answering 0xA700: %s", exc)
        return OUT_OF_RESOURCES
    except IndexError_ as exc:
        log.error("index failure, answering 0xA700: %s", exc)
        return OUT_OF_RESOURCES
    except Exception:  # a handler must never raise into pynetdicom
        log.exception("unexpected failure while storing; answering 0xA700")
        return OUT_OF_RESOURCES


def _store_and_index(event: Any, ctx: ReceiverContext, meta: InstanceMeta, target: Path, encoded: bytes) -> int:
    """Write the file and commit its row at the same time; answer success only when both are durable.

    The row goes to the group committer first, so the database's commit (and its fsync) runs while
    this thread writes and fsyncs the file; on one association that halves the wait per slice. If
    the file cannot be stored, the row is withdrawn. Should the process die between the two, a
    row may point to a file that never arrived: that instance was never acknowledged, and the
    worker leaves such rows out (see ``worker.existing_paths``).

    An instance received again keeps its first copy (a resend must not change what was
    acknowledged) and now belongs to the association that brought it. One received again under
    another series is refused with 0x0111 (duplicate SOP Instance) and its file removed: the index
    keeps the first series, and no file lies in the store that the index does not know.
    """
    association_id = ctx.associations.get(id(event.assoc))
    # the path follows from the UIDs: only when a file is already there can it be a duplicate
    # of the same series, and only then is the index asked before writing
    if target.exists() and index.reattach_instance(ctx.factory, meta.sop_uid, association_id) is not None:
        log.info("duplicate instance kept as first received; it now belongs to association %s", association_id)
        log.debug("duplicate SOP Instance UID %s", meta.sop_uid)
        return SUCCESS
    # the file is the File Meta group followed by the dataset exactly as the sender encoded it
    parts = (file_header(meta.sop_class_uid, meta.sop_uid, meta.transfer_syntax_uid), encoded)
    size = sum(len(part) for part in parts)
    ctx.store.check_room(size)
    pending = ctx.committer.submit(StoredInstance(meta, str(target), size, association_id))
    try:
        ctx.store.store(parts, target)
    except StorageError:
        _withdraw(ctx, pending, meta.sop_uid)
        raise
    try:
        new = ctx.committer.wait(pending)
    except IndexError_:
        # the row is the acknowledgement; without it the file must not linger half-owned
        target.unlink(missing_ok=True)
        raise
    if not new:
        return _known_elsewhere(ctx, meta, target, association_id)
    return SUCCESS


def _known_elsewhere(ctx: ReceiverContext, meta: InstanceMeta, target: Path, association_id: int | None) -> int:
    """The SOP Instance UID was indexed although its file was not at ``target``: either the row of a
    copy whose file never arrived (the file just written completes it) or an instance of another
    series (the new file is removed and the instance refused)."""
    indexed = index.reattach_instance(ctx.factory, meta.sop_uid, association_id) \
        if index.indexed_path(ctx.factory, meta.sop_uid) == str(target) else None
    if indexed is not None:
        log.info("a received instance completed an index row whose file had never arrived")
        return SUCCESS
    target.unlink(missing_ok=True)
    try:
        target.parent.rmdir()  # the folder made for it, when nothing else of that series is there
    except OSError:
        pass
    log.warning("refused an instance from a sender: its SOP Instance UID is already stored under another series "
                "(status 0x%04X)", DUPLICATE_SOP_INSTANCE)
    log.debug("SOP Instance UID %s received again under series %s", meta.sop_uid, meta.series_uid)
    return DUPLICATE_SOP_INSTANCE


def _withdraw(ctx: ReceiverContext, pending: Any, sop_uid: str) -> None:
    try:
        committed = ctx.committer.wait(pending)
    except IndexError_:  # the row's own commit failed too (a full disk fails both): nothing to withdraw
        return
    if not committed:
        return
    try:
        index.withdraw_instance(ctx.factory, sop_uid)
    except IndexError_ as exc:  # the row stays; the worker skips rows whose file is missing
        log.error("could not withdraw the index row of an instance that was not stored: %s", exc)


def handle_echo(event: Any) -> int:
    return SUCCESS


def _calling(event: Any) -> str:
    try:
        return str(event.assoc.requestor.ae_title)
    except AttributeError:
        return "?"


def handle_conn_open(event: Any, ctx: ReceiverContext) -> None:
    """Nagle's algorithm costs 40-90 ms per object on a DICOM association; turn it off. The
    reactor's polling is tuned to the number of open connections (see ``polling``)."""
    try:
        sock = event.assoc.dul.socket.socket
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:
        log.debug("could not set TCP_NODELAY: %s", exc)
    try:
        ctx.polling.opened(event.assoc)
    except Exception:  # a handler must never raise into pynetdicom
        log.exception("could not tune the association's polling")


def handle_accepted(event: Any, ctx: ReceiverContext) -> None:
    try:
        peer = f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"
        row = index.open_association(ctx.factory, _calling(event), peer)
        with ctx.lock:
            ctx.associations[id(event.assoc)] = row
        log.info("association accepted from %s (%s)", _calling(event), peer)
    except Exception:
        log.exception("could not record an accepted association")


def _close(event: Any, ctx: ReceiverContext, released: bool) -> None:
    try:
        ctx.polling.closed(event.assoc)
    except Exception:
        log.exception("could not retune polling after an association ended")
    with ctx.lock:
        row = ctx.associations.pop(id(event.assoc), None)
    if row is None:
        return
    try:
        index.close_association(ctx.factory, row, released)
    except Exception:
        log.exception("could not record the end of an association")
    log.info("association from %s %s", _calling(event), "released" if released else "aborted or dropped")


def handle_released(event: Any, ctx: ReceiverContext) -> None:
    _close(event, ctx, released=True)


def handle_aborted(event: Any, ctx: ReceiverContext) -> None:
    _close(event, ctx, released=False)
