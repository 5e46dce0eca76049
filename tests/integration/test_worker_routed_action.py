"""A queued job runs what was decided when its series was routed, whatever the config says later.

Real association into the listener, real SQLite, the completion sweep, the real worker with the
built-in segmenter on 12 slices of a real CT, and C-STORE peers that only accept their own AE title,
so a delivery that went to another address or AE title than the job's snapshot would be seen.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from alembic import command
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import index, jobs
from dicom_node.db.engine import alembic_config, open_index
from dicom_node.db.index import InstanceMeta
from dicom_node.db.tables import Delivery, DeliveryStatus, Job, JobStatus
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from dicom_node.routing import RoutedAction
from dicom_node.scheduler import sweep
from dicom_node.settings import Settings
from dicom_node.worker import Worker
from tests.conftest import free_port, make_settings
from tests.peers import store_series

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
OUTPUT_CLASSES = (SEG_CLASS, LABELMAP_SEG_CLASS, RTSTRUCT_CLASS, "1.2.840.10008.5.1.4.1.1.88.34",
                  "1.2.840.10008.5.1.4.1.1.7")  # + Comprehensive 3D SR, Secondary Capture


@dataclass
class Peer:
    """A Storage SCP answering only to its AE title; records the SOP instances it stored."""

    ae_title: str
    port: int = field(default_factory=free_port)
    received: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> SOP Class UID
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: Any = None

    def start(self) -> Peer:
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True  # another AE title is rejected: the sender's target is checked too
        for uid in OUTPUT_CLASSES:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)

        def on_store(event: Any) -> int:
            ds = event.dataset
            with self.lock:
                self.received[str(ds.SOPInstanceUID)] = str(ds.SOPClassUID)
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, on_store)])
        return self


def _destination(name: str, peer: Peer, **extra: object) -> dict[str, object]:
    return {"name": name, "ae_title": peer.ae_title, "host": "127.0.0.1", "port": peer.port,
            "retry_backoff_seconds": 1, "timeout_seconds": 10, **extra}


@pytest.fixture()
def peers() -> Iterator[dict[str, Peer]]:
    started = {name: Peer(name).start() for name in ("PACSA", "TPSA", "NEWPACS")}
    try:
        yield started
    finally:
        for peer in started.values():
            peer.server.shutdown()


def _enqueue_by_sweep(settings: Settings, factory: sessionmaker[Session], timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sweep(settings, factory)
        with factory() as s:
            found = s.scalars(select(Job.id)).all()
        if found:
            (job_id,) = found
            return job_id
        time.sleep(0.2)
    pytest.fail(f"no job after {timeout} s")


def test_a_queued_job_runs_its_snapshot_after_the_rule_is_renamed_and_edited(
        tmp_path: Path, shared_data: Path, peers: dict[str, Peer]) -> None:
    at_enqueue = make_settings(
        tmp_path,
        completion={"quiet_seconds": 1.5, "settle_seconds": 0.2, "sweep_interval_seconds": 0.2},
        destinations=[_destination("PACS", peers["PACSA"], accepts_labelmap_seg=True,
                                   seg_transfer_syntaxes=["JPEGLSLossless", "DeflatedExplicitVRLittleEndian"]),
                      _destination("TPS", peers["TPSA"], seg_transfer_syntaxes=["DeflatedExplicitVRLittleEndian"])],
        templates=[{"name": "chest", "include": ["Lung_L", "Lung_R", "SpinalCord"],
                    "rename": {"SpinalCord": "Cord"}}],
        routing={"rules": [{"name": "ct", "model": "builtin", "destinations": ["PACS", "TPS"],
                            "outputs": ["SEG", "RTSTRUCT"], "template": "chest", "seg_type": "LABELMAP",
                            "match": {"Modality": "CT"}}]})
    factory = open_index(at_enqueue.node.database_url)
    listener = start_listener(at_enqueue.node, ReceiverContext(factory=factory,
                                                               store=InstanceStore(at_enqueue.node.storage_dir, 1)))
    try:
        files = sorted((shared_data / "ct" / "nsclc_lung1_001" / "ct").glob("*.dcm"))[60:72]
        store_series(at_enqueue.node.port, files)
        job_id = _enqueue_by_sweep(at_enqueue, factory)
    finally:
        listener.shutdown()

    # while the job is queued: the rule renamed and pointed elsewhere with other outputs, SEG type and
    # template; PACS re-addressed to another peer, TPS gone, the template's names changed
    edited = make_settings(
        tmp_path,
        destinations=[_destination("PACS", peers["NEWPACS"], accepts_labelmap_seg=False),
                      _destination("ARCHIVE", peers["NEWPACS"])],
        templates=[{"name": "chest", "include": ["Lung_L"], "rename": {"Lung_L": "LeftLung"}},
                   {"name": "other", "outputs": ["SR", "PREVIEW"]}],
        routing={"rules": [{"name": "ct-renamed", "model": "builtin", "destinations": ["ARCHIVE"],
                            "outputs": ["SR", "PREVIEW"], "template": "other", "seg_type": "BINARY",
                            "match": {"Modality": "CT"}}]})
    assert edited.node.database_url == at_enqueue.node.database_url
    try:
        worker = Worker(edited, factory, "test-worker")
        assert worker.run_once()
        with factory() as s:
            job = s.get(Job, job_id)
            assert job is not None
            rows = jobs.deliveries_of(s, job_id)
        assert (job.status, job.error_message) == (JobStatus.DONE, "")
        assert (job.rule_name, job.model_id, job.device) == ("ct", "builtin", "cpu")
        assert job.model_version  # recorded when the worker loaded the engine

        out = edited.worker.output_dir / f"job-{job_id:06d}"
        objects = sorted(p.name for p in out.glob("*.dcm"))
        assert objects == ["rtstruct.dcm", "seg-labelmap.dcm", "seg.dcm"], objects  # no SR, no preview
        rtstruct = pydicom.dcmread(out / "rtstruct.dcm")
        assert sorted(r.ROIName for r in rtstruct.StructureSetROISequence) == ["Cord", "Lung_L", "Lung_R"]

        by_destination: dict[str, set[tuple[str, str]]] = {}
        for row in rows:
            assert row.status == DeliveryStatus.SENT, (row.destination, row.kind, row.last_error)
            by_destination.setdefault(row.destination, set()).add((row.kind, row.sop_class_uid))
        assert by_destination == {"PACS": {("SEG", LABELMAP_SEG_CLASS), ("RTSTRUCT", RTSTRUCT_CLASS)},
                                  "TPS": {("SEG", SEG_CLASS), ("RTSTRUCT", RTSTRUCT_CLASS)}}
        # the SEG transfer syntaxes of the snapshot too (the edited PACS names none): each row says which was
        # used (for the RTSTRUCT the peer's choice among the uncompressed ones: pynetdicom prefers implicit VR)
        assert {(r.destination, r.kind, r.transfer_syntax) for r in rows} == {
            ("PACS", "SEG", "JPEGLSLossless"), ("PACS", "RTSTRUCT", "ImplicitVRLittleEndian"),
            ("TPS", "SEG", "DeflatedExplicitVRLittleEndian"), ("TPS", "RTSTRUCT", "ImplicitVRLittleEndian")}
        # each peer got exactly its own rows: the snapshot's addresses and AE titles, not the config's
        assert peers["PACSA"].received == {r.sop_uid: r.sop_class_uid for r in rows if r.destination == "PACS"}
        assert peers["TPSA"].received == {r.sop_uid: r.sop_class_uid for r in rows if r.destination == "TPS"}
        assert peers["NEWPACS"].received == {}
    finally:
        factory.kw["bind"].dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_jobs_enqueued_before_snapshots_fail_with_a_clear_message(tmp_path: Path, database: str,
                                                                  request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("postgres_url") if database == "postgres" else f"sqlite:///{tmp_path / 'x.sqlite'}"
    settings = make_settings(tmp_path, node={"database_url": url})
    factory = open_index(settings.node.database_url)
    engine = factory.kw["bind"]
    meta = InstanceMeta(sop_uid="1.2.3.4.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                        transfer_syntax_uid="1.2.840.10008.1.2.1", study_uid="1.2.3", series_uid="1.2.3.4",
                        patient_key="P", modality="CT", instance_number=1, slice_position=0.0)
    index.record_instance(factory, meta, str(tmp_path / "never.dcm"), 10, None)
    action = RoutedAction(rule_name="ct", model_id="builtin", outputs=("SEG",), seg_type="BINARY")
    with factory.begin() as s:
        (view,) = index.receiving_series(s)
        queued = jobs.enqueue(s, view.id, view.series_uid, action, 1)
        delivering = jobs.enqueue(s, view.id, view.series_uid, action.model_copy(update={"rule_name": "ct2"}), 1)
        assert queued is not None and delivering is not None
        s.flush()
        queued_id, delivering_id = queued.id, delivering.id
    jobs.add_deliveries(factory, delivering_id, [Delivery(destination="PACS", kind="SEG", sop_uid="9.1",
                                                          sop_class_uid=SEG_CLASS, path="/o/seg.dcm")])
    # the rows as an older version left them: the schema before jobs.action, then migrated again
    command.downgrade(alembic_config(engine), "0001")
    command.upgrade(alembic_config(engine), "head")
    with factory() as s:
        assert [j.action for j in s.scalars(select(Job).order_by(Job.id))] == ["", ""]
    try:
        worker = Worker(settings, factory, "new-worker")
        assert worker.run_once()
        with factory() as s:
            failed = s.get(Job, queued_id)
            gave_up = s.get(Job, delivering_id)
            (delivery,) = jobs.deliveries_of(s, delivering_id)
        assert failed is not None and failed.status == JobStatus.FAILED
        assert failed.error_class == "RoutingError"
        assert failed.error_message == f"job {queued_id} was enqueued before routing snapshots; re-send the series"
        assert delivery.status == DeliveryStatus.DEAD and delivery.attempts == 1
        assert "enqueued before routing snapshots; re-send the series" in delivery.last_error
        assert gave_up is not None and gave_up.status == JobStatus.FAILED
        assert "re-send the series" in gave_up.error_message
    finally:
        engine.dispose()
