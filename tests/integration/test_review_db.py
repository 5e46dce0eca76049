"""Review states in a real index: held jobs keep their files however old, a growing series supersedes a held
job (not a rejected one), rejected jobs are cleaned up like finished ones, decisions only on jobs in review,
and the RTSTRUCT Approval module."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import review, supersession
from dicom_node.db.engine import open_index
from dicom_node.db.tables import Job, JobStatus, utcnow
from dicom_node.errors import NotInReview, OutputError, UnknownJob
from dicom_node.housekeeping import run_housekeeping
from dicom_node.outputs.rtstruct.approval import Approval, set_approval
from dicom_node.review import decisions
from dicom_node.settings import Settings
from tests.conftest import make_settings
from tests.housekeeping_helpers import MadeSeries, age, files_under, make_series

Node = tuple[Settings, sessionmaker[Session]]


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[Node]:
    settings = make_settings(tmp_path, housekeeping={"keep_instances_days": 1, "keep_outputs_days": 1,
                                                     "emergency_free_disk_mb": 0})
    factory = open_index(settings.node.database_url)
    yield settings, factory
    factory.kw["bind"].dispose()


def job(made: MadeSeries) -> int:
    assert made.job_id is not None
    return made.job_id


def _status(factory: sessionmaker[Session], job_id: int) -> JobStatus:
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status


def test_a_held_job_keeps_its_files_until_rejected_then_they_go_like_finished_work(node: Node) -> None:
    settings, factory = node
    made = make_series(settings, factory, 1, "review", age_days=400)
    before = files_under(settings.node.storage_dir, settings.worker.output_dir)
    assert run_housekeeping(settings, factory).removals == []
    assert files_under(settings.node.storage_dir, settings.worker.output_dir) == before
    assert decisions.reject(factory, job(made), "phil", "wrong patient position").status == "rejected"
    age(factory, made.series_id, 400)
    removed = run_housekeeping(settings, factory).removals
    assert sorted(r.kind for r in removed) == ["outputs", "series"]
    assert files_under(settings.node.storage_dir, settings.worker.output_dir) == set()
    assert _status(factory, job(made)) == JobStatus.REJECTED


def test_a_growing_series_supersedes_a_held_job_and_keeps_a_rejected_one(node: Node) -> None:
    settings, factory = node
    held = make_series(settings, factory, 1, "review", age_days=0)
    rejected = make_series(settings, factory, 2, "review", age_days=0)
    decisions.reject(factory, job(rejected), "phil", "motion artefact")
    with factory.begin() as session:
        assert supersession.hold_undelivered(session, held.series_id) == [job(held)]
        assert supersession.hold_undelivered(session, rejected.series_id) == []
    assert _status(factory, job(held)) == JobStatus.SUPERSEDED
    assert _status(factory, job(rejected)) == JobStatus.REJECTED
    with pytest.raises(NotInReview, match="is superseded"):
        decisions.approve(settings, factory, job(held), "phil")
    with pytest.raises(NotInReview, match="is rejected"):
        decisions.reject(factory, job(rejected), "ada", "again")


def test_only_a_job_in_review_is_decided(node: Node) -> None:
    settings, factory = node
    running = make_series(settings, factory, 1, "running", age_days=0)
    with pytest.raises(NotInReview, match="is running"):
        decisions.reject(factory, job(running), "phil", "no")
    with pytest.raises(UnknownJob):
        decisions.approve(settings, factory, 4242, "phil")
    with factory.begin() as session:  # the conditional UPDATEs: nothing changes outside review
        assert not review.approve(session, job(running), "phil", None, [], utcnow())
        assert not review.reject(session, job(running), "phil", "no", utcnow())
    assert review.hold(factory, job(running)) and not review.hold(factory, job(running))
    with factory() as session:
        assert [h.job.id for h in review.in_review(session)] == [job(running)]


def test_the_approval_module_says_who_approved_and_when() -> None:
    ds = Dataset()
    set_approval(ds, None)
    assert ds.ApprovalStatus == "UNAPPROVED" and "ReviewerName" not in ds
    at = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    set_approval(ds, Approval("phil", at))
    local = at.astimezone()
    assert (ds.ApprovalStatus, ds.ReviewDate, ds.ReviewTime, str(ds.ReviewerName)) == (
        "APPROVED", local.strftime("%Y%m%d"), local.strftime("%H%M%S"), "phil")
    for bad in ("", "a^b", "x" * 65):
        with pytest.raises(OutputError):
            set_approval(ds, Approval(bad, at))
