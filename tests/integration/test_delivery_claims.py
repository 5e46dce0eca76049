"""Deliveries are leased, retried with a capped back-off until their maximum age, then dead.

On SQLite and PostgreSQL: two workers (two engines, two threads) sending one job's 40 objects to a
real Storage SCP that keeps every SOP Instance UID it receives, repeats included.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import deliveries, jobs
from dicom_node.db.engine import open_index
from dicom_node.db.tables import Delivery, DeliveryStatus, Job, JobStatus, utcnow
from dicom_node.delivery import DeliveryLoop, process_alive
from dicom_node.settings import Settings
from tests.conftest import make_settings
from tests.delivery_helpers import job_with_deliveries, sop_uids_and_paths
from tests.peers import RecordingScp


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(request.getfixturevalue("postgres_url")) if request.param == "postgres" \
        else f"sqlite:///{tmp_path / 'index.sqlite'}"


@pytest.fixture()
def scp() -> Iterator[RecordingScp]:
    peer = RecordingScp()
    yield peer
    peer.stop()


def _settings(tmp_path: Path, url: str, scp: RecordingScp, **destination: object) -> Settings:
    return make_settings(tmp_path, node={"database_url": url}, destinations=[scp.destination(**destination)],
                         routing={"rules": [{"name": "ct", "model": "builtin", "destinations": ["PACS"]}]})


def _pending(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        return int(s.scalar(select(func.count()).select_from(Delivery)
                            .where(Delivery.status == DeliveryStatus.PENDING)) or 0)


def test_two_workers_never_send_one_object_twice(tmp_path: Path, database_url: str, scp: RecordingScp,
                                                 nsclc_ct_files: list[Path]) -> None:
    settings = _settings(tmp_path, database_url, scp)
    factory = open_index(database_url)
    objects = sop_uids_and_paths(nsclc_ct_files[:40])
    job_id = job_with_deliveries(settings, factory, objects)
    factories = [open_index(database_url) for _ in range(2)]  # two workers: two engines, two connection pools
    loops = [DeliveryLoop(settings, f, f"worker-{n}", batch=4) for n, f in enumerate(factories)]
    tried = [0, 0]
    barrier = threading.Barrier(2)

    def work(n: int) -> None:
        barrier.wait()
        deadline = time.monotonic() + 60
        while _pending(factories[n]) and time.monotonic() < deadline:
            count = loops[n].deliver_due()
            tried[n] += count
            if not count:  # the other worker holds what is left
                time.sleep(0.02)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
        assert len(scp.received) == 40, "an object was sent twice or not at all"
        assert sorted(scp.received) == sorted(uid for uid, _ in objects)
        assert tried[0] > 0 and tried[1] > 0, f"both workers took part: {tried}"
        assert sum(tried) == 40
        with factory() as s:
            rows = jobs.deliveries_of(s, job_id)
            job = s.get(Job, job_id)
        assert {(r.status, r.attempts, r.lease_owner) for r in rows} == {(DeliveryStatus.SENT, 1, "")}
        assert job is not None and job.status == JobStatus.DONE
    finally:
        for f in (factory, *factories):
            f.kw["bind"].dispose()


def test_a_lease_is_its_holders_until_it_runs_out(tmp_path: Path, database_url: str, scp: RecordingScp) -> None:
    settings = _settings(tmp_path, database_url, scp)
    factory = open_index(database_url)
    try:
        job_with_deliveries(settings, factory, [(f"9.{n}", f"/o/{n}.dcm") for n in range(3)])
        held = deliveries.claim_due(factory, "A", timedelta(seconds=60))
        assert len(held) == 3
        assert deliveries.claim_due(factory, "B", timedelta(seconds=60)) == []
        assert deliveries.renew_leases(factory, "B", [r.id for r in held], timedelta(seconds=60)) == 0  # not B's
        with factory.begin() as s:  # A died holding them: its lease runs out
            s.execute(update(Delivery).values(lease_until=utcnow() - timedelta(seconds=1)))
        taken = deliveries.claim_due(factory, "B", timedelta(seconds=60))
        assert [r.id for r in taken] == [r.id for r in held]
        # A's late word on a row B holds now changes nothing
        status = deliveries.record_failure(factory, held[0].id, "A", "late", deliveries.RetryPolicy(10))
        assert status == DeliveryStatus.PENDING
        with factory() as s:
            row = s.get(Delivery, held[0].id)
        assert row is not None and (row.attempts, row.last_error, row.lease_owner) == (0, "", "B")
    finally:
        factory.kw["bind"].dispose()


def test_back_off_doubles_to_its_cap_the_last_try_is_at_max_age_then_the_delivery_is_dead(
        tmp_path: Path, database_url: str, scp: RecordingScp) -> None:
    settings = _settings(tmp_path, database_url, scp)
    factory = open_index(database_url)
    policy = deliveries.RetryPolicy(10, 40, timedelta(hours=1))
    try:
        job_id = job_with_deliveries(settings, factory, [("9.1", "/o/1.dcm")])
        with factory() as s:
            (row,) = jobs.deliveries_of(s, job_id)

        def fail() -> tuple[DeliveryStatus, float]:
            status = deliveries.record_failure(factory, row.id, "", "refused with status 0xA700", policy)
            with factory() as s:
                again = s.get(Delivery, row.id)
                assert again is not None
            return status, (again.next_attempt_at - utcnow()).total_seconds()

        waits = []
        for _ in range(5):
            status, wait = fail()
            assert status == DeliveryStatus.PENDING
            waits.append(round(wait))
        assert waits == [10, 20, 40, 40, 40]
        with factory.begin() as s:  # 5 s short of its max age: the next try is at that age, not 40 s on
            s.execute(update(Delivery).values(queued_at=utcnow() - timedelta(hours=1) + timedelta(seconds=5)))
        status, wait = fail()
        assert status == DeliveryStatus.PENDING and 3 <= wait <= 5
        with factory.begin() as s:
            s.execute(update(Delivery).values(queued_at=utcnow() - timedelta(hours=1, seconds=1)))
        assert fail()[0] == DeliveryStatus.DEAD
        assert jobs.settle_job(factory, job_id) == JobStatus.FAILED
        with factory() as s:
            job = s.get(Job, job_id)
        assert job is not None and job.error_class == "DeliveryDead"
        assert job.error_message == "CT to PACS: dead after 7 attempt(s): refused with status 0xA700"
    finally:
        factory.kw["bind"].dispose()


def test_a_restarted_worker_frees_the_leases_of_its_dead_processes_only(tmp_path: Path, database_url: str,
                                                                        scp: RecordingScp,
                                                                        nsclc_ct_files: list[Path]) -> None:
    settings = _settings(tmp_path, database_url, scp)
    factory = open_index(database_url)
    job_with_deliveries(settings, factory, sop_uids_and_paths(nsclc_ct_files[:4]))
    holders = ["node-a/999999999/dead", f"node-a/{os.getpid()}/alive", "node-b/999999999/other", "node-a/x/odd"]
    until = utcnow() + timedelta(minutes=10)
    with factory.begin() as s:
        ids = list(s.scalars(select(Delivery.id).order_by(Delivery.id)))
        for row_id, owner in zip(ids, holders, strict=True):
            s.execute(update(Delivery).where(Delivery.id == row_id).values(lease_owner=owner, lease_until=until))
    # a dead pid of this worker id is freed; a live one, another worker id, and an odd owner keep their lease
    assert deliveries.release_dead_holders(factory, "node-a", process_alive) == 1
    with factory() as s:
        owners = list(s.scalars(select(Delivery.lease_owner).order_by(Delivery.id)))
    assert owners == ["", *holders[1:]]
    sent = DeliveryLoop(settings, factory, "node-a").deliver_due()  # the freed one goes at once
    assert sent == 1 and len(scp.received) == 1
