"""Retention and emergency clean-up of received instances and job outputs, run in the listener by APScheduler.

Only fully delivered work is ever removed (:mod:`dicom_node.db.retention` says exactly what that is): a
series whose jobs are all done with every delivery sent, or that no routing rule matched; a job's
output folder once every delivery of that job was sent. A series still receiving, or with a queued,
running, held for review, delivering or failed job, or with a delivery pending or failed, keeps its
instances and its jobs keep their outputs, however old and however full the disk.

- Retention: instances go ``housekeeping.keep_instances_days`` after the series' last instance arrived,
  output folders ``keep_outputs_days`` after their job finished; 0 keeps them forever.
- Emergency: when free disk on the storage volume is below ``emergency_free_disk_mb``, the oldest removable
  series and output folders (those on the same volume) go first, whatever their age, until the free space
  is back above it. When nothing more is removable one ERROR says so, once per run (each interval).

What stays in the index: patients, studies, series, jobs and deliveries (the audit trail: what was
received, when, what ran and what was sent where). What goes: the instance files and their rows, and
the job folders (``job-NNNNNN/`` under ``worker.output_dir``; delivery rows keep the paths they had).
A purged series is marked ``purged`` with ``purged_at``; a job whose folder went gets ``outputs_purged_at``.

Every removal is logged at INFO with the series or job id, file count, bytes, age and reason; never a
UID, path or patient attribute. A dry run computes the same list and removes nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import retention
from dicom_node.db.retention import OutputCandidate, SeriesCandidate
from dicom_node.db.tables import utcnow
from dicom_node.errors import IndexError_, StorageError
from dicom_node.settings import Settings

log = logging.getLogger(__name__)

MB = 1024 * 1024
RETENTION = "retention"
EMERGENCY = "emergency"


class DiskSpace(Protocol):
    @property
    def free(self) -> int: ...


DiskUsage = Callable[[Path], DiskSpace]


@dataclass(frozen=True)
class Removal:
    """One series' instances or one job's output folder, removed or (in a dry run) to be removed."""

    kind: str  # "series" (its received instances) or "outputs" (a job's folder)
    ident: int  # series id, or job id
    files: int
    size_bytes: int
    age_days: float
    reason: str  # RETENTION or EMERGENCY

    def describe(self) -> str:
        what = f"series {self.ident}: {self.files} instance(s)" if self.kind == "series" \
            else f"outputs of job {self.ident}: {self.files} file(s)"
        return f"{what}, {self.size_bytes / MB:.1f} MB, {self.age_days:.1f} days old ({self.reason})"


@dataclass
class Report:
    """What one run removed (or would remove), and why it stopped short of the emergency threshold if it did."""

    dry_run: bool
    removals: list[Removal] = field(default_factory=list)
    shortfall: str = ""  # set when free disk stayed below the emergency threshold

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        out = [f"{verb} {r.describe()}" for r in self.removals]
        series = [r for r in self.removals if r.kind == "series"]
        outputs = [r for r in self.removals if r.kind == "outputs"]
        out.append(f"{verb} {len(series)} series ({sum(r.files for r in series)} instances, "
                   f"{sum(r.size_bytes for r in series) / MB:.1f} MB) and {len(outputs)} output folder(s) "
                   f"({sum(r.size_bytes for r in outputs) / MB:.1f} MB)")
        if self.shortfall:
            out.append(self.shortfall)
        return out


def job_output_dir(output_dir: Path, job_id: int) -> Path:
    """The folder a worker writes a job's outputs to (as dicom_node.worker names it)."""
    return output_dir / f"job-{job_id:06d}"


def _folder_size(folder: Path) -> tuple[int, int]:
    files = size = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            try:
                size += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
            files += 1
    return files, size


def _days(age: timedelta) -> float:
    return max(0.0, age.total_seconds() / 86400)


