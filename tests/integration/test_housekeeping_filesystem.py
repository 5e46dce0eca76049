"""Housekeeping on real disks: the emergency clean-up on a 20 MB tmpfs (free space as the kernel reports
it), and retention of a series received over a real association and processed by a real worker."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.db.engine import open_index
from dicom_node.db.tables import Instance, Job, JobStatus, Series, SeriesState, utcnow
from dicom_node.housekeeping import MB, run_housekeeping
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from dicom_node.scheduler import sweep
from dicom_node.worker import Worker
from tests.conftest import make_settings
from tests.housekeeping_helpers import files_under, make_series
from tests.peers import store_series


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs, mounted for the test (needs root: CAP_SYS_ADMIN)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_emergency_on_a_real_small_filesystem_frees_space_and_keeps_undelivered_work(
        tmp_path: Path, small_disk: Path) -> None:
    hk = {"keep_instances_days": 0, "keep_outputs_days": 0, "emergency_free_disk_mb": 8}
    settings = make_settings(tmp_path, node={"storage_dir": str(small_disk / "storage")},
                             worker={"output_dir": str(small_disk / "outputs")}, housekeeping=hk)
    factory = open_index(settings.node.database_url)  # the index is on the other disk
    five_mb = {"instances": 5, "instance_bytes": MB, "output_bytes": 64 * 1024}
    pending = make_series(settings, factory, 1, "pending", age_days=30, **five_mb)
    oldest = make_series(settings, factory, 2, "delivered", age_days=20, **five_mb)
    newer = make_series(settings, factory, 3, "delivered", age_days=10, **five_mb)
    free = shutil.disk_usage(small_disk).free
    assert 3 * MB < free < 8 * MB, free / MB  # 15 MB of series and 0.4 MB of outputs on 20 MB

    dry = run_housekeeping(settings, factory, dry_run=True)
    assert shutil.disk_usage(small_disk).free == free
    report = run_housekeeping(settings, factory)
    assert [(r.kind, r.ident) for r in report.removals] == [(r.kind, r.ident) for r in dry.removals] \
        == [("series", oldest.series_id)]
    assert shutil.disk_usage(small_disk).free >= 8 * MB and report.shortfall == ""
    assert all(p.exists() for m in (pending, newer) for p in m.files)

    # a threshold only the undelivered series' space could meet: everything delivered goes, it stays
    everything = make_settings(tmp_path, node={"storage_dir": str(small_disk / "storage")},
                               worker={"output_dir": str(small_disk / "outputs")},
                               housekeeping={**hk, "emergency_free_disk_mb": 19})
    report = run_housekeeping(everything, factory)
    assert sorted((r.kind, r.ident) for r in report.removals) == sorted(
        [("outputs", oldest.job_id), ("series", newer.series_id), ("outputs", newer.job_id)])
    assert "1 series wait for their jobs or deliveries" in report.shortfall
    assert all(p.exists() for p in pending.files)
    assert pending.output_dir is not None and files_under(pending.output_dir)
    factory.kw["bind"].dispose()


def _instance_files(storage: Path) -> set[Path]:
    return {p for p in files_under(storage) if ".spool" not in p.relative_to(storage).parts}  # not the spool


def test_a_received_and_processed_series_is_removed_after_retention_and_can_be_received_again(
        tmp_path: Path, nsclc_ct_files: list[Path]) -> None:
    rules = {"rules": [{"name": "ct", "model": "builtin", "destinations": [], "outputs": ["SEG"],
                        "match": {"Modality": "CT"}}]}
    settings = make_settings(tmp_path, routing=rules, completion={"quiet_seconds": 1.0, "settle_seconds": 0.2},
                             housekeeping={"keep_instances_days": 7, "keep_outputs_days": 30,
                                           "emergency_free_disk_mb": 0})
    factory = open_index(settings.node.database_url)
    ctx = ReceiverContext(factory=factory, store=InstanceStore(settings.node.storage_dir, 1))
    server = start_listener(settings.node, ctx)
    try:
        files = nsclc_ct_files[:5]
        store_series(settings.node.port, files)
        for _ in range(50):
            if sweep(settings, factory):
                break
            time.sleep(0.2)
        worker = Worker(settings, factory, "test-worker")
        assert worker.run_once()
        with factory() as s:
            job = s.scalars(select(Job)).one()
            assert job.status == JobStatus.DONE, job.error_message
        stored = _instance_files(settings.node.storage_dir)
        assert len(stored) == 5

        assert run_housekeeping(settings, factory).removals == []  # received just now
        report = run_housekeeping(settings, factory, now=utcnow() + timedelta(days=8))
        assert [(r.kind, r.files) for r in report.removals] == [("series", 5)]
        assert not any(p.exists() for p in stored)
        report = run_housekeeping(settings, factory, now=utcnow() + timedelta(days=31))
        assert [(r.kind, r.ident) for r in report.removals] == [("outputs", job.id)]
        assert not (settings.worker.output_dir / f"job-{job.id:06d}").exists()

        store_series(settings.node.port, files[:1])  # the index forgot the purged instances: stored again
        with factory() as s:
            series = s.scalars(select(Series)).one()
            assert series.state == SeriesState.RECEIVING and series.instance_count == 1
            assert series.purged_at is not None
            assert len(s.scalars(select(Instance)).all()) == 1
        assert len(_instance_files(settings.node.storage_dir)) == 1
    finally:
        server.shutdown()
        factory.kw["bind"].dispose()
