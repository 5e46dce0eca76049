"""Where "review needed" is raised: the worker calls :func:`review_needed` once a job is held.

It logs for now; notifications (e-mail, webhooks) hook in here. No patient data is passed or logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

log = logging.getLogger(__name__)


def review_needed(job_id: int, rule_name: str, reviewers: Sequence[str]) -> None:
    """Job ``job_id`` of rule ``rule_name`` waits in the review queue; ``reviewers`` are to be told.
    Never raises: a failure to tell anyone must not undo the hold."""
    try:
        log.info("job %d (rule %s) waits for review; reviewers: %s", job_id, rule_name,
                 ", ".join(reviewers) or "none configured")
    except Exception:  # the hook must not fail the worker
        log.exception("job %d: raising 'review needed' failed", job_id)
