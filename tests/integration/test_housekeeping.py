"""Retention and the emergency clean-up on a real SQLite index and real files (free disk simulated here;
tests/integration/test_housekeeping_filesystem.py runs them on a real small filesystem)."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import jobs, retention
from dicom_node.db.engine import open_index
from dicom_node.db.tables import Delivery, DeliveryStatus, Instance, Job, Series, SeriesState
from dicom_node.errors import StorageError
from dicom_node.housekeeping import MB, Report, run_housekeeping
from dicom_node.scheduler import start_scheduler
from dicom_node.settings import Settings
from tests.conftest import REPO, make_settings
from tests.housekeeping_helpers import ACTION, STAGES, files_under, make_series

UNDELIVERED = [stage for stage in STAGES if stage not in ("delivered", "no_rule")]


@pytest.fixture(params=["sqlite", "postgres"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    """A node whose index is SQLite (the default) or PostgreSQL (several workers)."""
    url = f"sqlite:///{tmp_path / 'index.sqlite'}" if request.param == "sqlite" \
        else request.getfixturevalue("postgres_url")
    settings = make_settings(tmp_path, node={"database_url": url},
                             housekeeping={"keep_instances_days": 7, "keep_outputs_days": 30,
                                           "emergency_free_disk_mb": 0})
    factory = open_index(settings.node.database_url)
    yield settings, factory
    factory.kw["bind"].dispose()


def _what(report: Report) -> list[tuple[str, int, int, int, str]]:
    """The removals of a run without their age (which moves on between two runs)."""
    return [(r.kind, r.ident, r.files, r.size_bytes, r.reason) for r in report.removals]


def _instance_rows(factory: sessionmaker[Session], series_id: int) -> int:
    with factory() as s:
        return int(s.scalar(select(func.count(Instance.id)).where(Instance.series_id == series_id)) or 0)


def test_delivered_old_series_are_removed_and_their_history_kept(node: tuple[Settings, sessionmaker[Session]]) -> None:
    settings, factory = node
    old = make_series(settings, factory, 1, "delivered", age_days=40)
    week = make_series(settings, factory, 2, "delivered", age_days=8)  # instances go, outputs (30 days) stay
    recent = make_series(settings, factory, 3, "delivered", age_days=1)
    ignored = make_series(settings, factory, 4, "no_rule", age_days=8)  # nothing to wait for
    report = run_housekeeping(settings, factory)
    assert sorted((r.kind, r.ident) for r in report.removals) == sorted(
        [("series", old.series_id), ("series", week.series_id), ("series", ignored.series_id),
         ("outputs", old.job_id)])
    for gone in (old, week, ignored):
        assert not any(p.exists() for p in gone.files)
        assert not gone.files[0].parent.exists()  # the empty series folder goes too
        assert _instance_rows(factory, gone.series_id) == 0
    assert old.output_dir is not None and not old.output_dir.exists()
    assert week.output_dir is not None and week.output_dir.is_dir()
    assert all(p.exists() for p in recent.files) and _instance_rows(factory, recent.series_id) == 3
    with factory() as s:
        series = {row.id: row for row in s.scalars(select(Series))}
        assert {series[m.series_id].state for m in (old, week, ignored)} == {SeriesState.PURGED}
        assert all(series[m.series_id].purged_at is not None for m in (old, week, ignored))
        assert series[recent.series_id].state == SeriesState.DISPATCHED and series[recent.series_id].purged_at is None
        # the audit trail: every job and delivery row is still there, the removed folder's job says when
        assert len(s.scalars(select(Job)).all()) == 3 and len(s.scalars(select(Delivery)).all()) == 6
        assert s.get(Job, old.job_id).outputs_purged_at is not None  # type: ignore[union-attr]
        assert s.get(Job, week.job_id).outputs_purged_at is None  # type: ignore[union-attr]
    removal = next(r for r in report.removals if r.ident == old.series_id and r.kind == "series")
    assert (removal.files, removal.size_bytes, removal.reason) == (3, old.size_bytes, "retention")
    assert 39.9 < removal.age_days < 40.1
    assert run_housekeeping(settings, factory).removals == []  # nothing is removed twice


@pytest.mark.parametrize("stage", UNDELIVERED)
def test_undelivered_series_are_kept_however_old(node: tuple[Settings, sessionmaker[Session]], stage: str) -> None:
    settings, factory = node
    made = make_series(settings, factory, 1, stage, age_days=400)
    before = files_under(settings.node.storage_dir, settings.worker.output_dir)
    report = run_housekeeping(settings, factory)
    assert report.removals == []
    assert files_under(settings.node.storage_dir, settings.worker.output_dir) == before
    assert _instance_rows(factory, made.series_id) == 3


def test_a_delivery_not_sent_keeps_its_series_and_outputs_even_when_the_job_reads_done(
        node: tuple[Settings, sessionmaker[Session]]) -> None:
    """A delivery queued again (sent once more, to a new destination) must keep what it will send."""
    settings, factory = node
    made = make_series(settings, factory, 1, "delivered", age_days=60)
    with factory.begin() as s:
        delivery = s.scalars(select(Delivery).where(Delivery.job_id == made.job_id)).first()
        assert delivery is not None
        delivery.status = DeliveryStatus.PENDING
    assert run_housekeeping(settings, factory).removals == []
    assert all(p.exists() for p in made.files) and made.output_dir is not None and made.output_dir.is_dir()


def test_a_series_with_one_delivered_job_and_one_pending_is_kept(node: tuple[Settings, sessionmaker[Session]]) -> None:
    settings, factory = node
    made = make_series(settings, factory, 1, "delivered", age_days=60)
    with factory.begin() as s:  # a second rule's job on the same series, its delivery still pending
        series = s.get(Series, made.series_id)
        assert series is not None
        second = jobs.enqueue(s, series.id, series.series_uid, ACTION.model_copy(update={"rule_name": "tps"}), 3)
        assert second is not None
        s.flush()
        second_id = second.id
    assert jobs.claim(factory, "test-worker") == second_id
    jobs.add_deliveries(factory, second_id, [Delivery(destination="TPS", kind="RTSTRUCT", sop_uid="9.9",
                                                      sop_class_uid="1.3", path="/o/rtstruct.dcm")])
    report = run_housekeeping(settings, factory)
    assert [(r.kind, r.ident) for r in report.removals] == [("outputs", made.job_id)]  # its own deliveries were sent
    assert all(p.exists() for p in made.files) and _instance_rows(factory, made.series_id) == 3


def _snapshot(settings: Settings, factory: sessionmaker[Session]) -> tuple[set[Path], list[tuple[Any, ...]]]:
    with factory() as s:
        rows: list[tuple[Any, ...]] = [(r.id, r.state, r.instance_count, r.purged_at)
                                       for r in s.scalars(select(Series).order_by(Series.id))]
        rows += [(j.id, j.status, j.outputs_purged_at) for j in s.scalars(select(Job).order_by(Job.id))]
        rows += [(i.id,) for i in s.scalars(select(Instance).order_by(Instance.id))]
    return files_under(settings.node.storage_dir, settings.worker.output_dir), rows


def test_dry_run_removes_nothing_and_lists_exactly_what_the_run_removes(
        node: tuple[Settings, sessionmaker[Session]]) -> None:
    settings, factory = node
    for number, (stage, days) in enumerate([("delivered", 45), ("pending", 45), ("delivered", 10), ("no_rule", 9),
                                            ("job_failed", 45), ("delivered", 2)]):
        make_series(settings, factory, number, stage, age_days=days)
    before = _snapshot(settings, factory)
    dry = run_housekeeping(settings, factory, dry_run=True)
    assert _snapshot(settings, factory) == before
    assert len(dry.removals) == 4 and dry.lines()[0].startswith("would remove ")
    real = run_housekeeping(settings, factory)
    assert _what(real) == _what(dry)
    files_gone = before[0] - files_under(settings.node.storage_dir, settings.worker.output_dir)
    assert len(files_gone) == sum(r.files for r in real.removals)


class _Usage(NamedTuple):
    total: int
    used: int
    free: int


def _simulated_disk(capacity: int, *roots: Path) -> Any:
    """A disk of ``capacity`` bytes holding exactly the files under ``roots``."""
    def disk_usage(_path: Path) -> _Usage:
        used = sum(p.stat().st_size for p in files_under(*roots))
        return _Usage(capacity, used, capacity - used)
    return disk_usage


def test_emergency_removes_the_oldest_delivered_work_first_and_keeps_undelivered(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, housekeeping={"keep_instances_days": 0, "keep_outputs_days": 0,
                                                     "emergency_free_disk_mb": 3})
    factory = open_index(settings.node.database_url)
    mb = {"instances": 4, "instance_bytes": MB // 4, "output_bytes": MB // 8}  # a series: 1 MB, outputs 0.25 MB
    pending = make_series(settings, factory, 1, "pending", age_days=90, **mb)  # oldest, but undelivered
    oldest = make_series(settings, factory, 2, "delivered", age_days=20, **mb)
    newer = make_series(settings, factory, 3, "delivered", age_days=10, **mb)
    newest = make_series(settings, factory, 4, "delivered", age_days=5, **mb)
    # 4 series (4 MB) and 4 output folders (1 MB) on a 7 MB disk: 2 MB free, 1 MB short of the threshold
    disk = _simulated_disk(7 * MB, settings.node.storage_dir, settings.worker.output_dir)
    dry = run_housekeeping(settings, factory, dry_run=True, disk_usage=disk)
    report = run_housekeeping(settings, factory, disk_usage=disk)
    assert _what(report) == _what(dry)
    assert [(r.kind, r.ident, r.reason) for r in report.removals] == [
        ("series", oldest.series_id, "emergency")]  # 2 MB + 1 MB: back at the threshold, nothing more goes
    assert disk(tmp_path).free >= 3 * MB and report.shortfall == ""
    assert all(p.exists() for m in (pending, newer, newest) for p in m.files)
    assert pending.output_dir is not None and pending.output_dir.is_dir()

    tighter = make_settings(tmp_path, housekeeping={"keep_instances_days": 0, "keep_outputs_days": 0,
                                                    "emergency_free_disk_mb": 4})
    report = run_housekeeping(tighter, factory, disk_usage=disk)
    # 3 MB free: the oldest job's outputs (finished 20 days ago) go before the newer series, by age
    assert [(r.kind, r.ident) for r in report.removals] == [("outputs", oldest.job_id), ("series", newer.series_id)]
    assert all(p.exists() for m in (pending, newest) for p in m.files)
    assert newer.output_dir is not None and newer.output_dir.is_dir()
    factory.kw["bind"].dispose()


def test_emergency_with_nothing_removable_logs_one_error_per_run(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path, housekeeping={"emergency_free_disk_mb": 100})
    factory = open_index(settings.node.database_url)
    waiting = [make_series(settings, factory, n, stage, age_days=30) for n, stage in enumerate(UNDELIVERED)]
    before = files_under(settings.node.storage_dir, settings.worker.output_dir)
    disk = _simulated_disk(10 * MB, settings.node.storage_dir, settings.worker.output_dir)
    for _run in range(2):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="dicom_node.housekeeping"):
            report = run_housekeeping(settings, factory, disk_usage=disk)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and report.removals == []
        assert f"{len(waiting)} series wait for their jobs or deliveries" in errors[0].getMessage()
        assert report.shortfall == errors[0].getMessage()
    assert files_under(settings.node.storage_dir, settings.worker.output_dir) == before
    factory.kw["bind"].dispose()


def test_a_series_that_changes_after_the_plan_is_kept(node: tuple[Settings, sessionmaker[Session]]) -> None:
    settings, factory = node
    made = make_series(settings, factory, 1, "delivered", age_days=30)
    with factory() as s:
        (candidate,) = retention.removable_series(s)
    with factory.begin() as s:  # a late instance: the series is receiving again
        s.get(Series, made.series_id).instance_count += 1  # type: ignore[union-attr]
        s.get(Series, made.series_id).state = SeriesState.RECEIVING  # type: ignore[union-attr]
    with factory.begin() as s:
        assert retention.purge_series(s, candidate) is None
    assert _instance_rows(factory, made.series_id) == 3


def test_an_unreadable_storage_volume_is_a_storage_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, housekeeping={"emergency_free_disk_mb": 100})
    factory = open_index(settings.node.database_url)
    with pytest.raises(StorageError, match=r"cannot read the free disk of node\.storage_dir"):
        run_housekeeping(settings, factory)  # storage_dir was never made: nothing received yet
    factory.kw["bind"].dispose()


def test_the_listener_schedules_housekeeping_unless_everything_is_off(tmp_path: Path) -> None:
    for keep, expected in ((7, 10.0), (0, None)):
        settings = make_settings(tmp_path, housekeeping={"keep_instances_days": keep, "keep_outputs_days": 0,
                                                         "emergency_free_disk_mb": 0, "interval_minutes": 10})
        factory = open_index(settings.node.database_url)
        scheduler = start_scheduler(settings, factory)
        try:
            job = scheduler.get_job("housekeeping")
            assert (job.trigger.interval.total_seconds() / 60 if job is not None else None) == expected
        finally:
            scheduler.shutdown(wait=False)
            factory.kw["bind"].dispose()


def test_the_command_lists_then_removes(tmp_path: Path) -> None:
    text = (REPO / "config" / "node.example.toml").read_text()
    for before, after in (('"sqlite:///../var/index.sqlite"', f'"sqlite:///{tmp_path / "index.sqlite"}"'),
                          ('"../var/storage"', f'"{tmp_path / "storage"}"'),
                          ('"../var/outputs"', f'"{tmp_path / "outputs"}"'), ('"../var/models"', '""'),
                          ("emergency_free_disk_mb = 2048", "emergency_free_disk_mb = 0")):
        assert before in text
        text = text.replace(before, after)
    config = tmp_path / "node.toml"
    config.write_text(text)
    settings = make_settings(tmp_path)  # the same index, storage and outputs folders as the file
    factory = open_index(settings.node.database_url)
    old = make_series(settings, factory, 1, "delivered", age_days=40)
    make_series(settings, factory, 2, "pending", age_days=40)
    factory.kw["bind"].dispose()

    def cli(*args: str) -> list[str]:
        proc = subprocess.run([sys.executable, "-m", "dicom_node.cli", "housekeeping", "--config", str(config),
                               *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "1.2.826" not in proc.stdout + proc.stderr and "P1" not in proc.stdout  # no UIDs, no patient
        return proc.stdout.splitlines()

    listed = cli("--dry-run")
    assert listed[:2] == [f"would remove series {old.series_id}: 3 instance(s), 0.0 MB, 40.0 days old (retention)",
                          f"would remove outputs of job {old.job_id}: 2 file(s), 0.0 MB, 40.0 days old (retention)"]
    assert all(p.exists() for p in old.files)
    done = cli()
    assert [line.replace("removed ", "would remove ", 1) for line in done[:2]] == listed[:2]
    assert done[2] == "removed 1 series (3 instances, 0.0 MB) and 1 output folder(s) (0.0 MB)"
    assert not any(p.exists() for p in old.files)
