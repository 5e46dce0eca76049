"""The index and job queue on real databases: SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, select, text
from sqlalchemy.orm import Session, sessionmaker

import dicom_node.db
from dicom_node.db import deliveries, index, jobs
from dicom_node.db.engine import open_index
from dicom_node.db.index import InstanceMeta, StoredInstance
from dicom_node.db.tables import (
    Base,
    Delivery,
    DeliveryStatus,
    Instance,
    Job,
    JobStatus,
    Series,
    SeriesState,
    utcnow,
)
from dicom_node.errors import IndexError_
from dicom_node.receive.group_commit import GroupCommitter
from dicom_node.routing import RoutedAction


@pytest.fixture(params=["sqlite", "postgres"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> sessionmaker[Session]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    f = open_index(url)
    yield f
    f.kw["bind"].dispose()


def _meta(n: int, series: str = "1.2.3.4", **kw: object) -> InstanceMeta:
    base = dict(sop_uid=f"1.2.3.4.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1", study_uid="1.2.3", series_uid=series,
                patient_key="P", modality="CT", instance_number=n, slice_position=float(n * 3))
    base.update(kw)
    return InstanceMeta(**base)  # type: ignore[arg-type]


def test_migrations_match_the_models(factory: sessionmaker[Session]) -> None:
    # every module of the index, so that each table is in the metadata whatever else this process imported
    for module in pkgutil.iter_modules(dicom_node.db.__path__, "dicom_node.db."):
        importlib.import_module(module.name)
    engine = factory.kw["bind"]
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_record_instance_is_idempotent_and_late_instances_reopen_the_series(factory: sessionmaker[Session]) -> None:
    assert index.record_instance(factory, _meta(1), "/x/1.dcm", 10, None)
    assert not index.record_instance(factory, _meta(1), "/x/1.dcm", 10, None)  # duplicate SOP
    assert index.record_instance(factory, _meta(2), "/x/2.dcm", 10, None)
    with factory.begin() as s:
        (view,) = index.receiving_series(s)
        assert view.instance_count == 2
        assert sorted(view.slice_positions) == [3.0, 6.0]
        index.mark_series(s, view.id, SeriesState.DISPATCHED, "test", 2)
    assert index.record_instance(factory, _meta(3), "/x/3.dcm", 10, None)
    with factory() as s:
        series = s.scalar(select(Series))
        assert series is not None and series.state == SeriesState.RECEIVING and series.instance_count == 3


@pytest.fixture(params=["pooled", "held"])
def committer_connection(request: pytest.FixtureRequest,
                         factory: sessionmaker[Session]) -> Iterator[Connection | None]:
    """None: a pooled connection per batch; "held": the group committer's own connection, on which
    batches of known series run straight on the driver."""
    if request.param == "pooled":
        yield None
        return
    with factory.kw["bind"].connect() as conn:
        yield conn


def test_batches_on_a_cached_series_store_what_the_orm_reads_back(
        factory: sessionmaker[Session], committer_connection: Connection | None) -> None:
    """The committer's hot path runs prepared statements on the driver's cursor: the rows it writes
    must read back through the ORM exactly (UTC datetimes, enum state), duplicates inside a batch
    and against earlier batches are told apart, and the series counts only new instances."""
    cache: dict[str, int] = {}
    conn = committer_connection
    before = utcnow()
    assert index.record_batch(factory, [StoredInstance(_meta(1), "/x/1.dcm", 11, None)], cache, conn) == [True]
    assert cache  # the series id is cached: what follows takes the prepared path
    batch = [StoredInstance(_meta(n), f"/x/{n}.dcm", 10 + n, None) for n in (2, 3)]
    batch.append(StoredInstance(_meta(2), "/x/2-again.dcm", 99, None))  # same SOP twice in one batch
    batch.append(StoredInstance(_meta(1), "/x/1-again.dcm", 99, None))  # known from the first batch
    assert index.record_batch(factory, batch, cache, conn) == [True, True, False, False]
    with factory() as s:
        rows = {r.sop_uid: r for r in s.scalars(select(Instance))}
        series = s.scalar(select(Series))
    assert sorted(rows) == ["1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"]
    two = rows["1.2.3.4.2"]
    assert (two.path, two.size_bytes, two.instance_number, two.slice_position) == ("/x/2.dcm", 12, 2, 6.0)
    assert two.transfer_syntax_uid == "1.2.840.10008.1.2.1" and two.association_id is None
    assert two.received_at.tzinfo is not None and before <= two.received_at <= utcnow()
    assert series is not None and series.instance_count == 3 and series.state == SeriesState.RECEIVING
    assert before <= series.last_received_at <= utcnow()


def test_a_driver_error_on_the_hot_path_is_an_index_error_and_commits_nothing(
        factory: sessionmaker[Session], committer_connection: Connection | None) -> None:
    cache: dict[str, int] = {}
    conn = committer_connection
    assert index.record_batch(factory, [StoredInstance(_meta(1), "/x/1.dcm", 10, None)], cache, conn) == [True]
    bad = [StoredInstance(_meta(2), "/x/2.dcm", 10, None),
           StoredInstance(_meta(3), "/x/3.dcm", 10, 987654)]  # no such association: foreign key fails
    with pytest.raises(IndexError_, match="cannot index 2 instance"):
        index.record_batch(factory, bad, cache, conn)
    with factory() as s:
        assert list(s.scalars(select(Instance.sop_uid))) == ["1.2.3.4.1"]
        assert s.scalar(select(Series.instance_count)) == 1
    # the failed batch was rolled back: the same connection takes the next one
    assert index.record_batch(factory, [StoredInstance(_meta(2), "/x/2.dcm", 10, None)], cache, conn) == [True]
    with factory() as s:
        assert s.scalar(select(Series.instance_count)) == 2


def test_open_associations_are_counted_until_closed(factory: sessionmaker[Session]) -> None:
    assoc = index.open_association(factory, "SCU", "127.0.0.1:1")
    index.record_instance(factory, _meta(1), "/x/1.dcm", 10, assoc)
    with factory() as s:
        assert index.receiving_series(s)[0].open_associations == 1
    index.close_association(factory, assoc, released=True)
    with factory() as s:
        assert index.receiving_series(s)[0].open_associations == 0


def _one_job(factory: sessionmaker[Session]) -> int:
    index.record_instance(factory, _meta(1), "/x/1.dcm", 10, None)
    with factory.begin() as s:
        view = index.receiving_series(s)[0]
        action = RoutedAction(rule_name="rule", model_id="builtin", outputs=("SEG",), seg_type="BINARY")
        job = jobs.enqueue(s, view.id, view.series_uid, action, 1)
        assert job is not None
        assert jobs.enqueue(s, view.id, view.series_uid, action, 1) is None  # de-duplicated
        s.flush()
        return job.id


def test_claim_is_atomic_between_threads(factory: sessionmaker[Session]) -> None:
    job_id = _one_job(factory)
    won: list[int | None] = []
    barrier = threading.Barrier(4)

    def grab(n: int) -> None:
        barrier.wait()
        won.append(jobs.claim(factory, f"w{n}"))

    threads = [threading.Thread(target=grab, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(w for w in won if w is not None) == [job_id]
    assert won.count(None) == 3


def test_stale_jobs_are_requeued_then_dead_lettered(factory: sessionmaker[Session]) -> None:
    job_id = _one_job(factory)
    assert jobs.claim(factory, "w1") == job_id
    assert jobs.requeue_stale(factory, timedelta(seconds=-1), max_attempts=2) == 1
    assert jobs.claim(factory, "w2") == job_id
    assert jobs.requeue_stale(factory, timedelta(seconds=-1), max_attempts=2) == 1
    with factory() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == JobStatus.FAILED and job.error_class == "WorkerLost"


def test_deliveries_settle_the_job(factory: sessionmaker[Session]) -> None:
    job_id = _one_job(factory)
    jobs.claim(factory, "w")
    jobs.add_deliveries(factory, job_id, [
        Delivery(destination="PACS", kind="SEG", sop_uid="9.1", sop_class_uid="1.2", path="/o/seg.dcm"),
        Delivery(destination="PACS", kind="RTSTRUCT", sop_uid="9.2", sop_class_uid="1.3", path="/o/rt.dcm"),
    ])
    first, second = deliveries.claim_due(factory, "w", timedelta(seconds=60))
    jobs.mark_sent(factory, first.id)
    assert jobs.settle_job(factory, job_id) == JobStatus.DELIVERING
    policy = deliveries.RetryPolicy(base_seconds=60)
    assert deliveries.record_failure(factory, second.id, "w", "refused", policy) == DeliveryStatus.PENDING
    assert deliveries.claim_due(factory, "w", timedelta(seconds=60)) == []  # backing off
    jobs.mark_sent(factory, second.id)
    assert jobs.settle_job(factory, job_id) == JobStatus.DONE


def test_retry_policy_backs_off_exponentially() -> None:
    policy = deliveries.RetryPolicy(base_seconds=10, max_seconds=100)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5, 500)] == [10, 20, 40, 80, 100, 100]


def test_the_committer_retries_a_batch_once_when_its_connection_was_lost(factory: sessionmaker[Session]) -> None:
    """The group committer keeps one connection; when the database dropped it (PostgreSQL restarted,
    an idle timeout overnight), the next batch must still commit rather than answer 0xA700."""
    committer = GroupCommitter(factory)
    try:
        assert committer.wait(committer.submit(StoredInstance(_meta(1), "/x/1.dcm", 10, None)))
        held = committer._connection  # the committer thread is idle now, waiting for work
        assert held is not None
        engine = factory.kw["bind"]
        if engine.dialect.name == "postgresql":
            backend = held.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            held.rollback()
            with engine.connect() as other:
                assert other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}).scalar()
        else:
            held.connection.dbapi_connection.close()  # type: ignore[union-attr]
        assert committer.wait(committer.submit(StoredInstance(_meta(2), "/x/2.dcm", 10, None)))
        assert committer._connection is not held  # a fresh one took over
        with factory() as s:
            assert sorted(s.scalars(select(Instance.sop_uid))) == ["1.2.3.4.1", "1.2.3.4.2"]
            assert s.scalar(select(Series.instance_count)) == 2
    finally:
        committer.close()
