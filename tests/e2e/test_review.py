"""Review before sending, end to end: storescu -> listener -> sweep -> worker (held) -> HTTP API decision -> Orthanc.

A rule with ``review = "required"`` runs the built-in segmenter on the 3 slices of a real CT through a
template (Bone renamed Skeleton, External). The job is held: worker rounds run and Orthanc receives
nothing. A physicist approves a subset over the HTTP API (session cookie + CSRF token): Orthanc then
receives a SEG, an RTSTRUCT and an SR without the dropped structure, the RTSTRUCT APPROVED by the
physicist (checked with dciodvfy). Approving all sends the objects as written, the RTSTRUCT approved.
A rejected job sends nothing; a viewer cannot decide and sees no patient identifier.
"""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.cli_deliveries import job_outcome
from dicom_node.db import audit
from dicom_node.db.admin_tables import Role
from dicom_node.db.engine import open_index
from dicom_node.db.tables import Job, JobStatus
from dicom_node.live_config import LiveConfig
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from dicom_node.review.held import read_held
from dicom_node.scheduler import sweep
from dicom_node.settings import Settings
from dicom_node.worker import Worker
from tests.conftest import make_settings
from tests.peers import Orthanc, dciodvfy_errors, nodelay_env, require_tool
from tests.web_server import WebNode, serve_web

RULE = {"name": "held", "model": "builtin", "destinations": ["PACS"], "outputs": ["SEG", "RTSTRUCT", "SR"],
        "template": "bones", "review": "required", "reviewers": ["phil", "physics@hospital.example.org"]}
TEMPLATE = {"name": "bones", "include": ["Bone", "External"], "rename": {"Bone": "Skeleton"}}


@dataclass
class Node:
    settings: Settings
    factory: sessionmaker[Session]
    web: WebNode
    worker: Worker
    orthanc: Orthanc
    ct_dir: Path
    tmp: Path


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, orthanc: Orthanc) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("review")
    settings = make_settings(
        tmp, destinations=[{"name": "PACS", "ae_title": orthanc.aet, "host": "127.0.0.1",
                            "port": orthanc.dicom_port, "retry_backoff_seconds": 1}],
        templates=[TEMPLATE], routing={"rules": [RULE]},
        completion={"quiet_seconds": 1.0, "settle_seconds": 0.1, "after_release_seconds": 0.1})
    factory = open_index(settings.node.database_url)
    listener = start_listener(settings.node, ReceiverContext(factory=factory, store=InstanceStore(
        settings.node.storage_dir, 1)))
    try:
        with serve_web(settings, factory) as web:
            for name, role in (("ada", Role.ADMIN), ("phil", Role.PHYSICIST), ("vic", Role.VIEWER)):
                web.add_user(name, role)
            yield Node(settings, factory, web, Worker(settings, factory, "w-review"), orthanc,
                       shared_data / "ct" / "dcmqi_liver_3slice" / "ct", tmp)
    finally:
        listener.shutdown()


def _held_job(node: Node, name: str) -> int:
    """A new series (the CT with fresh UIDs) sent with storescu, routed and run: the id of its held job."""
    folder = node.tmp / name
    folder.mkdir()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for source in sorted(node.ct_dir.glob("*.dcm")):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = generate_uid()
        if not ds.get("SpecificCharacterSet"):  # empty in this file; highdicom refuses to copy an empty one
            del ds.SpecificCharacterSet
        ds.save_as(folder / source.name)
    sent = subprocess.run([require_tool("storescu"), "-aet", "TESTSCU", "-aec", node.settings.node.ae_title,
                           "127.0.0.1", str(node.settings.node.port), *map(str, sorted(folder.glob("*.dcm")))],
                          capture_output=True, text=True, timeout=60, env=nodelay_env())
    assert sent.returncode == 0, sent.stderr
    live, deadline = LiveConfig(node.settings, node.factory), time.monotonic() + 20
    while not sweep(live.current(), node.factory):
        assert time.monotonic() < deadline, "the series was not dispatched"
        time.sleep(0.1)
    assert node.worker.run_once(deliver=True)
    with node.factory() as session:
        job = session.scalars(select(Job).order_by(Job.id.desc())).first()
        assert job is not None and job.status == JobStatus.REVIEW, (job and (job.status, job.error_message))
        assert job.review_since is not None and job.deliveries == []
        return job.id


def _status(node: Node, job_id: int) -> JobStatus:
    with node.factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status


