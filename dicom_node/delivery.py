"""The sender: lease due deliveries, send them, record each outcome, settle their jobs.

It runs in a thread of its own in the worker process (:class:`DeliveryLoop`), so a destination that
is slow, down or hangs never holds up the next job's segmentation. Rows are taken with a lease
(:func:`dicom_node.db.deliveries.claim_due`), so several workers never send one object twice; the
lease is renewed while an association is busy. A job's rows go to the address, timeout and retry
policy of the job's routed action; a manual send's rows (no job) to the configured destination.

What stays at-least-once: between a destination's success status and our commit of SENT is one
object; a crash there sends that object again (the PACS sees the same SOP Instance UID twice).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import deliveries, jobs
from dicom_node.db.tables import Delivery, DeliveryStatus
from dicom_node.routing import RoutedDestination, RoutingError, TlsSnapshot
from dicom_node.send.cstore import send_files
from dicom_node.settings import Destination, Settings

log = logging.getLogger(__name__)

DB_DOWN_BACKOFF_MAX_SECONDS = 30.0


def lease_owner(worker_id: str) -> str:
    """Unique per sender, also when two workers share an id: a lease is never mistaken for another's."""
    return f"{worker_id[:60]}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def process_alive(pid: int) -> bool:
    """Whether a process of this host has that id (a lease holder of this worker id lives here)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def describe(exc: BaseException) -> str:
    """An error for the log and the row: the driver's message of a database error, without the
    statement's parameters (they may hold header values)."""
    if isinstance(exc, SQLAlchemyError):
        orig = getattr(exc, "orig", None)
        detail = str(orig).strip().splitlines()[0] if orig is not None and str(orig).strip() else ""
        return f"database error {type(exc).__name__}" + (f": {detail}" if detail else "")
    return f"{type(exc).__name__}: {exc}"


def failure_backoff(failures: int) -> float:
    """Wait after ``failures`` rounds failed in a row: 0.5 s doubling, at most 30 s (the database may be down)."""
    return float(min(DB_DOWN_BACKOFF_MAX_SECONDS, 0.5 * 2 ** min(failures - 1, 10)))


def policy_of(target: RoutedDestination) -> deliveries.RetryPolicy:
    return deliveries.RetryPolicy(target.retry_backoff_seconds, target.retry_max_backoff_seconds,
                                  timedelta(hours=target.max_age_hours))


def send_address(target: RoutedDestination) -> Destination:
    """The destination as the sender takes it, with the address, timeout and TLS the job was routed to."""
    return Destination(name=target.name, ae_title=target.ae_title, host=target.host, port=target.port,
                       retry_backoff_seconds=target.retry_backoff_seconds, timeout_seconds=target.timeout_seconds,
                       max_age_hours=target.max_age_hours, retry_max_backoff_seconds=target.retry_max_backoff_seconds,
                       tls=target.tls_settings, accepts_labelmap_seg=target.accepts_labelmap_seg,
                       seg_transfer_syntaxes=target.seg_transfer_syntaxes)


def configured_target(dest: Destination) -> RoutedDestination:
    """A configured destination as a manual send's rows are sent to it."""
    return RoutedDestination(name=dest.name, ae_title=dest.ae_title, host=dest.host, port=dest.port,
                             timeout_seconds=dest.timeout_seconds, retry_backoff_seconds=dest.retry_backoff_seconds,
                             seg_type="BINARY", max_age_hours=dest.max_age_hours,
                             retry_max_backoff_seconds=dest.retry_max_backoff_seconds, tls=TlsSnapshot.of(dest.tls),
                             accepts_labelmap_seg=dest.accepts_labelmap_seg,
                             seg_transfer_syntaxes=dest.seg_transfer_syntaxes)


