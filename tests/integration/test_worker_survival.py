"""The worker outlives its faults: a destination that hangs holds up no segmentation, and a database
that fails under it is logged and waited out. Real listener, association, SQLite and built-in segmenter."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import jobs
from dicom_node.db.engine import open_index
from dicom_node.db.tables import Delivery, Job, JobStatus
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from dicom_node.scheduler import sweep
from dicom_node.settings import Settings
from dicom_node.worker import Worker
from tests.conftest import make_settings
from tests.delivery_helpers import job_with_deliveries
from tests.peers import store_series


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"not within {timeout} s: {what}")


def _jobs_by_sweep(settings: Settings, factory: sessionmaker[Session], files: list[Path], count: int) -> list[int]:
    listener = start_listener(settings.node, ReceiverContext(factory=factory,
                                                             store=InstanceStore(settings.node.storage_dir, 1)))
    try:
        store_series(settings.node.port, files)
        found: list[int] = []

        def enqueued() -> bool:
            sweep(settings, factory)
            with factory() as s:
                found[:] = s.scalars(select(Job.id).order_by(Job.id)).all()
            return len(found) == count

        _wait(f"{count} jobs", enqueued, 30)
        return found
    finally:
        listener.shutdown()


def test_a_destination_that_hangs_does_not_delay_the_next_jobs_segmentation(tmp_path: Path,
                                                                            shared_data: Path) -> None:
    hanging = socket.socket()  # accepts TCP (the kernel's backlog) and never answers the association
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(8)
    settings = make_settings(
        tmp_path, completion={"quiet_seconds": 1.5, "settle_seconds": 0.2, "sweep_interval_seconds": 0.2},
        destinations=[{"name": "SLOW", "ae_title": "SLOW", "host": "127.0.0.1", "port": hanging.getsockname()[1],
                       "timeout_seconds": 60}],
        routing={"rules": [{"name": "first", "model": "builtin", "outputs": ["SEG"], "destinations": ["SLOW"]},
                           {"name": "second", "model": "builtin", "outputs": ["SEG"], "destinations": []}]})
    factory = open_index(settings.node.database_url)
    files = sorted((shared_data / "ct" / "nsclc_lung1_001" / "ct").glob("*.dcm"))[60:72]
    first, second = _jobs_by_sweep(settings, factory, files, 2)
    worker = Worker(settings, factory, "test-worker")
    thread = threading.Thread(target=worker.run_forever)
    thread.start()
    try:
        def status(job_id: int) -> JobStatus:
            with factory() as s:
                job = s.get(Job, job_id)
                assert job is not None
                return job.status

        # less than the destination's 60 s timeout: a worker sending in its job loop would be waiting still
        _wait("the second job done", lambda: status(second) == JobStatus.DONE, 45)
        with factory() as s:
            (held,) = jobs.deliveries_of(s, first)
        # the first job's SEG is still in its first try (held, not yet failed): nobody waited for it
        assert status(first) == JobStatus.DELIVERING
        assert (held.attempts, held.last_error) == (0, "") and held.lease_owner.startswith("test-worker/")
    finally:
        worker.stop_event.set()
        hanging.close()  # resets the waiting connection: the delivery thread's try ends now
        thread.join(timeout=60)
        factory.kw["bind"].dispose()
    assert not thread.is_alive()


def test_a_database_error_in_either_loop_is_logged_and_survived(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path, destinations=[{"name": "PACS", "ae_title": "PACS", "host": "127.0.0.1",
                                                      "port": 9}],
                             routing={"rules": [{"name": "ct", "model": "builtin", "destinations": ["PACS"]}]})
    factory = open_index(settings.node.database_url)
    worker = Worker(settings, factory, "test-worker")
    thread = threading.Thread(target=worker.run_forever)
    caplog.set_level(logging.INFO)
    thread.start()
    try:
        _wait("the worker polling", lambda: "polling for jobs" in caplog.text, 30)
        with factory.kw["bind"].begin() as conn:  # the tables go away under the running worker
            conn.execute(text("ALTER TABLE deliveries RENAME TO deliveries_away"))
            conn.execute(text("ALTER TABLE jobs RENAME TO jobs_away"))
        _wait("both loops failing", lambda: "worker round failed (2 in a row): database error OperationalError: "
                                            "no such table: jobs" in caplog.text
              and "delivery round failed (2 in a row): database error OperationalError: no such table: deliveries"
              in caplog.text, 30)
        assert thread.is_alive()
        with factory.kw["bind"].begin() as conn:
            conn.execute(text("ALTER TABLE jobs_away RENAME TO jobs"))
            conn.execute(text("ALTER TABLE deliveries_away RENAME TO deliveries"))
        # both loops go on: a job with nowhere to send its object is processed, its delivery dead-lettered
        job_id = job_with_deliveries(settings, factory, [("9.1", "/o/seg.dcm")])
        with factory.begin() as s:
            s.execute(update(Delivery).values(destination="GONE"))

        def failed() -> bool:
            with factory() as s:
                job = s.get(Job, job_id)
                return job is not None and job.status == JobStatus.FAILED

        _wait("the job settled by the delivery thread", failed, 30)
        with factory() as s:
            (row,) = jobs.deliveries_of(s, job_id)
        assert row.last_error == "destination 'GONE' is not in the job's route"
        with factory.begin() as s:  # and the job loop: a queued job without a routed action fails with the reason
            series_id = s.get(Job, job_id).series_id  # type: ignore[union-attr]
            queued = Job(dedup_key="no-action", series_id=series_id, rule_name="ct", model_id="builtin",
                         instance_count=1, action="")
            s.add(queued)
            s.flush()
            queued_id = queued.id

        def routing_failed() -> bool:
            with factory() as s:
                job = s.get(Job, queued_id)
                return job is not None and job.status == JobStatus.FAILED and job.error_class == "RoutingError"

        _wait("the queued job failed by the job loop", routing_failed, 30)
    finally:
        worker.stop_event.set()
        thread.join(timeout=30)
        factory.kw["bind"].dispose()
    assert not thread.is_alive()