def _deliver_until_settled(node: Node, job_id: int) -> None:
    deadline = time.monotonic() + 30
    while _status(node, job_id) == JobStatus.DELIVERING:
        assert time.monotonic() < deadline, "the approved job's deliveries did not settle"
        node.worker.deliver_due()
        time.sleep(0.1)
    assert _status(node, job_id) == JobStatus.DONE


def _received(orthanc: Orthanc) -> dict[str, pydicom.Dataset]:
    """Modality -> the object Orthanc holds (one of each kind is sent)."""
    out = {}
    for orthanc_id in orthanc.instances():
        ds = pydicom.dcmread(io.BytesIO(orthanc.instance_file(orthanc_id)))
        out[str(ds.Modality)] = ds
    return out


def _post(client: httpx.Client, csrf: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(path, json=body, headers={"X-CSRF-Token": csrf})


def test_a_held_job_is_never_sent_until_a_physicist_approves_a_subset(node: Node) -> None:
    node.orthanc.clear()
    job_id = _held_job(node, "subset")
    for _ in range(3):  # rounds of the worker: nothing to claim, nothing due
        assert not node.worker.run_once(deliver=True)
    assert node.orthanc.instances() == []
    with node.factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and job_outcome(job).startswith("in review since ")
    held = read_held(node.settings.worker.output_dir / f"job-{job_id:06d}")
    held_uids = {o.kind: o.sop_uid for o in held.objects}

    phil, phil_csrf = node.web.login("phil")
    queue = phil.get("/api/review").json()
    assert [e["job_id"] for e in queue] == [job_id]
    entry = queue[0]
    assert (entry["status"], entry["rule_name"], entry["model_id"]) == ("review", "held", "builtin")
    assert entry["reviewers"] == RULE["reviewers"] and entry["waited_seconds"] >= 0
    assert entry["patient_id"] == str(pydicom.dcmread(next(node.ct_dir.glob("*.dcm"))).PatientID)
    structures = {s["name"]: s for s in entry["structures"]}
    assert set(structures) == {"Bone", "External"}
    assert structures["Bone"]["roi_name"] == "Skeleton" and structures["External"]["roi_name"] == "External"
    assert 0 < structures["Bone"]["volume_ml"] < structures["External"]["volume_ml"]
    assert all(len(s["colour"]) == 3 for s in structures.values())

    vic, vic_csrf = node.web.login("vic")
    seen = vic.get("/api/review").json()
    assert [e["job_id"] for e in seen] == [job_id] and seen[0]["patient_id"] == "***"
    assert _post(vic, vic_csrf, f"/api/review/{job_id}/approve", {"keep": None}).status_code == 403
    assert _post(vic, vic_csrf, f"/api/review/{job_id}/reject", {"reason": "no"}).status_code == 403
    assert phil.post(f"/api/review/{job_id}/approve", json={"keep": ["Bone"]}).status_code == 403  # no CSRF
    unknown = _post(phil, phil_csrf, f"/api/review/{job_id}/approve", {"keep": ["Bone", "Liver"]})
    assert unknown.status_code == 400 and "Liver" in unknown.json()["detail"]
    assert _status(node, job_id) == JobStatus.REVIEW

    approved = _post(phil, phil_csrf, f"/api/review/{job_id}/approve", {"keep": ["Bone"]})
    assert approved.status_code == 200, approved.text
    assert approved.json()["kept"] == ["Bone"] and approved.json()["deliveries"] == 3
    again = _post(phil, phil_csrf, f"/api/review/{job_id}/approve", {"keep": None})
    assert again.status_code == 409
    _deliver_until_settled(node, job_id)

    received = _received(node.orthanc)
    assert set(received) == {"SEG", "RTSTRUCT", "SR"}
    rtstruct, seg = received["RTSTRUCT"], received["SEG"]
    assert [r.ROIName for r in rtstruct.StructureSetROISequence] == ["Skeleton"]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Skeleton"]
    assert "External" not in str(received["SR"])
    assert (rtstruct.ApprovalStatus, str(rtstruct.ReviewerName)) == ("APPROVED", "phil")
    assert rtstruct.ReviewDate == datetime.now().strftime("%Y%m%d") and len(rtstruct.ReviewTime) == 6
    assert {kind: str(received[kind].SOPInstanceUID) for kind in received}.keys() == held_uids.keys()
    assert all(str(received[kind].SOPInstanceUID) != uid for kind, uid in held_uids.items())  # rebuilt: new UIDs
    path = node.tmp / "approved-rtstruct.dcm"
    rtstruct.save_as(path)
    errors, report = dciodvfy_errors(path)
    assert errors == [], report

    detail = phil.get(f"/api/review/{job_id}").json()
    assert (detail["decision"], detail["reviewed_by"], detail["kept"]) == ("approved", "phil", ["Bone"])
    assert {d["status"] for d in detail["deliveries"]} == {"sent"}
    with node.factory() as session:
        (entry_,) = audit.recent(session, action="review-approve")
        job = session.get(Job, job_id)
        assert job is not None and job_outcome(job).startswith("approved by phil (kept Bone); 3/3 delivered")
    assert (entry_.actor, entry_.target, entry_.details["dropped"]) == ("phil", f"job {job_id}", ["External"])


def test_approving_all_sends_the_objects_as_written_with_the_rtstruct_approved(node: Node) -> None:
    node.orthanc.clear()
    job_id = _held_job(node, "all")
    held = {o.kind: o.sop_uid for o in read_held(node.settings.worker.output_dir / f"job-{job_id:06d}").objects}
    ada, csrf = node.web.login("ada")
    reply = _post(ada, csrf, f"/api/review/{job_id}/approve", {"keep": ["External", "Bone"]})  # every one: all
    assert reply.status_code == 200 and reply.json()["kept"] is None, reply.text
    _deliver_until_settled(node, job_id)
    received = _received(node.orthanc)
    assert {kind: str(ds.SOPInstanceUID) for kind, ds in received.items()} == held
    assert sorted(r.ROIName for r in received["RTSTRUCT"].StructureSetROISequence) == ["External", "Skeleton"]
    assert (received["RTSTRUCT"].ApprovalStatus, str(received["RTSTRUCT"].ReviewerName)) == ("APPROVED", "ada")


def test_a_rejected_job_sends_nothing(node: Node) -> None:
    node.orthanc.clear()
    job_id = _held_job(node, "rejected")
    phil, csrf = node.web.login("phil")
    assert _post(phil, csrf, f"/api/review/{job_id}/reject", {}).status_code == 422  # the reason is required
    assert _post(phil, csrf, f"/api/review/{job_id}/reject", {"reason": "   "}).status_code == 400
    reply = _post(phil, csrf, f"/api/review/{job_id}/reject", {"reason": "bone contour leaks into the table"})
    assert reply.status_code == 200 and reply.json()["status"] == "rejected", reply.text
    assert _post(phil, csrf, f"/api/review/{job_id}/approve", {"keep": None}).status_code == 409
    assert _post(phil, csrf, "/api/review/999999/approve", {"keep": None}).status_code == 404
    for _ in range(3):
        node.worker.run_once(deliver=True)
    assert node.orthanc.instances() == []
    assert job_id not in [e["job_id"] for e in phil.get("/api/review").json()]
    detail = phil.get(f"/api/review/{job_id}").json()
    assert (detail["status"], detail["reason"], detail["deliveries"]) == (
        "rejected", "bone contour leaks into the table", [])
    with node.factory() as session:
        (entry,) = audit.recent(session, action="review-reject")
    assert (entry.actor, entry.target, entry.details["reason"]) == ("phil", f"job {job_id}",
                                                                    "bone contour leaks into the table")


def test_the_rule_editor_saves_the_review_fields(node: Node) -> None:
    """Last in the module: it adds a rule (for MR series, so no later job of these tests would match it)."""
    ada, _csrf = node.web.login("ada")
    page = ada.get("/rules")
    assert 'name="review" value="required"' in page.text and 'name="reviewers"' in page.text
    form_csrf = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    saved = ada.post("/rules", data={"csrf_token": form_csrf, "name": "mr-held", "model": "builtin",
                                     "destinations": "PACS", "match_Modality": "MR", "outputs": "RTSTRUCT",
                                     "review": "required", "reviewers": "phil, physics@hospital.example.org"})
    assert saved.status_code == 303, saved.text[-800:]
    (rule,) = [r for r in ada.get("/api/rules").json() if r["name"] == "mr-held"]
    assert (rule["review"], rule["reviewers"]) == ("required", ["phil", "physics@hospital.example.org"])
    refused = ada.post("/rules", data={"csrf_token": form_csrf, "name": "mr-bad", "model": "builtin",
                                       "destinations": "PACS", "match_Modality": "MR", "reviewers": "dr who"})
    assert refused.status_code == 400 and 'data-field="reviewers"' in refused.text
