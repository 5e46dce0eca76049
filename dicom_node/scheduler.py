"""Housekeeping on APScheduler: sweep receiving series for completion and enqueue their jobs.

The sweep runs every ``completion.sweep_interval_seconds`` in the listener process; the policy
itself (``dicom_node.series.decide``) is pure and unit-tested. A complete series is routed here,
once: each job stores the action its rule resolved to (``dicom_node.routing.route``) with the
settings of that moment: the live config's destinations, rules and templates (``dicom_node.live_config``),
reloaded when its version in the index moved, so a change from the web admin applies without a restart.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import housekeeping
from dicom_node.db import index, jobs, supersession
from dicom_node.db.tables import SeriesState, utcnow
from dicom_node.live_config import LiveConfig
from dicom_node.routing import SeriesAttributes, route
from dicom_node.series import CompletionDecision, CompletionPolicy, SeriesSnapshot, decide
from dicom_node.settings import Settings

log = logging.getLogger(__name__)


def sweep(settings: Settings, factory: sessionmaker[Session]) -> int:
    """Dispatch every series the policy judges complete. Returns the number of jobs enqueued.

    A series that grew after it was dispatched has its undelivered jobs superseded at once (so a
    worker does not contour, or a sender deliver, the part), and once it is complete again each new
    job is linked to the job of the same rule it replaces (``dicom_node.db.supersession``).
    """
    c = settings.completion
    policy = CompletionPolicy(quiet_seconds=c.quiet_seconds, settle_seconds=c.settle_seconds,
                              after_release_seconds=c.after_release_seconds)
    enqueued = 0
    with factory.begin() as session:
        now = utcnow()
        for view in index.receiving_series(session):
            if view.dispatched_count and view.instance_count != view.dispatched_count:
                held = supersession.hold_undelivered(session, view.id)
                if held:
                    log.warning("series %d grew from %d to %d instances after dispatch: job(s) %s superseded "
                                "before delivering anything", view.id, view.dispatched_count, view.instance_count,
                                ", ".join(map(str, held)))
            decision = decide(_snapshot(view, now), policy)
            if not decision.complete:
                continue
            enqueued += _dispatch(settings, session, view, decision)
    return enqueued


def _snapshot(view: index.SeriesView, now: datetime) -> SeriesSnapshot:
    return SeriesSnapshot(
        instance_count=view.instance_count,
        seconds_since_last_instance=(now - view.last_received_at).total_seconds(),
        open_associations=view.open_associations,
        expected_count=view.expected_count,
        slice_positions=view.slice_positions,
        instance_numbers=view.instance_numbers,
        unreleased_associations=view.unreleased_associations,
        seconds_since_release=None if view.last_release_at is None else (now - view.last_release_at).total_seconds(),
    )


def _dispatch(settings: Settings, session: Session, view: index.SeriesView, decision: CompletionDecision) -> int:
    attrs = SeriesAttributes(Modality=view.modality, BodyPartExamined=view.body_part,
                             SeriesDescription=view.description)
    actions = route(settings, attrs)
    if not actions:
        index.mark_series(session, view.id, SeriesState.IGNORED,
                          f"{decision.reason}; no routing rule matched", view.instance_count)
        log.info("series %d complete (%s) but no routing rule matched", view.id, decision.reason)
        return 0
    enqueued = 0
    for action in actions:
        job = jobs.enqueue(session, view.id, view.series_uid, action, view.instance_count)
        if job is None:
            continue
        enqueued += 1
        job.completion_reason = decision.reason[:128]
        job.completion_fallback = not decision.confirmed
        replaced = supersession.link(session, job, view.id)
        if replaced is not None:
            previous, delivered = replaced
            log.warning("job %d (%d instances) supersedes job %d: %s", job.id, view.instance_count, previous,
                        "its outputs were delivered, the new ones go out as a new version" if delivered
                        else "it had delivered nothing and was cancelled")
    index.mark_series(session, view.id, SeriesState.DISPATCHED, decision.reason, view.instance_count)
    flag = "" if decision.confirmed else " (unconfirmed: quiet-period fallback)"
    log.info("series %d complete with %d instances: %s%s -> %s", view.id, view.instance_count,
             decision.reason, flag, ", ".join(a.rule_name for a in actions))
    return enqueued


def start_scheduler(settings: Settings, factory: sessionmaker[Session]) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC")
    live = LiveConfig(settings, factory)  # seeded from the TOML at first start; its version checked each sweep

    def safe_sweep() -> None:
        try:
            sweep(live.current(), factory)
        except Exception:  # a failed sweep is retried on the next tick; the listener keeps going
            log.exception("series completion sweep failed")

    scheduler.add_job(safe_sweep, "interval", seconds=settings.completion.sweep_interval_seconds,
                      id="completion-sweep", max_instances=1, coalesce=True)
    if housekeeping.is_enabled(settings):  # retention and the emergency clean-up: dicom_node.housekeeping
        scheduler.add_job(housekeeping.run_safely, "interval", args=(settings, factory), id="housekeeping",
                          minutes=settings.housekeeping.interval_minutes, max_instances=1, coalesce=True,
                          next_run_time=utcnow() + timedelta(seconds=30))
    scheduler.start()
    return scheduler
