"""Receiver -> completion sweep -> jobs -> worker, in-process with a real association and SQLite.

Broken series from ../shared/data/odd/dicom2nifti end as failed jobs that name the reason; late
instances start a new job.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.engine import open_index
from dicom_node.db.tables import Job, JobStatus, Series, SeriesState
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from dicom_node.scheduler import sweep
from dicom_node.settings import Settings
from dicom_node.worker import Worker
from tests.conftest import make_settings
from tests.peers import store_series

RULES = {"rules": [{"name": "ct", "model": "builtin", "destinations": [], "outputs": ["SEG", "RTSTRUCT"],
                    "match": {"Modality": "CT"}}]}


@pytest.fixture()
def running(tmp_path: Path) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    settings = make_settings(tmp_path, routing=RULES,
                             completion={"quiet_seconds": 1.5, "settle_seconds": 0.2, "sweep_interval_seconds": 0.2})
    factory = open_index(settings.node.database_url)
    ctx = ReceiverContext(factory=factory, store=InstanceStore(settings.node.storage_dir, 1))
    server = start_listener(settings.node, ctx)
    try:
        yield settings, factory
    finally:
        server.shutdown()
        factory.kw["bind"].dispose()


def _sweep_until_jobs(settings: Settings, factory: sessionmaker[Session], n: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sweep(settings, factory)
        with factory() as s:
            if len(s.scalars(select(Job.id)).all()) >= n:
                return
        time.sleep(0.2)
    pytest.fail(f"fewer than {n} job(s) after {timeout} s")


@pytest.mark.parametrize(
    ("folder", "reason"),
    [
        ("gantrytilting", "tilt"),
        ("notavolume", "position"),
        ("sliceincrement_ge", "spacing"),
        ("sliceincrement_missing_slice", "missing"),
    ],
)
def test_broken_series_end_as_jobs_naming_the_reason(running: tuple[Settings, sessionmaker[Session]],
                                                      shared_data: Path, folder: str, reason: str) -> None:
    settings, factory = running
    files = sorted(p for p in (shared_data / "odd" / "dicom2nifti" / folder).rglob("*") if p.is_file())
    assert files, f"no files in odd/dicom2nifti/{folder}"
    store_series(settings.node.port, files)
    _sweep_until_jobs(settings, factory, 1)
    worker = Worker(settings, factory, "test-worker")
    assert worker.run_once()
    with factory() as s:
        job = s.scalars(select(Job)).one()
    assert job.status == JobStatus.FAILED
    assert job.error_class == "SeriesError"
    assert reason in job.error_message.lower(), job.error_message


def test_late_instances_start_a_new_job(running: tuple[Settings, sessionmaker[Session]], shared_data: Path) -> None:
    settings, factory = running
    files = sorted((shared_data / "ct" / "nsclc_lung1_001" / "ct").glob("*.dcm"))[:6]
    store_series(settings.node.port, files[:5])
    _sweep_until_jobs(settings, factory, 1)
    with factory() as s:
        series = s.scalars(select(Series)).one()
        assert series.state == SeriesState.DISPATCHED and series.dispatched_count == 5
    store_series(settings.node.port, files[5:])
    with factory() as s:
        assert s.scalars(select(Series)).one().state == SeriesState.RECEIVING
    _sweep_until_jobs(settings, factory, 2)
    with factory() as s:
        counts = sorted(j.instance_count for j in s.scalars(select(Job)))
    assert counts == [5, 6]
