"""The real listener process (``dicom-node serve --no-worker``) receives and dispatches a series
without ever mapping SimpleITK or torch: the imaging stack belongs to the worker process."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select

from dicom_node.db.tables import Job, Series, SeriesState
from tests.conftest import REPO, free_port
from tests.e2e import node_process as npx
from tests.listener_imports import imaging_mappings


@dataclass
class NoPacs:
    """A destination nothing listens on: the listener only enqueues, it never sends."""

    aet: str
    dicom_port: int


def _send(port: int, files: list[Path]) -> None:
    ae = AE(ae_title="CTSCANNER")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        for path in files:
            status = assoc.send_c_store(pydicom.dcmread(path))
            assert status and status.Status == 0x0000
    finally:
        assoc.release()


def _wait_dispatched(node: npx.NodeProcess, timeout: float = 60) -> int:
    """The number of jobs once the completion sweep has dispatched the one series."""
    factory = npx.index_of(node.config)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if node.process.poll() is not None:
                pytest.fail(f"the listener exited:\n{node.log()[-3000:]}")
            with factory() as s:
                states = s.scalars(select(Series.state)).all()
                jobs = len(s.scalars(select(Job.id)).all())
            if states == [SeriesState.DISPATCHED] and jobs:
                return jobs
            time.sleep(0.3)
    finally:
        factory.kw["bind"].dispose()
    pytest.fail(f"the series was not dispatched within {timeout} s:\n{node.log()[-3000:]}")


def test_listener_receives_and_dispatches_without_the_imaging_stack(
        tmp_path: Path, nsclc_ct_files: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    config = npx.write_config(tmp_path, NoPacs("NOPACS", free_port()), quiet_seconds=2, settle_seconds=0.5,
                              sweep_interval_seconds=0.2)
    # the subprocess imports this checkout, whatever is installed in the environment
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    node = npx.start(config, "serve", "--no-worker")
    try:
        npx.wait_listening(node)
        _send(node.port, nsclc_ct_files[:6])
        assert _wait_dispatched(node) == 1
        maps = Path(f"/proc/{node.process.pid}/maps").read_text()
    finally:
        node.stop()
    # the maps are the listener's own: its SQLite index is mapped, the imaging stack is not
    assert "_sqlite3" in maps
    assert imaging_mappings(maps) == [], node.log()[-2000:]
    assert "Traceback" not in node.log()
