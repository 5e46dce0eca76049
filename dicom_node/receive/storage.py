"""Durable instance store: write to a spool file, fsync, atomically rename into place, fsync the folder.

The receiver answers success only after ``store`` has returned and the instance's index row is
committed (the two run at the same time; see ``handlers.handle_store``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import struct
import time
from collections.abc import Sequence
from pathlib import Path

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from dicom_node.durable import fsync_dir
from dicom_node.errors import StorageError
from dicom_node.private_files import PRIVATE_DIR_MODE, make_private_dirs
from dicom_node.receive.spool import (
    SpoolAhead,
    SpoolFile,
    create_spool_file,
    remove_stale,
)

log = logging.getLogger(__name__)

# UIDs become path components: anything but digits and dots could escape the store.
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and bool(_UID_RE.match(value))


def _ui(group_element: bytes, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\0"  # UI values are padded with NUL to an even length
    return group_element + b"UI" + struct.pack("<H", len(value)) + value


def _sh(group_element: bytes, text: str) -> bytes:
    value = text.encode("ascii")
    if len(value) % 2:
        value += b" "
    return group_element + b"SH" + struct.pack("<H", len(value)) + value


def file_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, "DICM" and the File Meta Information group for a received dataset.

    Byte for byte what pynetdicom's ``Event.encoded_dataset()`` puts before the dataset (the same
    elements and implementation identity), built with ``struct`` because pydicom's writer costs
    a noticeable part of the per-slice budget on a single association.
    """
    body = b"".join((
        b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01",  # (0002,0001) version 00 01
        _ui(b"\x02\x00\x02\x00", sop_class_uid),
        _ui(b"\x02\x00\x03\x00", sop_instance_uid),
        _ui(b"\x02\x00\x10\x00", transfer_syntax_uid),
        _ui(b"\x02\x00\x12\x00", PYNETDICOM_IMPLEMENTATION_UID),
        _sh(b"\x02\x00\x13\x00", PYNETDICOM_IMPLEMENTATION_VERSION),
    ))
    group_length = b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(body))
    return b"\0" * 128 + b"DICM" + group_length + body


def _write_all(fd: int, parts: Sequence[bytes | memoryview]) -> None:
    """One writev for all parts (no joined copy of the pixel data); loops on a short write."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def ensure_dir(path: Path) -> None:
    """Create ``path`` and any missing parents durably: each new entry's parent folder is fsync'd,
    so a series folder made for the first instance survives a crash as the instance does."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)  # the CT is readable by the node's user only
        except FileExistsError:  # another association made it meanwhile
            continue
        fsync_dir(folder.parent)


def write_durably(parts: Sequence[bytes | memoryview], target: Path, spool: Path,
                  parent_exists: bool = False, spool_file: SpoolFile | None = None) -> None:
    """Write the concatenated ``parts`` to ``target`` so it is whole on disk or absent, never partial.

    ``parent_exists`` skips making the target's folder (the caller knows it made it before); should
    it have been removed since, it is made again. ``spool_file`` is an empty spool file made ahead
    (see ``spool.SpoolAhead``); without one, one is made in ``spool`` now.
    """
    if spool_file is None:
        spool_file = create_spool_file(spool)
    fd, tmp = spool_file.fd, spool_file.path
    try:
        try:
            _write_all(fd, parts)
            os.fsync(fd)
        finally:
            os.close(fd)
        if not parent_exists:
            ensure_dir(target.parent)
        try:
            os.replace(tmp, target)
        except FileNotFoundError:
            if not parent_exists:
                raise
            ensure_dir(target.parent)
            os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot store {target.name}: {exc.strerror or exc}") from exc


# free space is read again after this much data or time (statvfs per instance costs more than it tells)
ROOM_RECHECK_BYTES = 64 * 1024 * 1024
ROOM_RECHECK_SECONDS = 2.0
_KNOWN_FOLDERS_MAX = 10000


class InstanceStore:
    """Files under ``root/<study>/<series>/<sop>.dcm``, spool under ``root/.spool``.

    The free-space floor (``min_free_mb``) is checked before every instance against a reading of the
    disk that is at most ``ROOM_RECHECK_SECONDS`` old and counts what was stored since; a failed
    check is never cached.
    """

    def __init__(self, root: Path, min_free_mb: int) -> None:
        self.root = root
        self.spool = root / ".spool"
        self.min_free_bytes = min_free_mb * 1024 * 1024
        self._room_read_at = float("-inf")
        self._stored_since_read = 0
        self._folders: set[Path] = set()
        try:
            make_private_dirs(self.spool)
        except OSError as exc:
            raise StorageError(f"cannot create storage folder {self.spool}: {exc.strerror}") from exc
        # a crash may leave spool files behind; they were never acknowledged
        stale = remove_stale(self.spool)
        if stale:
            log.info("removed %d spool file(s) left by a process that stopped", stale)
        self._spool_ahead = SpoolAhead(self.spool)

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        for name, uid in (("Study", study_uid), ("Series", series_uid), ("SOP", sop_uid)):
            if not is_valid_uid(uid):
                raise StorageError(f"invalid {name} Instance UID {uid!r}")
        return self.root / study_uid / series_uid / f"{sop_uid}.dcm"

    def has_room(self, incoming: int = 0) -> bool:
        try:
            free = shutil.disk_usage(self.root).free
        except OSError:
            return False
        return free - incoming >= self.min_free_bytes

    def check_room(self, size: int) -> None:
        now = time.monotonic()
        pending = self._stored_since_read + size
        if now - self._room_read_at < ROOM_RECHECK_SECONDS and pending < ROOM_RECHECK_BYTES:
            self._stored_since_read = pending
            return
        if not self.has_room(size):
            self._room_read_at = float("-inf")
            raise StorageError(f"less than {self.min_free_bytes // (1024 * 1024)} MB free under {self.root}")
        self._room_read_at, self._stored_since_read = now, size

    def store(self, parts: Sequence[bytes | memoryview], target: Path) -> int:
        """Store the concatenation of ``parts`` durably at ``target``; returns its size in bytes.

        The caller checks the free space first (``check_room``), before it commits to anything else."""
        size = sum(len(p) for p in parts)
        folder = target.parent
        write_durably(parts, target, self.spool, parent_exists=folder in self._folders,
                      spool_file=self._spool_ahead.take())
        if len(self._folders) >= _KNOWN_FOLDERS_MAX:  # bounded: only the series being received matter
            self._folders.clear()
        self._folders.add(folder)
        return size

    def close(self) -> None:
        """Remove the spool files made ahead; ``store`` still works afterwards, making its own."""
        self._spool_ahead.close()
