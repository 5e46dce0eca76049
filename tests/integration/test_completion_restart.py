"""A listener killed (kill -9) while an association was sending: after the restart that association
is found open, closed as not released, and never counts as released for the series it carried. A
sender that then re-sends the whole series gets one job, of the whole series."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.tables import Association, Instance, Job
from tests.conftest import REPO, free_port
from tests.e2e import node_process as npx
from tests.peers import store_series

QUIET = 8.0  # longer than a restart on a busy machine, so the first check below sees no fallback yet


@dataclass
class NoPacs:
    """A destination nothing listens on: the listener only enqueues, it never sends."""

    aet: str
    dicom_port: int


@dataclass
class Restarted:
    node: npx.NodeProcess
    factory: sessionmaker[Session]
    started: float

    def jobs(self) -> list[Job]:
        with self.factory() as s:
            return list(s.scalars(select(Job).order_by(Job.id)))

    def wait_jobs(self, n: int, timeout: float) -> list[Job]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.jobs()
            if len(found) >= n:
                return found
            time.sleep(0.2)
        pytest.fail(f"fewer than {n} job(s) after {timeout} s:\n{self.node.log()[-3000:]}")


@pytest.fixture()
def killed_mid_receive(tmp_path: Path, nsclc_ct_files: list[Path],
                       monkeypatch: pytest.MonkeyPatch) -> Iterator[Restarted]:
    """10 of the slices 50-69 sent, the listener killed with the association open, then started again."""
    config = npx.write_config(tmp_path, NoPacs("NOPACS", free_port()), quiet_seconds=QUIET, settle_seconds=0.3,
                              after_release_seconds=0.5, sweep_interval_seconds=0.2)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    first = npx.start(config, "serve", "--no-worker")
    restarted = None
    try:
        npx.wait_listening(first)
        ae = AE(ae_title="CTSCANNER")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", first.port, ae_title="DICOMNODE")
        assert assoc.is_established
        for path in nsclc_ct_files[50:60]:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
        first.stop(signal.SIGKILL)
        assoc.abort()
        restarted = npx.start(config, "serve", "--no-worker")
        npx.wait_listening(restarted)
        factory = npx.index_of(config)
        try:
            yield Restarted(restarted, factory, time.monotonic())
        finally:
            factory.kw["bind"].dispose()
        assert "1 association(s) were open when the listener last stopped" in restarted.log()
    finally:
        first.stop()
        if restarted is not None:
            restarted.stop()


def test_an_association_open_when_the_listener_died_is_not_counted_released(killed_mid_receive: Restarted) -> None:
    node = killed_mid_receive
    time.sleep(1.5)  # settle and after_release are long past: a released series would be dispatched
    assert node.jobs() == []
    with node.factory() as s:
        (row,) = s.scalars(select(Association).join(Instance, Instance.association_id == Association.id)
                           .distinct()).all()  # the probes of wait_listening carried nothing
    assert row.closed_at is not None and row.released is False
    (job,) = node.wait_jobs(1, timeout=QUIET + 10)  # the quiet period runs from the last instance, before the kill
    assert (job.instance_count, job.completion_fallback) == (10, True)
    assert "1 association aborted or dropped" in job.completion_reason


def test_the_whole_series_resent_after_the_restart_is_one_job_of_the_whole_series(
        killed_mid_receive: Restarted, nsclc_ct_files: list[Path]) -> None:
    node = killed_mid_receive
    store_series(node.node.port, nsclc_ct_files[50:70])  # from the first slice again, then released
    (job,) = node.wait_jobs(1, timeout=QUIET)
    assert (job.instance_count, job.completion_fallback) == (20, False)
    assert job.completion_reason == "association released, evenly spaced stack of 20"
    time.sleep(max(0.0, node.started + QUIET - time.monotonic()) + 0.5)  # past the cut part's quiet period
    assert len(node.jobs()) == 1
