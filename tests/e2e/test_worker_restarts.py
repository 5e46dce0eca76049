"""A job that kills its worker ends failed after ``worker.max_attempts``; ``serve`` brings the killed
worker back each time, and SIGTERM still stops everything cleanly.

Real processes: ``dicom-node serve`` (listener, sweep, worker process), a real association, SIGKILL
sent to the worker process while it runs the job.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from dicom_node.db.tables import Job, JobStatus
from tests.e2e.node_process import index_of, start, wait_listening, write_config
from tests.peers import RecordingScp, store_series


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def test_a_job_that_kills_its_worker_fails_after_max_attempts_and_serve_restarts_the_worker(
        tmp_path: Path, nsclc_ct_files: list[Path]) -> None:
    scp = RecordingScp()
    config = write_config(tmp_path, SimpleNamespace(aet=scp.ae_title, dicom_port=scp.port), quiet_seconds=1.5)
    node = start(config, "serve")
    try:
        wait_listening(node)
        store_series(node.port, nsclc_ct_files[60:72])
        factory = index_of(config)
        killed: list[int] = []
        deadline = time.monotonic() + 150
        job: Job | None = None
        while time.monotonic() < deadline:
            with factory() as s:
                job = s.scalars(select(Job)).first()
            if job is not None and job.status == JobStatus.FAILED:
                break
            if job is not None and job.status == JobStatus.RUNNING and job.attempts > len(killed):
                (worker,) = _children(node.process.pid)  # the worker process that claimed the job
                os.kill(worker, signal.SIGKILL)
                killed.append(worker)
            time.sleep(0.05)
        assert job is not None and job.status == JobStatus.FAILED, f"job: {job and job.status}\n{node.log()[-3000:]}"
        assert len(killed) == 3 and job.attempts == 3
        assert job.error_class == "WorkerLost"
        assert job.error_message.startswith("worker died during the job 3 times (last: worker "), job.error_message
        assert scp.received == []  # nothing of a job that never finished was sent

        def restarted() -> bool:  # the third restart took the job back and failed it; its worker lives
            return node.log().count("; starting it again in ") == 3 and len(_children(node.process.pid)) == 1

        while time.monotonic() < deadline and not restarted():
            time.sleep(0.2)
        assert restarted(), node.log()[-3000:]
        for pid, delay in zip(killed, ("1 s", "2 s", "4 s"), strict=True):  # back-off doubles
            assert f"worker process {pid} exited with -9; starting it again in {delay}" in node.log()
        (last_worker,) = _children(node.process.pid)
        node.stop(signal.SIGTERM)
        assert node.process.returncode == 0, node.log()[-3000:]
        assert not Path(f"/proc/{last_worker}").exists() or "zombie" in Path(f"/proc/{last_worker}/status").read_text()
        factory.kw["bind"].dispose()
    finally:
        node.stop()
        scp.stop()
        if node.process.poll() is None:
            pytest.fail("serve did not stop")
