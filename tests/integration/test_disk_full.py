"""A disk that really fills up: the storage folder and the index on a small tmpfs.

The free-disk floor is off (0 MB), so the write itself meets ENOSPC, as on a disk that another
program filled. The sender gets a failure status for what could not be kept; everything answered with
success is on disk and in the index; and once space returns (the tmpfs grows), the resent series is
taken whole."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import func, select

from dicom_node.db.engine import open_index
from dicom_node.db.tables import Instance
from dicom_node.db.tables import Series as SeriesRow
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from tests.conftest import make_settings

OUT_OF_RESOURCES = 0xA700


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs, mounted for the test; the test suite runs as root (scripts/test.sh installs with apt)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    assert os.geteuid() == 0, "this test mounts a tmpfs and needs root, as the test command has"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def _send_all(port: int, files: list[Path]) -> dict[str, int]:
    """Send every file over one association; SOP Instance UID -> the status the node answered."""
    ae = AE(ae_title="CTSCANNER")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    answered: dict[str, int] = {}
    try:
        for path in files:
            ds = pydicom.dcmread(path)
            status = assoc.send_c_store(ds)
            answered[str(ds.SOPInstanceUID)] = int(status.Status) if status else -1
    finally:
        assoc.release()
    return answered


def _echo(port: int) -> int:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def test_a_full_disk_fails_the_sender_keeps_every_acknowledged_instance_and_recovers(
        tmp_path: Path, small_disk: Path, nsclc_ct_files: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path, node={"storage_dir": str(small_disk / "storage"), "min_free_disk_mb": 0,
                                             "database_url": f"sqlite:///{small_disk / 'index.sqlite'}"},
                             housekeeping={"emergency_free_disk_mb": 0})
    factory = open_index(settings.node.database_url)
    store = InstanceStore(settings.node.storage_dir, settings.node.min_free_disk_mb)
    server = start_listener(settings.node, ReceiverContext(factory=factory, store=store))
    try:
        answered = _send_all(settings.node.port, nsclc_ct_files)  # 72 MB of CT onto 24 MB
        stored = {uid for uid, status in answered.items() if status == 0}
        refused = {uid for uid, status in answered.items() if status != 0}
        assert stored and refused, "the disk should have filled part of the way through the series"
        assert {answered[uid] for uid in refused} == {OUT_OF_RESOURCES}
        assert _echo(settings.node.port) == 0  # still serving

        with factory() as session:
            indexed = {row.sop_uid: row.path for row in session.scalars(select(Instance))}
        assert stored <= set(indexed), "every acknowledged instance must be in the index"
        # the index is on the full disk too: the row of an instance whose file could not be written is
        # withdrawn, unless the disk refuses that write as well; such a row has no file, was refused to
        # the sender, is logged, and is completed when the sender sends the instance again
        orphans = set(indexed) - stored
        assert orphans <= refused and not any(Path(indexed[uid]).exists() for uid in orphans)
        if orphans:
            assert "could not withdraw the index row" in caplog.text
        with factory() as session:
            assert session.scalar(select(func.sum(SeriesRow.instance_count))) == len(indexed)
        for uid in stored:  # and every acknowledged file is whole
            assert str(pydicom.dcmread(indexed[uid]).SOPInstanceUID) == uid
        on_disk = [p for p in settings.node.storage_dir.rglob("*.dcm") if ".spool" not in p.parts]
        assert len(on_disk) == len(stored), "no file of a refused instance is left behind"

        subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)  # space returns
        again = _send_all(settings.node.port, nsclc_ct_files)
        assert set(again.values()) == {0}, again
        with factory() as session:
            assert len(session.scalars(select(Instance)).all()) == len(nsclc_ct_files)
            assert session.scalar(select(func.sum(SeriesRow.instance_count))) == len(nsclc_ct_files)
    finally:
        server.shutdown()
        factory.kw["bind"].dispose()
