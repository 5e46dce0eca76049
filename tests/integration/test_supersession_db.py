"""The SQL of superseded jobs on SQLite and PostgreSQL: which jobs are held, what a superseded job
can still do (nothing), and which delivered job a new version names."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import deliveries, index, jobs, retention, supersession
from dicom_node.db.engine import open_index
from dicom_node.db.index import InstanceMeta
from dicom_node.db.tables import Delivery, Job, JobStatus, SeriesState, utcnow
from dicom_node.routing import RoutedAction
from tests.conftest import REPO

ACTION = RoutedAction(rule_name="ct", model_id="builtin", outputs=("SEG",), seg_type="BINARY")


@pytest.fixture(params=["sqlite", "postgres"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else f"sqlite:///{tmp_path / 'i.db'}"
    made = open_index(url)
    meta = InstanceMeta(sop_uid="1.2.3.4.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                        transfer_syntax_uid="1.2.840.10008.1.2.1", study_uid="1.2.3", series_uid="1.2.3.4",
                        patient_key="P", modality="CT")
    index.record_instance(made, meta, "/s/1.dcm", 10, None)
    try:
        yield made
    finally:
        made.kw["bind"].dispose()


def _enqueue(factory: sessionmaker[Session], count: int) -> int:
    with factory.begin() as s:
        return _enqueue_in(s, count)


def _delivery(kind: str, sop: str) -> Delivery:
    return Delivery(destination="PACS", kind=kind, sop_uid=sop, sop_class_uid="1.2", path=f"/o/{sop}.dcm")


def test_a_running_job_superseded_records_no_deliveries_and_pending_ones_are_never_due(
        factory: sessionmaker[Session]) -> None:
    running, delivering = _enqueue(factory, 1), _enqueue(factory, 2)
    assert jobs.claim(factory, "w") == running
    assert jobs.add_deliveries(factory, delivering, [_delivery("SEG", "9.1")])
    with factory.begin() as s:
        assert supersession.hold_undelivered(s, 1) == [running, delivering]
    assert not jobs.add_deliveries(factory, running, [_delivery("SEG", "9.2")])
    jobs.finish(factory, running, JobStatus.FAILED, error=RuntimeError("late"))
    assert deliveries.claim_due(factory, "w/1/x", timedelta(seconds=60)) == []  # the pending one is never sent
    with factory() as s:
        assert jobs.deliveries_of(s, running) == []
        assert {s.get(Job, j).status for j in (running, delivering)} == {JobStatus.SUPERSEDED}  # type: ignore[union-attr]


def test_a_delivered_job_is_kept_and_the_new_version_names_the_nearest_delivered_one(
        factory: sessionmaker[Session]) -> None:
    delivered = _enqueue(factory, 1)
    assert jobs.add_deliveries(factory, delivered, [_delivery("SEG", "9.1"), _delivery("RTSTRUCT", "9.2")])
    with factory() as s:
        seg, rt = jobs.deliveries_of(s, delivered)
    jobs.mark_sent(factory, seg.id)
    jobs.mark_sent(factory, rt.id)
    jobs.settle_job(factory, delivered)
    with factory.begin() as s:
        assert supersession.hold_undelivered(s, 1) == []
        middle = s.get(Job, _enqueue_in(s, 2))
        assert supersession.link(s, middle, 1) == (delivered, True)  # type: ignore[arg-type]
    with factory.begin() as s:
        last = s.get(Job, _enqueue_in(s, 3))
        assert last is not None and middle is not None
        assert supersession.link(s, last, 1) == (middle.id, False)
        last_id = last.id
    with factory() as s:
        statuses = [s.get(Job, j).status for j in (delivered, middle.id, last_id)]  # type: ignore[union-attr]
        replaced = supersession.revision_of(s, last_id)
        notes = supersession.lineage_notes(s.get(Job, middle.id))  # type: ignore[arg-type]
    assert statuses == [JobStatus.DONE, JobStatus.SUPERSEDED, JobStatus.QUEUED]
    assert replaced is not None and (replaced.job_id, replaced.version) == (delivered, 2)
    assert [(o.kind, o.sop_uid) for o in replaced.objects] == [("SEG", "9.1"), ("RTSTRUCT", "9.2")]
    assert notes == [f"supersedes job {delivered}", f"superseded by job {last_id}"]


def _enqueue_in(s: Session, count: int) -> int:
    job = jobs.enqueue(s, 1, "1.2.3.4", ACTION, count)
    assert job is not None
    s.flush()
    return job.id


def test_dicom_node_jobs_shows_the_state_the_flag_and_both_links(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'index.sqlite'}"
    text = (REPO / "config" / "node.example.toml").read_text()
    text = text.replace('"sqlite:///../var/index.sqlite"', f'"{database}"').replace('"../var/storage"',
                                                                                   f'"{tmp_path / "storage"}"')
    config = tmp_path / "node.toml"
    config.write_text(text)
    made = open_index(database)
    meta = InstanceMeta(sop_uid="1.2.3.4.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                        transfer_syntax_uid="1.2.840.10008.1.2.1", study_uid="1.2.3", series_uid="1.2.3.4",
                        patient_key="P", modality="CT")
    index.record_instance(made, meta, "/s/1.dcm", 10, None)
    with made.begin() as s:
        old = s.get(Job, _enqueue_in(s, 40))
        assert old is not None
        old.completion_fallback, old.completion_reason = True, "quiet for 60 s (fallback: 1 association aborted)"
        supersession.hold_undelivered(s, 1)
        new = s.get(Job, _enqueue_in(s, 134))
        assert new is not None and supersession.link(s, new, 1) == (old.id, False)
        old_id, new_id = old.id, new.id
    made.kw["bind"].dispose()
    proc = subprocess.run([sys.executable, "-m", "dicom_node.cli", "jobs", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    by_id = {int(line.split()[0]): line for line in proc.stdout.splitlines()[1:]}
    assert by_id[old_id].split()[1:3] == ["superseded", "superseded"]
    assert ("unconfirmed completion: quiet for 60 s (fallback: 1 association aborted); "
            f"superseded by job {new_id}; 0/0 delivered") in by_id[old_id]
    assert by_id[new_id].split()[1] == "queued" and f"supersedes job {old_id}; 0/0 delivered" in by_id[new_id]


def test_carriers_tell_open_aborted_and_released_associations_apart(factory: sessionmaker[Session]) -> None:
    """What the sweep reads of the associations that carried a series, on both backends."""
    released, aborted, still_open = (index.open_association(factory, "SCU", "127.0.0.1:1") for _ in range(3))
    for n, association in enumerate((released, aborted, still_open), start=2):
        meta = InstanceMeta(sop_uid=f"1.2.3.4.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                            transfer_syntax_uid="1.2.840.10008.1.2.1", study_uid="1.2.3", series_uid="1.2.3.4",
                            patient_key="P", modality="CT")
        index.record_instance(factory, meta, f"/s/{n}.dcm", 10, association)
    before = utcnow()
    index.close_association(factory, released, released=True)
    index.close_association(factory, aborted, released=False)
    with factory() as s:
        (view,) = index.receiving_series(s)
    # the fixture's first instance has no recorded association: one more unreleased carrier
    assert (view.open_associations, view.unreleased_associations) == (1, 2)
    assert view.last_release_at is not None and view.last_release_at >= before - timedelta(seconds=1)
    assert view.last_release_at.tzinfo is not None


def test_retention_takes_a_superseded_job_as_finished_only_once_its_replacement_exists(
        factory: sessionmaker[Session]) -> None:
    held = _enqueue(factory, 1)
    assert jobs.add_deliveries(factory, held, [_delivery("SEG", "9.1")])  # pending, and never to be sent
    with factory.begin() as s:
        assert supersession.hold_undelivered(s, 1) == [held]
        index.mark_series(s, 1, SeriesState.DISPATCHED, "test", 1)
    with factory() as s:
        assert retention.removable_series(s) == []  # nothing replaces it yet: the series is kept
    with factory.begin() as s:
        new = s.get(Job, _enqueue_in(s, 2))
        assert new is not None and supersession.link(s, new, 1) == (held, False)
        new_id = new.id
    assert jobs.add_deliveries(factory, new_id, [_delivery("SEG", "9.2")])
    with factory() as s:
        assert retention.removable_series(s) == []  # the new job has not delivered yet
        (pending,) = jobs.deliveries_of(s, new_id)
    jobs.mark_sent(factory, pending.id)
    jobs.settle_job(factory, new_id)
    with factory() as s:
        assert [c.series_id for c in retention.removable_series(s)] == [1]
        assert sorted(c.job_id for c in retention.removable_outputs(s)) == [held, new_id]
