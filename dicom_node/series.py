"""When is a series complete? A pure policy over what the receiver has seen of one series.

DICOM has no end-of-series message. mercure and Orthanc wait for a fixed quiet period (60 s), which
is most of their turnaround. We start a series early only when its own evidence says it is whole,
and keep the quiet period as the fallback. This docstring is the one place the rule is written.

What counts as evidence, and what does not:

- An **expected count** (ImagesInAcquisition on a CT slice, judged plausible by the receiver) that
  is exactly reached is the scanner saying how many slices there are. (Number of Slices belongs
  to NM and PET objects, which this CT node does not accept.)
- A **real A-RELEASE** is the sender saying it is done with that association. It is evidence only
  when every association that carried an instance of the series ended that way. An A-ABORT, a
  connection closed without release, or an association found still open when the listener started
  (the listener died during it) says the opposite: the sender was cut off. Such an association
  never counts as released, then or later. An instance received again on a new association belongs
  to that association from then on, so a sender that re-sends a cut series makes the new
  association's release or abort the one that counts.
- A release says nothing about other associations yet to come: a PACS may send one series over
  several associations with pauses between them. So a release counts only once
  ``after_release_seconds`` passed after the last one without anything new arriving.
- An **evenly spaced stack** (no duplicate or missing position, steps within 1 % or 0.05 mm as the
  loader checks, contiguous unique instance numbers) proves that nothing is missing *between* the
  first and the last slice received. It cannot prove that nothing is missing at the *ends*: a
  sender cut after 40 of 134 slices, sent in order, leaves a perfect stack of 40. So the stack is
  never evidence of completeness on its own; it only vetoes early completion when it shows a
  hole that the release cannot see.

``decide`` applies these rules in order:

1. Nothing is complete before ``settle_seconds`` of quiet since the last instance.
2. Expected count exactly reached: complete, "expected count reached (134/134)". More instances
   than expected means the count describes something else (several acquisitions in one series):
   it is ignored from then on.
3. Every carrying association really released, none open, none aborted or dropped, no expected
   count pending, every instance with a slice position, an evenly spaced stack with contiguous
   instance numbers, and ``after_release_seconds`` since the last release: complete, "association
   released, evenly spaced stack of 134". A single instance without a slice position (an Enhanced
   CT carries its whole stack in one multi-frame instance) needs only the release and the wait.
4. Otherwise the series is complete after ``quiet_seconds`` without a new instance, whatever the
   associations say, and the decision is *unconfirmed* (``confirmed=False``): the job is flagged as
   dispatched by the fallback, with the reason, e.g. "quiet for 60 s (fallback: 1 association
   aborted or dropped)" or "quiet for 60 s, 1 association still open (stalled sender)".

Instances that arrive after a series was dispatched are the scheduler's business
(``dicom_node.scheduler``): undelivered jobs are superseded, delivered outputs get a new version.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicom_node.geometry import analyse_spacing


@dataclass(frozen=True)
class SeriesSnapshot:
    """What the receiver knows of one series at one moment."""

    instance_count: int
    seconds_since_last_instance: float
    # associations that carried instances of this series and have not ended yet
    open_associations: int
    # e.g. ImagesInAcquisition, when present and plausible
    expected_count: int | None
    # projections of ImagePositionPatient on the slice normal, one per instance (None entries dropped)
    slice_positions: tuple[float, ...]
    instance_numbers: tuple[int, ...]
    # carrying associations that ended without A-RELEASE: aborted, dropped, open when the listener
    # died, or not recorded at all
    unreleased_associations: int = 0
    # since the last A-RELEASE of a carrying association; None when none was released
    seconds_since_release: float | None = None


@dataclass(frozen=True)
class CompletionPolicy:
    quiet_seconds: float = 60.0
    settle_seconds: float = 2.0
    after_release_seconds: float = 10.0


@dataclass(frozen=True)
class CompletionDecision:
    complete: bool
    reason: str
    # True when the series' own content proved it whole (rules 2 and 3), False for the fallback
    confirmed: bool = False


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def decide(snapshot: SeriesSnapshot, policy: CompletionPolicy) -> CompletionDecision:
    """Apply the rules of the module docstring, in order."""
    count = snapshot.instance_count
    quiet = snapshot.seconds_since_last_instance
    if count <= 0:
        return CompletionDecision(False, "no instances yet")
    if quiet < policy.settle_seconds:
        return CompletionDecision(False, f"settling ({quiet:.1f} s since the last instance)")

    expected = snapshot.expected_count
    if expected is not None and expected > 0 and count == expected:
        return CompletionDecision(True, f"expected count reached ({count}/{expected})", confirmed=True)
    expected_pending = expected is not None and expected > 0 and count < expected

    obstacle = _early_obstacle(snapshot, expected_pending)
    if obstacle is None:
        since_release = snapshot.seconds_since_release
        if since_release is not None and since_release >= policy.after_release_seconds:
            if count == 1:
                return CompletionDecision(True, "association released, single multi-frame instance", confirmed=True)
            return CompletionDecision(True, f"association released, evenly spaced stack of {count}", confirmed=True)
        obstacle = (f"released {since_release:.1f} s ago, waiting {policy.after_release_seconds:g} s"
                    if since_release is not None else "no association released")

    if quiet >= policy.quiet_seconds:
        if snapshot.open_associations > 0:
            return CompletionDecision(True, f"quiet for {policy.quiet_seconds:g} s, "
                                            f"{_plural(snapshot.open_associations, 'association')} still open "
                                            "(stalled sender)")
        return CompletionDecision(True, f"quiet for {policy.quiet_seconds:g} s (fallback: {obstacle})")
    return CompletionDecision(False, f"waiting: {obstacle}")


def _early_obstacle(snapshot: SeriesSnapshot, expected_pending: bool) -> str | None:
    """Why the series cannot be judged complete before the quiet period, or None when it can."""
    count = snapshot.instance_count
    if snapshot.open_associations > 0:
        return f"{_plural(snapshot.open_associations, 'association')} open"
    if snapshot.unreleased_associations > 0:
        return f"{_plural(snapshot.unreleased_associations, 'association')} aborted or dropped"
    if expected_pending:
        return f"{count}/{snapshot.expected_count} expected instances"
    positions = snapshot.slice_positions
    if count == 1:
        # one multi-frame object is the whole series; one single-frame slice is not a volume yet
        return None if not positions else "a single slice"
    if len(positions) != count:
        return f"{count - len(positions)} of {count} instances without slice position"
    spacing = analyse_spacing(sorted(positions))
    if spacing.duplicates:
        return "duplicate slice positions"
    if spacing.gaps:
        return "gap in slice positions"
    if spacing.uneven:
        return "uneven slice spacing"
    numbers = snapshot.instance_numbers
    if len(numbers) != count:
        return f"{count - len(numbers)} of {count} instances without instance number"
    if len(set(numbers)) != count:
        return "duplicate instance numbers"
    if max(numbers) - min(numbers) + 1 != count:
        return "instance numbers not contiguous"
    return None
