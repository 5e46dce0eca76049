"""Nothing the node writes is readable by another user of the host, whatever the umask.

A series goes over a real association into the store and the SQLite index, a job turns it into
every kind of output; afterwards every file under the storage and output folders (and the index
with its -wal and -shm) is 0600 and every folder 0700, with the umask at the usual 022 (which
would give 0644 and 0755).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.engine import open_index
from dicom_node.db.tables import Instance, Job, JobStatus
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from dicom_node.scheduler import sweep
from dicom_node.settings import OUTPUT_KINDS, Settings
from dicom_node.worker import Worker
from tests.conftest import make_settings

SLICES = 40
RULES = {"rules": [{"name": "ct", "model": "builtin", "destinations": [], "outputs": list(OUTPUT_KINDS),
                    "match": {"Modality": "CT"}}]}


@pytest.fixture()
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture()
def running(tmp_path: Path, umask_022: None) -> Iterator[tuple[Settings, sessionmaker[Session], InstanceStore]]:
    settings = make_settings(tmp_path, routing=RULES,
                             completion={"quiet_seconds": 1.0, "settle_seconds": 0.2, "sweep_interval_seconds": 0.2})
    factory = open_index(settings.node.database_url)
    store = InstanceStore(settings.node.storage_dir, 1)
    server = start_listener(settings.node, ReceiverContext(factory=factory, store=store))
    try:
        yield settings, factory, store
    finally:
        server.shutdown()
        store.close()
        factory.kw["bind"].dispose()


def _send(port: int, files: list[Path]) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        for path in files:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
    finally:
        assoc.release()


def _modes_under(root: Path) -> tuple[dict[str, str], dict[str, str], int]:
    """(files whose mode is not 0600, folders whose mode is not 0700, entries seen); root included."""
    bad_files: dict[str, str] = {}
    bad_dirs: dict[str, str] = {}
    seen = 0
    for entry in [root, *root.rglob("*")]:
        st = entry.lstat()
        seen += 1
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            if mode != 0o700:
                bad_dirs[str(entry.relative_to(root))] = oct(mode)
        elif mode != 0o600:
            bad_files[str(entry.relative_to(root))] = oct(mode)
    return bad_files, bad_dirs, seen


def _assert_private(root: Path) -> int:
    bad_files, bad_dirs, seen = _modes_under(root)
    assert bad_files == {}, f"files under {root} readable beyond their owner"
    assert bad_dirs == {}, f"folders under {root} open beyond their owner"
    return seen


@pytest.fixture(scope="module")
def ct_files(shared_data: Path) -> list[Path]:
    files = sorted((shared_data / "ct" / "nsclc_lung1_001" / "ct").glob("*.dcm"))
    assert len(files) == 134
    return files[40:40 + SLICES]  # the chest, where the built-in segmenter finds lungs and body


def test_a_received_series_and_the_index_are_private(running: tuple[Settings, sessionmaker[Session], InstanceStore],
                                                     ct_files: list[Path]) -> None:
    settings, factory, _store = running
    _send(settings.node.port, ct_files)
    with factory() as s:
        paths = [Path(p) for p in s.scalars(select(Instance.path))]
    assert len(paths) == SLICES
    storage = settings.node.storage_dir
    assert all(p.is_relative_to(storage) and p.is_file() for p in paths)
    # the stored instances, their study and series folders, the spool and its files made ahead
    assert _assert_private(storage) >= SLICES + 4
    index = Path(str(factory.kw["bind"].url.database))
    wal = index.with_name(index.name + "-wal")
    shm = index.with_name(index.name + "-shm")
    assert wal.exists() and shm.exists()  # the engine is still open: WAL mode keeps both
    for path in (index, wal, shm):
        assert oct(stat.S_IMODE(path.stat().st_mode)) == oct(0o600), path.name


def test_a_jobs_outputs_are_private(running: tuple[Settings, sessionmaker[Session], InstanceStore],
                                    ct_files: list[Path]) -> None:
    settings, factory, _store = running
    _send(settings.node.port, ct_files)
    deadline = time.monotonic() + 20
    while True:
        sweep(settings, factory)
        with factory() as s:
            if s.scalars(select(Job.id)).first() is not None:
                break
        assert time.monotonic() < deadline, "the series did not become a job"
        time.sleep(0.2)
    assert Worker(settings, factory, "test-worker").run_once()
    with factory() as s:
        job = s.scalars(select(Job)).one()
    assert job.status == JobStatus.DONE, job.error_message  # no destinations: done once written
    output_dir = settings.worker.output_dir
    names = {p.name for p in output_dir.rglob("*") if p.is_file()}
    # every writer ran: the DICOM objects, the PNG and the label map files beside them
    assert {"seg.dcm", "rtstruct.dcm", "sr.dcm", "preview.dcm", "preview.png", "labels.nii.gz",
            "structures.json"} <= names, names
    _assert_private(output_dir)
    _assert_private(settings.node.storage_dir)
