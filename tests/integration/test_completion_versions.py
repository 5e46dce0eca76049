"""A series that grew after its outputs were delivered: the new job supersedes the old one on both
rows, and its outputs reach the PACS (dcmtk's storescp) as a new version that says what it replaces."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicom_node.db import jobs
from dicom_node.db.engine import open_index
from dicom_node.db.tables import DeliveryStatus, Job, JobStatus
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from dicom_node.scheduler import sweep
from dicom_node.settings import Settings
from dicom_node.worker import Worker
from tests.conftest import free_port, make_settings
from tests.peers import require_tool, store_series


@pytest.fixture()
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk's storescp as the PACS, writing what it receives into a folder."""
    folder = tmp_path / "pacs"
    folder.mkdir()
    port = free_port()
    proc = subprocess.Popen([require_tool("storescp"), "-od", str(folder), "+xa", "-aet", "PACS", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        assert proc.poll() is None, "storescp exited at start"
        yield port, folder
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _sweep_until(settings: Settings, n: int) -> list[Job]:
    factory = open_index(settings.node.database_url)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            sweep(settings, factory)
            with factory() as s:
                found = list(s.scalars(select(Job).order_by(Job.id)))
            if len(found) >= n:
                return found
            time.sleep(0.1)
    finally:
        factory.kw["bind"].dispose()
    pytest.fail(f"fewer than {n} jobs")


def _run_and_deliver(worker: Worker, job_id: int) -> None:
    assert worker.run_once()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with worker.factory() as s:
            rows = jobs.deliveries_of(s, job_id)
        if rows and all(r.status == DeliveryStatus.SENT for r in rows):
            return
        worker.deliver_due()
        time.sleep(0.2)
    pytest.fail(f"job {job_id} was not delivered: {[(r.kind, r.status, r.last_error) for r in rows]}")


def _received(folder: Path) -> dict[str, Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in folder.iterdir() if p.is_file())}


def test_late_instances_after_delivery_make_a_new_version_that_names_what_it_replaces(
        tmp_path: Path, nsclc_ct_files: list[Path], storescp: tuple[int, Path]) -> None:
    port, folder = storescp
    settings = make_settings(
        tmp_path, completion={"quiet_seconds": 5, "settle_seconds": 0.2, "after_release_seconds": 0.3},
        destinations=[{"name": "PACS", "ae_title": "PACS", "host": "127.0.0.1", "port": port, "max_age_hours": 1,
                       "retry_backoff_seconds": 1, "timeout_seconds": 10}],
        routing={"rules": [{"name": "ct", "model": "builtin", "destinations": ["PACS"],
                            "outputs": ["SEG", "RTSTRUCT", "SR"], "match": {"Modality": "CT"}}]})
    factory = open_index(settings.node.database_url)
    ctx = ReceiverContext(factory=factory, store=InstanceStore(settings.node.storage_dir, 1))
    listener = start_listener(settings.node, ctx)
    worker = Worker(settings, factory, "test-worker")
    try:
        store_series(settings.node.port, nsclc_ct_files[60:72])
        (first,) = _sweep_until(settings, 1)
        _run_and_deliver(worker, first.id)
        v1 = _received(folder)
        store_series(settings.node.port, nsclc_ct_files[72:76])  # the rest of the series, late
        old, new = _sweep_until(settings, 2)
        assert (old.status, old.superseded_by) == (JobStatus.DONE, new.id)  # delivered: it stays done
        assert (new.supersedes, new.instance_count) == (old.id, 16)
        _run_and_deliver(worker, new.id)
        with factory() as s:
            assert s.get(Job, old.id).status == JobStatus.DONE  # type: ignore[union-attr]
    finally:
        listener.shutdown()
        ctx.close()
        factory.kw["bind"].dispose()

    v2 = {uid: ds for uid, ds in _received(folder).items() if uid not in v1}
    old_by_kind = {str(ds.Modality): ds for ds in v1.values()}
    new_by_kind = {str(ds.Modality): ds for ds in v2.values()}
    assert sorted(old_by_kind) == sorted(new_by_kind) == ["RTSTRUCT", "SEG", "SR"]
    for kind, ds in new_by_kind.items():
        before = old_by_kind[kind]
        assert ds.SeriesInstanceUID != before.SeriesInstanceUID
        assert str(ds.SeriesDescription) == f"{before.SeriesDescription} v2"
    rt, old_rt = new_by_kind["RTSTRUCT"], old_by_kind["RTSTRUCT"]
    assert rt.PredecessorStructureSetSequence[0].ReferencedSOPInstanceUID == old_rt.SOPInstanceUID
    assert f"replaces structure set {old_rt.SOPInstanceUID} of series {old_rt.SeriesInstanceUID}" in \
        rt.StructureSetDescription
    predecessor = new_by_kind["SR"].PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.SeriesInstanceUID == old_by_kind["SR"].SeriesInstanceUID
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old_by_kind["SR"].SOPInstanceUID
    assert str(new_by_kind["SEG"].ContentDescription).startswith("v2, replaces")
