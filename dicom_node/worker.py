"""The worker: claim a job -> run the pipeline -> record deliveries; a delivery thread sends them.
Graceful on SIGTERM; a database, output or network error is recorded and survived, never the end of the process.

A job runs the action stored with it when its series was routed (``dicom_node.routing.RoutedAction``):
model, object kinds, template, SEG variants and destinations. The worker's own config is not asked
what a rule means, and deliveries go to the address, timeout and retry policy the snapshot holds:
a destination renamed or re-addressed in the config after enqueue does not change where a queued
(or retrying) job's objects go; series routed after the change follow the new config. Sending by
hand (``dicom-node send DEST``) uses the config. A job row enqueued before snapshots existed fails
with a message saying to re-send the series, and so do its pending deliveries.

A job whose rule requires review writes its outputs and is held (state ``review``, no delivery rows)
until a physicist approves or rejects it (:mod:`dicom_node.review`); approving records the rows then.

Crash safety: a job's outputs and its delivery rows are committed together before anything is
sent; a restarted worker (same id) takes its running jobs back, each one counted as an attempt (a
job that kills its worker fails after ``worker.max_attempts``), and a delivery marked SENT is never
sent again. The window between a destination's success and our commit is one object; a PACS keeps
the first copy of a SOP Instance UID, so a repeat there is harmless. Sending is in
:mod:`dicom_node.delivery`, in a thread of its own: a destination that hangs holds up no job.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from dicom_node import pipeline
from dicom_node.db import jobs, review, supersession
from dicom_node.db.index import series_instance_paths
from dicom_node.db.tables import Job, JobStatus
from dicom_node.delivery import DeliveryLoop, describe, failure_backoff
from dicom_node.outputs.revision import revision_from
from dicom_node.review.events import review_needed
from dicom_node.review.held import keep_for_review
from dicom_node.routing import RoutingError, TemplateSnapshot
from dicom_node.settings import Settings, Template
from segmenter.registry import Engine, get_engine

log = logging.getLogger(__name__)


# the listener commits an instance's row while it writes the file; a file still missing after this
# long belongs to an instance that was never acknowledged (its write failed or the listener died)
MISSING_FILE_GRACE_SECONDS = 2.0


def existing_paths(paths: list[Path], grace_seconds: float = MISSING_FILE_GRACE_SECONDS) -> tuple[Path, ...]:
    """The paths whose files exist, waiting once briefly for any that are still being written."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        time.sleep(grace_seconds)
        missing = [p for p in missing if not p.exists()]
    if missing:
        log.warning("%d indexed instance(s) have no file and are left out: never acknowledged "
                    "(the listener stopped or failed while writing them)", len(missing))
        gone = set(missing)
        paths = [p for p in paths if p not in gone]
    return tuple(paths)


