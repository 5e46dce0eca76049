"""A listener killed (kill -9) while an association was sending: after the restart that association
is found open, closed as not released, and never counts as released for the series it carried."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select

from dicom_node.db.tables import Association, Instance, Job
from tests.conftest import REPO, free_port
from tests.e2e import node_process as npx

QUIET = 4.0


@dataclass
class NoPacs:
    """A destination nothing listens on: the listener only enqueues, it never sends."""

    aet: str
    dicom_port: int


def test_an_association_open_when_the_listener_died_is_not_counted_released(
        tmp_path: Path, nsclc_ct_files: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    config = npx.write_config(tmp_path, NoPacs("NOPACS", free_port()), quiet_seconds=QUIET, settle_seconds=0.3,
                              after_release_seconds=0.5, sweep_interval_seconds=0.2)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    node = npx.start(config, "serve", "--no-worker")
    restarted = None
    try:
        npx.wait_listening(node)
        ae = AE(ae_title="CTSCANNER")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
        assert assoc.is_established
        for path in nsclc_ct_files[50:60]:  # ten contiguous slices, then the listener dies
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
        node.stop(signal.SIGKILL)
        assoc.abort()
        restarted = npx.start(config, "serve", "--no-worker")
        npx.wait_listening(restarted)
        started = time.monotonic()
        factory = npx.index_of(config)
        try:
            time.sleep(1.5)  # settle and after_release are long past: a released series would be dispatched
            with factory() as s:
                assert s.scalars(select(Job)).all() == []
                (row,) = s.scalars(select(Association).join(Instance, Instance.association_id == Association.id)
                                   .distinct()).all()  # the probes of wait_listening carried nothing
                assert row.closed_at is not None and row.released is False
            deadline = started + QUIET + 10
            job = None
            while job is None and time.monotonic() < deadline:
                with factory() as s:
                    job = s.scalars(select(Job)).first()
                time.sleep(0.2)
            assert job is not None, restarted.log()[-3000:]
            assert (job.instance_count, job.completion_fallback) == (10, True)
            assert "1 association aborted or dropped" in job.completion_reason
        finally:
            factory.kw["bind"].dispose()
        assert "1 association(s) were open when the listener last stopped" in restarted.log()
    finally:
        node.stop()
        if restarted is not None:
            restarted.stop()
