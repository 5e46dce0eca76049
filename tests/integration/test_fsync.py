"""A C-STORE is answered success only after the instance file and its folder entry are on disk.

``os.fsync`` and ``os.replace`` are wrapped with recorders that note which inode each fsync was
given and which rename happened, in order. When the SCU has the success status in hand, the
record must already hold: an fsync of the file that now is the stored instance (same inode), then
its rename into place, then an fsync of the series folder. Without any one of the three a crash
right after the answer could lose an instance the sender was told is stored.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from dicom_node.db.engine import open_index
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from tests.conftest import make_settings


@dataclass(frozen=True)
class Fsync:
    inode: tuple[int, int]  # (st_dev, st_ino) of the descriptor given to os.fsync
    is_dir: bool


@dataclass(frozen=True)
class Rename:
    target: Path


class DiskCalls:
    """The fsyncs and renames made by any thread of this process, in the order they returned."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Fsync | Rename] = []

    def wrap_fsync(self, real: Callable[[int], None]) -> Callable[[int], None]:
        def fsync(fd: int) -> None:
            real(fd)
            st = os.fstat(fd)
            with self._lock:
                self._events.append(Fsync((st.st_dev, st.st_ino), stat.S_ISDIR(st.st_mode)))
        return fsync

    def wrap_replace(self, real: Callable[..., None]) -> Callable[..., None]:
        def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str], **kwargs: object) -> None:
            real(src, dst, **kwargs)
            with self._lock:
                self._events.append(Rename(Path(dst)))
        return replace

    def snapshot(self) -> list[Fsync | Rename]:
        with self._lock:
            return list(self._events)


@pytest.fixture()
def disk_calls(monkeypatch: pytest.MonkeyPatch) -> DiskCalls:
    calls = DiskCalls()
    monkeypatch.setattr(os, "fsync", calls.wrap_fsync(os.fsync))
    monkeypatch.setattr(os, "replace", calls.wrap_replace(os.replace))
    return calls


@pytest.fixture()
def listener(tmp_path: Path) -> Iterator[tuple[int, InstanceStore]]:
    settings = make_settings(tmp_path)
    factory = open_index(settings.node.database_url)
    store = InstanceStore(settings.node.storage_dir, 1)
    server = start_listener(settings.node, ReceiverContext(factory=factory, store=store))
    try:
        yield settings.node.port, store
    finally:
        server.shutdown()
        store.close()
        factory.kw["bind"].dispose()


def _inode(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _index_of(events: list[Fsync | Rename], wanted: Fsync | Rename, after: int = -1) -> int:
    for k in range(after + 1, len(events)):
        if events[k] == wanted:
            return k
    return -1


def test_the_file_and_its_folder_are_fsynced_before_success_is_answered(
        listener: tuple[int, InstanceStore], disk_calls: DiskCalls, shared_data: Path) -> None:
    port, store = listener
    files = sorted((shared_data / "ct" / "nsclc_lung1_001" / "ct").glob("*.dcm"))[:2]
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        # the first instance makes its study and series folders, the second finds them made
        for path in files:
            ds = pydicom.dcmread(path)
            status = assoc.send_c_store(ds)
            events = disk_calls.snapshot()  # what had happened when the answer arrived
            assert status.Status == 0
            target = store.path_for(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
            file_synced = _index_of(events, Fsync(_inode(target), is_dir=False))
            assert file_synced >= 0, "the instance file was not fsynced before success was answered"
            renamed = _index_of(events, Rename(target), after=file_synced)
            assert renamed >= 0, "the instance was not renamed into place after its fsync"
            folder_synced = _index_of(events, Fsync(_inode(target.parent), is_dir=True), after=renamed)
            assert folder_synced >= 0, "the series folder was not fsynced after the rename"
    finally:
        assoc.release()
