"""The delivery commands of ``dicom-node``: ``send``, ``jobs``, ``deliveries`` and ``retry``.

    dicom-node send PATH DEST               send a file or a folder by hand (recorded as deliveries)
    dicom-node jobs [--limit N]             recent jobs: status, stage, deliveries sent/pending/dead, error
    dicom-node deliveries [--job JOB] [--state pending|sent|dead]
                                            each delivery: destination, object, state, attempts, next try, error
    dicom-node retry JOB | --failed         queue a job's dead deliveries (or the failed job) again; --failed: all
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_node.errors import DicomNodeError
from dicom_node.settings import Destination, Settings

if TYPE_CHECKING:
    from dicom_node.db.tables import Delivery, Job

log = logging.getLogger(__name__)

STATES = ("pending", "sent", "dead")


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def destination_named(settings: Settings, name: str) -> Destination:
    try:
        return settings.destinations[name]
    except KeyError:
        raise DicomNodeError(f"unknown destination {name!r}; configured: "
                             f"{', '.join(settings.destinations) or 'none'}") from None


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("send", "send a DICOM file or folder to a configured destination (recorded as deliveries)")
    p.add_argument("path")
    p.add_argument("destination")
    p = add("jobs", "list recent jobs")
    p.add_argument("--limit", type=int, default=30)
    p = add("deliveries", "list deliveries: destination, object, state, attempts, next try, last error")
    p.add_argument("--job", type=int, default=None, help="only this job's deliveries")
    p.add_argument("--state", action="append", choices=STATES, default=None,
                   help="only deliveries in this state (may be given more than once)")
    p.add_argument("--limit", type=int, default=200)
    p = add("retry", "queue a job's dead deliveries, or the failed job, again")
    p.add_argument("job", nargs="?", type=int, default=None, help="the job id (dicom-node jobs)")
    p.add_argument("--failed", action="store_true",
                   help="every failed job and dead delivery, those of manual sends too")


def _is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: 128-byte preamble then 'DICM'."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _files_to_send(root: Path) -> list[Path]:
    if not root.exists():
        raise DicomNodeError(f"{root} does not exist")
    if not root.is_dir():
        return [root]
    found = sorted(p for p in root.rglob("*") if p.is_file())
    paths = [p for p in found if _is_dicom_file(p)]
    # a job folder also holds labels.nii.gz, structures.json and preview.png: not for the PACS
    for skipped in sorted(set(found) - set(paths)):
        log.info("skipping %s: not a DICOM file", skipped.name)
    return paths


def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    """Send by hand, each readable file recorded as a delivery without a job; a success also marks the
    unsent job deliveries of the same object to the same destination sent (their jobs settle)."""
    from dicom_node.db import deliveries, jobs
    from dicom_node.db.engine import open_index
    from dicom_node.delivery import LeaseKeeper, lease_owner
    from dicom_node.send.cstore import file_identity, send_files

    dest = destination_named(settings, args.destination)
    paths = _files_to_send(Path(args.path))
    factory = open_index(settings.node.database_url)
    owner, lease = lease_owner("send"), timedelta(seconds=settings.worker.delivery_lease_seconds)
    known = {p: ident for p in paths if (ident := file_identity(p)) is not None}
    ids = dict(zip(known, deliveries.record_manual(
        factory, dest.name, owner, lease,
        [(i.modality, i.sop_uid, i.sop_class_uid, str(p.resolve())) for p, i in known.items()]), strict=True))
    step = max(1, len(paths) // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            log.info("sent %d/%d", done, total)

    with LeaseKeeper(factory, owner, list(ids.values()), lease):
        results = send_files(dest, settings.node.ae_title, paths, progress)
    settle: set[int] = set()
    for result in results:
        delivery_id = ids.get(result.path)
        if delivery_id is None:
            continue
        if result.ok:
            settle.update(deliveries.sent_by_hand(factory, delivery_id, result.transfer_syntax))
        else:  # the dead letter: `dicom-node retry --failed` hands it to the workers' retries
            deliveries.mark_dead(factory, delivery_id, f"manual send failed: {result.error}")
    for job_id in sorted(settle):
        jobs.settle_job(factory, job_id)
    failed = [r for r in results if not r.ok]
    for r in failed:
        _out(f"FAILED {r.path}: {r.error}")
    _out(f"{len(results) - len(failed)} sent, {len(failed)} failed"
         + (f"; delivered for job(s) {', '.join(map(str, sorted(settle)))}" if settle else ""))
    return 0 if not failed else 1


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node.db.engine import open_index
    from dicom_node.db.jobs import list_jobs

    factory = open_index(settings.node.database_url)
    with factory() as session:
        rows = list_jobs(session, args.limit)
        _out(f"{'id':>5} {'status':<10} {'stage':<10} {'model':<20} {'version':<10} {'device':<8} {'n':>4} "
             f"{'tries':>5}  created              deliveries / error")
        for job, _uid in rows:
            _out(f"{job.id:>5} {job.status.value:<10} {job.stage:<10} {job.model_id:<20} "
                 f"{job.model_version or '-':<10} {job.device or '-':<8} {job.instance_count:>4} "
                 f"{job.attempts:>5}  {job.created_at:%Y-%m-%d %H:%M:%S}  {job_outcome(job)}")
    return 0


def job_outcome(job: Job) -> str:
    """What replaced the job or what it replaces, and how its completion was judged when it was not
    confirmed; how many deliveries were sent, are pending and are dead; then the job's error, or
    why the ones still retrying failed last."""
    from dicom_node.db.review import review_notes
    from dicom_node.db.supersession import lineage_notes
    from dicom_node.db.tables import DeliveryStatus

    parts: list[str] = lineage_notes(job) + review_notes(job)
    if job.deliveries:
        count = {state: sum(1 for d in job.deliveries if d.status == state) for state in DeliveryStatus}
        parts.append(f"{count[DeliveryStatus.SENT]}/{len(job.deliveries)} delivered"
                     + "".join(f", {count[s]} {s.value}" for s in (DeliveryStatus.PENDING, DeliveryStatus.DEAD)
                               if count[s]))
    if job.error_class:
        return "; ".join([*parts, f"{job.error_class}: {job.error_message}"])
    retrying: dict[tuple[str, str], list[str]] = {}  # (destination, last error) -> kinds, in delivery order
    for d in job.deliveries:
        if d.status == DeliveryStatus.PENDING and d.last_error:
            kinds = retrying.setdefault((d.destination, d.last_error), [])
            if d.kind not in kinds:
                kinds.append(d.kind)
    parts += [f"retrying {'+'.join(kinds)} to {dest}: {error}" for (dest, error), kinds in retrying.items()]
    if not job.deliveries:
        parts.append("0/0 delivered")
    return "; ".join(parts)


def _age(since: datetime, now: datetime) -> str:
    seconds = max(0.0, (now - since).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def _state(row: Delivery, now: datetime) -> str:
    from dicom_node.db.tables import DeliveryStatus

    if row.status == DeliveryStatus.PENDING and row.lease_until is not None and row.lease_until > now:
        return "sending"  # pending, and a worker holds its lease
    return row.status.value


def _next_try(row: Delivery, now: datetime) -> str:
    from dicom_node.db.tables import DeliveryStatus

    if row.status != DeliveryStatus.PENDING:
        return "-"
    return "now" if row.next_attempt_at <= now else f"{row.next_attempt_at:%Y-%m-%d %H:%M:%S}"


def cmd_deliveries(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node.db.deliveries import list_deliveries
    from dicom_node.db.engine import open_index
    from dicom_node.db.tables import DeliveryStatus, utcnow

    factory = open_index(settings.node.database_url)
    states = [DeliveryStatus(s) for s in (args.state or [])]
    now = utcnow()
    with factory() as session:
        rows = list_deliveries(session, args.job, states, args.limit)
    _out(f"{'id':>6} {'job':>5} {'destination':<12} {'object':<9} {'state':<8} {'tries':>5} {'age':>6}  "
         f"{'next try':<19}  sop instance uid / last error")
    for row in rows:
        age = _age(row.queued_at, row.sent_at or now)
        error = f"  {row.last_error}" if row.last_error else ""
        _out(f"{row.id:>6} {row.job_id if row.job_id is not None else '-':>5} {row.destination:<12} {row.kind:<9} "
             f"{_state(row, now):<8} {row.attempts:>5} {age:>6}  {_next_try(row, now):<19}  {row.sop_uid}{error}")
    return 0


def cmd_retry(settings: Settings, args: argparse.Namespace) -> int:
    """Dead deliveries queued again with a fresh max age (their jobs delivering again); a job that
    failed before recording deliveries queued again with its attempts reset."""
    from dicom_node.db import deliveries, jobs
    from dicom_node.db.engine import open_index
    from dicom_node.db.tables import Job

    if (args.job is None) == (not args.failed):
        raise DicomNodeError("give a job id or --failed, not both")
    factory = open_index(settings.node.database_url)
    job_ids = None if args.failed else [args.job]
    with factory.begin() as session:
        if args.job is not None and session.get(Job, args.job) is None:
            raise DicomNodeError(f"there is no job {args.job}")
        rows = deliveries.requeue_dead(session, job_ids, manual=args.failed)
        reopened = {r.job_id for r in rows if r.job_id is not None}
        deliveries.reopen_jobs(session, reopened)
        queued = jobs.requeue_failed(session, job_ids)
    for job_id in sorted(reopened):
        count = sum(1 for r in rows if r.job_id == job_id)
        _out(f"job {job_id}: {count} dead deliver{'y' if count == 1 else 'ies'} queued again; job delivering")
    for job_id in queued:
        _out(f"job {job_id}: queued again (its attempts start from 0)")
    manual = sum(1 for r in rows if r.job_id is None)
    if manual:
        _out(f"{manual} manual deliver{'y' if manual == 1 else 'ies'} queued again")
    if not rows and not queued:
        _out("nothing to retry" + (f": job {args.job} has no dead delivery and has not failed" if args.job else ""))
        return 1
    return 0


COMMANDS = {"send": cmd_send, "jobs": cmd_jobs, "deliveries": cmd_deliveries, "retry": cmd_retry}
