"""``dicom-node send``, ``deliveries``, ``retry`` and ``jobs`` as a user runs them, on a real index and
a real Storage SCP that keeps every SOP Instance UID it receives."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from sqlalchemy import select

from dicom_node.db import deliveries, jobs
from dicom_node.db.tables import Delivery, DeliveryStatus, Job, JobStatus
from dicom_node.delivery import DeliveryLoop
from dicom_node.settings import load_settings
from tests.delivery_helpers import job_with_deliveries, sop_uids_and_paths
from tests.e2e.node_process import index_of, write_config
from tests.peers import RecordingScp


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicom_node.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120)


def _job_with_a_dead_delivery(config: Path, files: list[Path]) -> int:
    factory = index_of(config)
    job_id = job_with_deliveries(load_settings(config), factory, sop_uids_and_paths(files))
    with factory() as s:
        (row,) = jobs.deliveries_of(s, job_id)
    deliveries.mark_dead(factory, row.id, "PACS (RECORDER@127.0.0.1:9) cannot be reached: Connection refused")
    assert jobs.settle_job(factory, job_id) == JobStatus.FAILED
    factory.kw["bind"].dispose()
    return job_id


def test_deliveries_lists_a_dead_delivery_and_retry_queues_it_until_it_is_sent(
        tmp_path: Path, nsclc_ct_files: list[Path]) -> None:
    scp = RecordingScp()
    try:
        config = write_config(tmp_path, SimpleNamespace(aet=scp.ae_title, dicom_port=scp.port))
        job_id = _job_with_a_dead_delivery(config, nsclc_ct_files[:1])
        (uid, _path), = sop_uids_and_paths(nsclc_ct_files[:1])

        listed = _cli(config, "deliveries", "--job", str(job_id), "--state", "dead")
        assert listed.returncode == 0, listed.stderr
        header, line = listed.stdout.splitlines()
        assert header.split()[:7] == ["id", "job", "destination", "object", "state", "tries", "age"]
        assert line.split()[1:6] == [str(job_id), "PACS", "CT", "dead", "1"]
        assert line.split()[7] == "-"  # no next try
        assert line.endswith(f"{uid}  PACS (RECORDER@127.0.0.1:9) cannot be reached: Connection refused")
        assert _cli(config, "deliveries", "--state", "sent").stdout.splitlines()[1:] == []
        shown = _cli(config, "jobs").stdout
        assert "0/1 delivered, 1 dead; DeliveryDead: CT to PACS: dead after 1 attempt(s)" in shown

        retried = _cli(config, "retry", str(job_id))
        assert retried.returncode == 0, retried.stderr
        assert retried.stdout.strip() == f"job {job_id}: 1 dead delivery queued again; job delivering"
        again = _cli(config, "retry", str(job_id))
        assert again.returncode == 1
        assert again.stdout.strip() == f"nothing to retry: job {job_id} has no dead delivery and has not failed"

        factory = index_of(config)
        with factory() as s:
            job = s.get(Job, job_id)
            (row,) = jobs.deliveries_of(s, job_id)
        assert job is not None and (job.status, job.error_class) == (JobStatus.DELIVERING, "")
        assert row.status == DeliveryStatus.PENDING
        assert DeliveryLoop(load_settings(config), factory, "worker").deliver_due() == 1
        with factory() as s:
            job = s.get(Job, job_id)
        assert job is not None and job.status == JobStatus.DONE
        assert scp.received == [uid]
        factory.kw["bind"].dispose()
    finally:
        scp.stop()


def test_a_manual_send_is_recorded_and_delivers_the_jobs_dead_delivery_of_that_object(
        tmp_path: Path, nsclc_ct_files: list[Path]) -> None:
    scp = RecordingScp()
    try:
        config = write_config(tmp_path, SimpleNamespace(aet=scp.ae_title, dicom_port=scp.port))
        job_folder = tmp_path / "outputs" / "job-000001"
        job_folder.mkdir(parents=True)
        sent = shutil.copy(nsclc_ct_files[0], job_folder / "ct.dcm")
        (job_folder / "structures.json").write_text("{}")  # not DICOM: skipped
        job_id = _job_with_a_dead_delivery(config, [Path(sent)])

        proc = _cli(config, "send", str(job_folder), "PACS")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"1 sent, 0 failed; delivered for job(s) {job_id}"
        factory = index_of(config)
        with factory() as s:
            manual, job_row = s.scalars(select(Delivery).order_by(Delivery.job_id.is_(None).desc())).all()
            job = s.get(Job, job_id)
        assert (manual.job_id, manual.status, manual.attempts, manual.kind) == (None, DeliveryStatus.SENT, 1, "CT")
        assert manual.sop_uid == job_row.sop_uid and manual.path == str(Path(sent).resolve())
        assert job_row.status == DeliveryStatus.SENT
        assert job is not None and job.status == JobStatus.DONE
        assert len(scp.received) == 1
        factory.kw["bind"].dispose()
    finally:
        scp.stop()


def test_a_failed_manual_send_is_dead_and_retry_failed_hands_it_and_a_failed_job_to_the_workers(
        tmp_path: Path, nsclc_ct_files: list[Path]) -> None:
    scp = RecordingScp()
    scp.stop()  # the PACS is down while the user sends
    config = write_config(tmp_path, SimpleNamespace(aet=scp.ae_title, dicom_port=scp.port))
    proc = _cli(config, "send", str(nsclc_ct_files[0]), "PACS")
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-1] == "0 sent, 1 failed"
    factory = index_of(config)
    with factory() as s:
        (manual,) = s.scalars(select(Delivery)).all()
    assert manual.status == DeliveryStatus.DEAD and manual.last_error.startswith("manual send failed: PACS ")
    job_id = job_with_deliveries(load_settings(config), factory, [])
    jobs.finish(factory, job_id, JobStatus.FAILED, error=ValueError("segmentation failed"))

    retried = _cli(config, "retry", "--failed")
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.splitlines() == [f"job {job_id}: queued again (its attempts start from 0)",
                                           "1 manual delivery queued again"]
    with factory() as s:
        job = s.get(Job, job_id)
    assert job is not None and (job.status, job.attempts, job.error_class) == (JobStatus.QUEUED, 0, "")
    back_up = RecordingScp(port=scp.port)  # the PACS is back: the worker sends it to the configured address
    try:
        assert DeliveryLoop(load_settings(config), factory, "worker").deliver_due() == 1
        assert back_up.received == [sop_uids_and_paths(nsclc_ct_files[:1])[0][0]]
    finally:
        back_up.stop()
        factory.kw["bind"].dispose()