def _same_volume(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False


class Housekeeper:
    """One run: the retention pass, then the emergency pass; ``dry_run`` plans the same and removes nothing."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session], *, dry_run: bool = False,
                 disk_usage: DiskUsage = shutil.disk_usage, now: datetime | None = None) -> None:
        self.settings, self.factory, self.disk_usage = settings, factory, disk_usage
        self.now = now or utcnow()
        self.report = Report(dry_run=dry_run)
        self._done_series: set[int] = set()
        self._done_jobs: set[int] = set()

    @property
    def dry_run(self) -> bool:
        return self.report.dry_run

    def run(self) -> Report:
        try:
            self._retention()
            self._emergency()
        except SQLAlchemyError as exc:
            raise IndexError_(f"housekeeping cannot read or update the index: {exc}") from exc
        return self.report

    # -- what is removable ----------------------------------------------------------------------
    def _series(self, received_before: datetime | None) -> list[SeriesCandidate]:
        with self.factory() as session:
            found = retention.removable_series(session, received_before)
        return [c for c in found if c.series_id not in self._done_series]

    def _outputs(self, finished_before: datetime | None) -> list[OutputCandidate]:
        with self.factory() as session:
            found = retention.removable_outputs(session, finished_before)
        return [c for c in found if c.job_id not in self._done_jobs]

    def _retention(self) -> None:
        keep = self.settings.housekeeping
        if keep.keep_instances_days:
            for series in self._series(self.now - timedelta(days=keep.keep_instances_days)):
                self._remove_series(series, RETENTION)
        if keep.keep_outputs_days:
            for job in self._outputs(self.now - timedelta(days=keep.keep_outputs_days)):
                self._remove_outputs(job, RETENTION)

    # -- emergency --------------------------------------------------------------------------------
    def _free_bytes(self) -> int:
        try:
            return int(self.disk_usage(self.settings.node.storage_dir).free)
        except OSError as exc:
            raise StorageError(f"cannot read the free disk of node.storage_dir: {exc.strerror or exc}") from exc

    def _emergency(self) -> None:
        threshold_mb = self.settings.housekeeping.emergency_free_disk_mb
        if not threshold_mb:
            return
        threshold, measured = threshold_mb * MB, self._free_bytes()
        if measured >= threshold:
            return
        output_dir = self.settings.worker.output_dir
        outputs_count = _same_volume(self.settings.node.storage_dir, output_dir)
        queue: list[tuple[datetime, SeriesCandidate | OutputCandidate]] = [
            (s.last_received_at, s) for s in self._series(None)]
        if outputs_count:
            queue += [(j.finished_at, j) for j in self._outputs(None)]
        queue.sort(key=lambda item: (item[0], isinstance(item[1], OutputCandidate)))
        log.warning("free disk %.0f MB is below the emergency threshold %d MB: removing the oldest fully delivered "
                    "work (%d candidate(s))", measured / MB, threshold_mb, len(queue))
        start, freed = measured, 0
        for _when, candidate in queue:
            # the estimate counts too: some filesystems report freed blocks late, and a dry run removes nothing
            free = start + freed if self.dry_run else max(self._free_bytes(), start + freed)
            if free >= threshold:
                return
            removal = self._remove_series(candidate, EMERGENCY) if isinstance(candidate, SeriesCandidate) \
                else self._remove_outputs(candidate, EMERGENCY)
            freed += removal.size_bytes if removal is not None else 0
        free = start + freed if self.dry_run else max(self._free_bytes(), start + freed)
        if free < threshold:
            waiting = self._waiting_series()
            self.report.shortfall = (
                f"free disk {free / MB:.0f} MB is still below the emergency threshold {threshold_mb} MB and "
                f"nothing more is fully delivered: {waiting} series wait for their jobs or deliveries and are "
                f"kept{'' if outputs_count else f'; {output_dir} is on another volume'}")
            log.error("%s", self.report.shortfall)

    def _waiting_series(self) -> int:
        with self.factory() as session:
            return retention.waiting_series(session)

    # -- removing ---------------------------------------------------------------------------------
    def _remove_series(self, series: SeriesCandidate, reason: str) -> Removal | None:
        removal = Removal("series", series.series_id, series.files, series.size_bytes,
                          _days(self.now - series.last_received_at), reason)
        if not self.dry_run:
            with self.factory.begin() as session:
                paths = retention.purge_series(session, series, self.now)
            if paths is None:
                log.info("series %d kept: it changed since it was found removable", series.series_id)
                return None
            self._delete_instance_files(series.series_id, paths)
            log.info("removed %s", removal.describe())
        self._done_series.add(series.series_id)
        self.report.removals.append(removal)
        return removal

    def _delete_instance_files(self, series_id: int, paths: list[str]) -> None:
        """Rows go first (committed above): a crash here leaves orphan files, never rows without files."""
        root = self.settings.node.storage_dir.resolve()
        folders: set[Path] = set()
        failed: list[str] = []
        for text in paths:
            path = Path(text)
            if not path.resolve().is_relative_to(root):
                failed.append("outside node.storage_dir")
                continue
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                failed.append(exc.strerror or type(exc).__name__)
            folders.add(path.parent)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            _remove_empty_folders(folder, root)
        if failed:
            log.warning("series %d: %d file(s) not removed (%s)", series_id, len(failed), failed[0])

    def _remove_outputs(self, job: OutputCandidate, reason: str) -> Removal | None:
        folder = job_output_dir(self.settings.worker.output_dir, job.job_id)
        files, size = _folder_size(folder)
        removal = Removal("outputs", job.job_id, files, size, _days(self.now - job.finished_at), reason)
        if not self.dry_run:
            with self.factory.begin() as session:
                if not retention.mark_outputs_purged(session, job.job_id, self.now):
                    log.info("outputs of job %d kept: the job changed since they were found removable", job.job_id)
                    return None
            _remove_tree(folder, job.job_id)
            log.info("removed %s", removal.describe())
        self._done_jobs.add(job.job_id)
        self.report.removals.append(removal)
        return removal


def _remove_empty_folders(folder: Path, root: Path) -> None:
    """The series folder, then its study folder, when empty; never ``root`` itself."""
    while folder.resolve() != root and folder.resolve().is_relative_to(root):
        try:
            folder.rmdir()
        except OSError:  # not empty (another series of the study), or gone already
            return
        folder = folder.parent


def _remove_tree(folder: Path, job_id: int) -> None:
    """A job folder, bottom up; what cannot be removed is counted and logged once (without its path)."""
    failed: list[str] = []
    for root, dirs, names in os.walk(folder, topdown=False):
        for name in names:
            try:
                os.unlink(os.path.join(root, name))
            except FileNotFoundError:
                continue
            except OSError as exc:
                failed.append(exc.strerror or type(exc).__name__)
        for name in dirs:
            try:
                os.rmdir(os.path.join(root, name))
            except OSError:
                continue  # not empty: a file in it failed, already counted
    try:
        folder.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        failed.append(exc.strerror or type(exc).__name__)
    if failed:
        log.warning("outputs of job %d: %d entr(ies) not removed (%s)", job_id, len(failed), failed[0])


def run_housekeeping(settings: Settings, factory: sessionmaker[Session], *, dry_run: bool = False,
                     disk_usage: DiskUsage = shutil.disk_usage, now: datetime | None = None) -> Report:
    """One housekeeping run now: what it removed, or with ``dry_run`` what it would remove."""
    return Housekeeper(settings, factory, dry_run=dry_run, disk_usage=disk_usage, now=now).run()


def is_enabled(settings: Settings) -> bool:
    keep = settings.housekeeping
    return bool(keep.keep_instances_days or keep.keep_outputs_days or keep.emergency_free_disk_mb)


def run_safely(settings: Settings, factory: sessionmaker[Session]) -> None:
    """The scheduled run: a failure is logged and retried next interval; the listener keeps going."""
    try:
        run_housekeeping(settings, factory)
    except Exception:
        log.exception("housekeeping run failed")
