"""Durable instance store: write to a spool file, fsync, atomically rename into place, fsync the folder.

Only after ``store`` returns may the receiver commit the index row and answer success.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from dicom_node.errors import StorageError

log = logging.getLogger(__name__)

# UIDs become path components: anything but digits and dots could escape the store.
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and bool(_UID_RE.match(value))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(data: bytes | memoryview, target: Path, spool: Path) -> None:
    """Write ``data`` to ``target`` so that it is whole on disk or absent, never partial."""
    tmp = spool / f"{uuid.uuid4().hex}.part"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot store {target.name}: {exc.strerror or exc}") from exc


class InstanceStore:
    """Files under ``root/<study>/<series>/<sop>.dcm``, spool under ``root/.spool``."""

    def __init__(self, root: Path, min_free_mb: int) -> None:
        self.root = root
        self.spool = root / ".spool"
        self.min_free_bytes = min_free_mb * 1024 * 1024
        try:
            self.spool.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create storage folder {self.spool}: {exc.strerror}") from exc
        # a crash may leave spool files behind; they were never acknowledged
        for stale in self.spool.glob("*.part"):
            stale.unlink(missing_ok=True)

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

    def store(self, data: bytes | memoryview, target: Path) -> int:
        if not self.has_room(len(data)):
            raise StorageError(f"less than {self.min_free_bytes // (1024 * 1024)} MB free under {self.root}")
        write_durably(data, target, self.spool)
        return len(data)