class LeaseKeeper:
    """Renews the leases of the rows an association is still sending, every third of a lease."""

    def __init__(self, factory: sessionmaker[Session], owner: str, ids: Sequence[int], lease: timedelta) -> None:
        self.factory, self.owner, self.ids, self.lease = factory, owner, list(ids), lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delivery-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.lease.total_seconds() / 3):
            try:
                deliveries.renew_leases(self.factory, self.owner, self.ids, self.lease)
            except SQLAlchemyError as exc:  # the lease runs out then, and another worker may send again
                log.warning("renewing %d delivery lease(s) failed: %s", len(self.ids), describe(exc))

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class DeliveryLoop:
    """Sends due deliveries until stopped; one round at a time with :meth:`deliver_due`."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session], worker_id: str,
                 batch: int = deliveries.CLAIM_BATCH) -> None:
        self.settings = settings
        self.factory = factory
        self.worker_id = worker_id
        self.owner = lease_owner(worker_id)
        self.lease = timedelta(seconds=settings.worker.delivery_lease_seconds)
        self.batch = batch  # rows leased at once

    def run_forever(self, stop: threading.Event) -> None:
        log.info("delivery thread %s sending due deliveries", self.owner)
        try:
            freed = deliveries.release_dead_holders(self.factory, self.worker_id, process_alive)
            if freed:
                log.info("%d delivery lease(s) of an earlier process of this worker freed", freed)
        except Exception as exc:  # their leases run out on their own; nothing is lost
            log.warning("could not free the leases of earlier processes: %s", describe(exc))
        failures = 0
        while not stop.is_set():
            try:
                sent_or_tried = self.deliver_due()
                failures = 0
            except Exception as exc:  # the thread must outlive a database or network fault
                failures += 1
                log.error("delivery round failed (%d in a row): %s", failures, describe(exc))
                stop.wait(failure_backoff(failures))
                continue
            if not sent_or_tried:
                stop.wait(self.settings.worker.poll_interval_seconds)
        log.info("delivery thread %s stopped", self.owner)

    def deliver_due(self) -> int:
        """Lease the due deliveries, send them one association per destination address, record each
        outcome. Returns how many rows were tried (0: nothing was due)."""
        due = deliveries.claim_due(self.factory, self.owner, self.lease, self.batch)
        if not due:
            return 0
        by_target: dict[RoutedDestination, list[Delivery]] = defaultdict(list)
        touched_jobs: set[int] = set()
        for row, target, reason in self._targets(due):
            if row.job_id is not None:
                touched_jobs.add(row.job_id)
            if target is None:  # nowhere to send it: dead at once, with the reason
                deliveries.mark_dead(self.factory, row.id, reason)
                log.error("%s to %s: %s; dead", row.kind, row.destination, reason)
            else:
                by_target[target].append(row)
        for target, rows in by_target.items():
            self._send(target, rows)
        for job_id in touched_jobs:
            jobs.settle_job(self.factory, job_id)
        return len(due)

    def _targets(self, due: list[Delivery]) -> list[tuple[Delivery, RoutedDestination | None, str]]:
        """Each row with where it goes (None and the reason when it cannot go anywhere)."""
        with self.factory() as session:
            stored = jobs.stored_actions(session, (d.job_id for d in due if d.job_id is not None))
        routed: dict[int, dict[str, RoutedDestination]] = {}
        unroutable: dict[int, str] = {}
        for job_id, text in stored.items():
            try:
                routed[job_id] = {d.name: d for d in jobs.parse_action(job_id, text).destinations}
            except RoutingError as exc:
                unroutable[job_id] = str(exc)
        found: list[tuple[Delivery, RoutedDestination | None, str]] = []
        for row in due:
            if row.job_id is None:
                configured = self.settings.destinations.get(row.destination)
                found.append((row, None if configured is None else configured_target(configured),
                              f"destination {row.destination!r} of a manual send is not configured"))
            else:
                reason = unroutable.get(row.job_id) or f"destination {row.destination!r} is not in the job's route"
                found.append((row, routed.get(row.job_id, {}).get(row.destination), reason))
        return found

    def _send(self, target: RoutedDestination, rows: list[Delivery]) -> None:
        policy = policy_of(target)
        try:
            with LeaseKeeper(self.factory, self.owner, [r.id for r in rows], self.lease):
                results = send_files(send_address(target), self.settings.node.ae_title, [Path(r.path) for r in rows])
            by_path = {str(r.path): r for r in results}
            outcomes = [(row, by_path.get(row.path)) for row in rows]
        except Exception as exc:  # a fault of the sender itself is this batch's failed try, not the thread's end
            log.error("sending to %s failed: %s", target.name, describe(exc))
            outcomes = [(row, None) for row in rows]
            error = describe(exc)
        else:
            error = "not attempted"
        for row, result in outcomes:
            where = f"job {row.job_id}" if row.job_id is not None else f"manual delivery {row.id}"
            if result is not None and result.ok:
                jobs.mark_sent(self.factory, row.id, result.transfer_syntax)
                log.info("%s: %s sent to %s (%s)", where, row.kind, target.name, result.transfer_syntax)
                continue
            reason = result.error if result is not None else error
            status = deliveries.record_failure(self.factory, row.id, self.owner, reason, policy)
            if status == DeliveryStatus.DEAD:
                log.error("%s: %s to %s failed (%s); dead after %g h", where, row.kind, target.name, reason,
                          target.max_age_hours)
            else:
                log.warning("%s: %s to %s failed (%s); will retry", where, row.kind, target.name, reason)
