"""Series in a real index with real files, each at one stage of its life, for the housekeeping tests.

Rows are made by the index and job-queue functions the node itself uses (record_instance, enqueue,
add_deliveries, mark_sent, settle_job, finish); only the clock is moved back (received and finished
times), which is what makes a series old.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import deliveries, index, jobs, review
from dicom_node.db.index import InstanceMeta
from dicom_node.db.tables import Delivery, Instance, Job, JobStatus, Series, SeriesState, utcnow
from dicom_node.housekeeping import job_output_dir
from dicom_node.receive.storage import InstanceStore
from dicom_node.routing import RoutedAction
from dicom_node.settings import Settings

ACTION = RoutedAction(rule_name="ct", model_id="builtin", outputs=("SEG", "RTSTRUCT"), seg_type="BINARY")
# what each stage leaves in the index: how far its job and deliveries got
STAGES = ("delivered", "no_rule", "pending", "delivery_failed", "job_failed", "review", "running", "queued",
          "receiving")


@dataclass(frozen=True)
class MadeSeries:
    series_id: int
    job_id: int | None
    files: tuple[Path, ...]
    output_dir: Path | None  # the job's folder, with its files
    size_bytes: int  # of the instance files, as written


def make_series(settings: Settings, factory: sessionmaker[Session], number: int, stage: str, age_days: float,
                instances: int = 3, instance_bytes: int = 4096, output_bytes: int = 8192) -> MadeSeries:
    """A series of ``instances`` files received ``age_days`` ago, its job (if any) at ``stage``."""
    assert stage in STAGES, stage
    store = InstanceStore(settings.node.storage_dir, 0)
    study_uid, series_uid = f"1.2.826.0.1.3680043.8.498.{number}", f"1.2.826.0.1.3680043.8.498.{number}.1"
    files = []
    for n in range(1, instances + 1):
        sop_uid = f"{series_uid}.{n}"
        path = store.path_for(study_uid, series_uid, sop_uid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(instance_bytes))
        meta = InstanceMeta(sop_uid=sop_uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                            transfer_syntax_uid="1.2.840.10008.1.2.1", study_uid=study_uid, series_uid=series_uid,
                            patient_key=f"P{number}", modality="CT", instance_number=n, slice_position=float(n))
        assert index.record_instance(factory, meta, str(path), instance_bytes, None)
        files.append(path)
    with factory.begin() as s:
        series_id = s.scalars(select(Series.id).where(Series.series_uid == series_uid)).one()
        job_id = None
        if stage == "no_rule":
            index.mark_series(s, series_id, SeriesState.IGNORED, "test; no routing rule matched", instances)
        elif stage != "receiving":
            index.mark_series(s, series_id, SeriesState.DISPATCHED, "test", instances)
            job = jobs.enqueue(s, series_id, series_uid, ACTION, instances)
            assert job is not None
            s.flush()
            job_id = job.id
    folder = None if job_id is None else _advance_job(settings, factory, job_id, stage, output_bytes)
    age(factory, series_id, age_days)
    return MadeSeries(series_id, job_id, tuple(files), folder, instances * instance_bytes)


def _advance_job(settings: Settings, factory: sessionmaker[Session], job_id: int, stage: str,
                 output_bytes: int) -> Path | None:
    if stage == "queued":
        return None
    assert jobs.claim(factory, "test-worker") == job_id
    if stage == "running":
        return None
    folder = job_output_dir(settings.worker.output_dir, job_id)
    folder.mkdir(parents=True)
    (folder / "seg.dcm").write_bytes(os.urandom(output_bytes))
    (folder / "rtstruct.dcm").write_bytes(os.urandom(output_bytes))
    if stage == "job_failed":
        jobs.finish(factory, job_id, JobStatus.FAILED, error=ValueError("segmentation failed"))
        return folder
    if stage == "review":  # outputs written, held for a person's decision: no delivery rows
        assert review.hold(factory, job_id)
        return folder
    jobs.add_deliveries(factory, job_id, [
        Delivery(destination="PACS", kind="SEG", sop_uid=f"9.{job_id}.1", sop_class_uid="1.2",
                 path=str(folder / "seg.dcm")),
        Delivery(destination="PACS", kind="RTSTRUCT", sop_uid=f"9.{job_id}.2", sop_class_uid="1.3",
                 path=str(folder / "rtstruct.dcm")),
    ])
    with factory() as s:
        seg, rtstruct = jobs.deliveries_of(s, job_id)
    jobs.mark_sent(factory, seg.id)
    if stage == "delivered":
        jobs.mark_sent(factory, rtstruct.id)
    elif stage == "delivery_failed":
        deliveries.mark_dead(factory, rtstruct.id, "refused")
    jobs.settle_job(factory, job_id)
    with factory() as s:
        expected = {"delivered": JobStatus.DONE, "delivery_failed": JobStatus.FAILED, "pending": JobStatus.DELIVERING}
        assert s.get(Job, job_id).status == expected[stage]  # type: ignore[union-attr]
    return folder


def age(factory: sessionmaker[Session], series_id: int, days: float) -> None:
    """Move the series' receipt, and its jobs' end, ``days`` into the past."""
    when = utcnow() - timedelta(days=days)
    with factory.begin() as s:
        s.execute(update(Series).where(Series.id == series_id).values(first_received_at=when, last_received_at=when))
        s.execute(update(Instance).where(Instance.series_id == series_id).values(received_at=when))
        s.execute(update(Job).where(Job.series_id == series_id, Job.finished_at.is_not(None))
                  .values(finished_at=when))


def files_under(*roots: Path) -> set[Path]:
    return {p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()}