class Worker:
    def __init__(self, settings: Settings, factory: sessionmaker[Session], worker_id: str) -> None:
        self.settings = settings
        self.factory = factory
        self.worker_id = worker_id
        self.stop_event = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------
    def run_forever(self) -> None:
        """Jobs in this thread, deliveries in another, until ``stop_event``; no error ends either loop."""
        self._take_back_own_jobs()
        sender = DeliveryLoop(self.settings, self.factory, self.worker_id)
        sending = threading.Thread(target=sender.run_forever, args=(self.stop_event,), name="delivery", daemon=True)
        sending.start()
        log.info("worker %s polling for jobs", self.worker_id)
        failures = 0
        while not self.stop_event.is_set():
            try:
                did_work = self.run_once(deliver=False)
                failures = 0
            except Exception as exc:  # a database or output fault: logged, the loop goes on after a pause
                failures += 1
                log.error("worker round failed (%d in a row): %s", failures, describe(exc))
                self.stop_event.wait(failure_backoff(failures))
                continue
            if not did_work:
                self.stop_event.wait(self.settings.worker.poll_interval_seconds)
        sending.join(timeout=self.settings.worker.delivery_lease_seconds)
        log.info("worker %s stopped", self.worker_id)

    def _take_back_own_jobs(self) -> None:
        """The jobs this worker id held when it died are an attempt each (retried until the database answers)."""
        failures = 0
        while not self.stop_event.is_set():
            try:
                queued, failed = jobs.release_own(self.factory, self.worker_id, self.settings.worker.max_attempts)
            except Exception as exc:
                failures += 1
                log.error("taking back this worker's jobs failed (%d in a row): %s", failures, describe(exc))
                self.stop_event.wait(failure_backoff(failures))
                continue
            if queued or failed:
                log.warning("this worker died during %d job(s): %d queued again, %d failed after %d attempts",
                            queued + failed, queued, failed, self.settings.worker.max_attempts)
            return

    def run_once(self, deliver: bool = True) -> bool:
        """One round: requeue stale jobs, process one job, and send due deliveries unless a delivery
        thread does (``deliver=False``). True if work was done."""
        w = self.settings.worker
        jobs.requeue_stale(self.factory, timedelta(seconds=w.stale_after_seconds), w.max_attempts)
        job_id = jobs.claim(self.factory, self.worker_id)
        if job_id is not None:
            try:
                self.process(job_id)
            except Exception as exc:  # outside the job's own failures: the database, the disk
                log.error("job %d: the worker could not finish it: %s", job_id, describe(exc))
                self._give_back(job_id, describe(exc))
        sent = self.deliver_due() if deliver else 0
        return job_id is not None or sent > 0

    def _give_back(self, job_id: int, error: str) -> None:
        try:
            jobs.give_back(self.factory, job_id, self.worker_id, self.settings.worker.max_attempts, error)
        except Exception as exc:  # still down: the stale-heartbeat requeue takes the job back later
            log.error("job %d: recording the failure failed too: %s", job_id, describe(exc))

    # -- one job ---------------------------------------------------------------------------
    def engine(self, model_id: str) -> Engine:
        # the registry keeps engines loaded between jobs (loading weights costs more than a small
        # job) and reloads a model whose manifest changed, so a new version is picked up
        models = self.settings.models
        return get_engine(model_id, models.dir, models.device, threads=models.threads,
                          memory_budget_bytes=int(models.memory_budget_gb * 1024**3))

    def process(self, job_id: int) -> None:
        with self.factory() as session:
            job = session.get(Job, job_id)
            if job is None:
                return
            stored, series_id = job.action, job.series_id
        try:
            action = jobs.parse_action(job_id, stored)
        except RoutingError as exc:
            log.error("job %d failed: %s", job_id, exc)
            jobs.finish(self.factory, job_id, JobStatus.FAILED, error=exc)
            return
        with self.factory() as session:
            paths = existing_paths([Path(p) for p in series_instance_paths(session, series_id)])
            replaced = supersession.revision_of(session, job_id)
        revision = None if replaced is None else revision_from(replaced.version, replaced.objects)
        if replaced is not None:
            log.info("job %d: outputs are version %d, replacing those job %d delivered", job_id, replaced.version,
                     replaced.job_id)
        out_dir = self.settings.worker.output_dir / f"job-{job_id:06d}"
        if out_dir.exists():
            shutil.rmtree(out_dir)  # leftovers of an attempt that never recorded its deliveries
        log.info("job %d: %d instances, rule %s, model %s, outputs %s", job_id, len(paths), action.rule_name,
                 action.model_id, ",".join(action.outputs))
        beat = _Heartbeat(self, job_id)
        beat.start()
        try:
            engine = self.engine(action.model_id)
            if action.model_version and engine.version != action.model_version:
                raise RoutingError(f"model {action.model_id!r} is at version {engine.version!r}; the job was "
                                   f"routed to version {action.model_version!r}")
            jobs.set_model(self.factory, job_id, engine.version, str(getattr(engine, "device", "cpu")))
            output = pipeline.run(pipeline.JobInput(job_id, paths, action.outputs, out_dir,
                                                    settings_template(action.template), action.seg_types,
                                                    action.seg_max_segments, revision, action.catalogue()),
                                  engine, self.settings.identity, on_stage=beat.set_stage)
            rows = jobs.delivery_rows(action.destinations, output.objects)
            if action.review_required:  # what approving it will send is kept beside the objects
                keep_for_review(out_dir, output.objects)
        except Exception as exc:  # the job records the class and message; the worker goes on
            beat.stop()
            log.error("job %d failed: %s", job_id, describe(exc))
            jobs.finish(self.factory, job_id, JobStatus.FAILED, error=exc)
            return
        beat.stop()
        if action.review_required:
            self._hold(job_id, action.rule_name, action.reviewers, output.timings)
            return
        if not jobs.add_deliveries(self.factory, job_id, rows):
            log.warning("job %d was superseded while it ran (its series grew): its outputs are not sent", job_id)
            return
        jobs.finish_timings(self.factory, job_id, output.timings)
        if not rows:
            jobs.settle_job(self.factory, job_id)

    def _hold(self, job_id: int, rule_name: str, reviewers: tuple[str, ...], timings: dict[str, float]) -> None:
        """Outputs written, nothing to send until a person decides (dicom_node.review)."""
        if not review.hold(self.factory, job_id):
            log.warning("job %d was superseded while it ran (its series grew): it is not held for review", job_id)
            return
        jobs.finish_timings(self.factory, job_id, timings)
        log.info("job %d: outputs held for review (rule %s)", job_id, rule_name)
        review_needed(job_id, rule_name, reviewers)

    # -- delivery --------------------------------------------------------------------------
    def deliver_due(self) -> int:
        """One round of the delivery thread's work, here (tests and single-threaded use)."""
        return DeliveryLoop(self.settings, self.factory, self.worker_id).deliver_due()


def settings_template(snapshot: TemplateSnapshot | None) -> Template | None:
    """The template as the pipeline takes it, built from the job's snapshot (not looked up by name)."""
    if snapshot is None:
        return None
    return Template(name=snapshot.name, map=dict(snapshot.map), include=snapshot.include, rename=dict(snapshot.rename),
                    merge=dict(snapshot.merge), outputs=snapshot.outputs, seg_type=snapshot.seg_type)


class _Heartbeat:
    """Beats the job row from a thread while the pipeline runs, so a live job is never requeued."""

    def __init__(self, worker: Worker, job_id: int) -> None:
        self.worker = worker
        self.job_id = job_id
        self.stage = "claimed"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def set_stage(self, stage: str) -> None:
        self.stage = stage
        self._beat()

    def _beat(self) -> None:
        try:
            jobs.heartbeat(self.worker.factory, self.job_id, self.worker.worker_id, self.stage)
        except Exception:
            log.exception("heartbeat of job %d failed", self.job_id)

    def _run(self) -> None:
        while not self._stop.wait(self.worker.settings.worker.heartbeat_seconds):
            self._beat()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
