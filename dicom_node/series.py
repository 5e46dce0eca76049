"""When is a series complete? A pure policy over what the receiver has seen of one series.

DICOM has no end-of-series message. mercure and Orthanc wait for a fixed quiet period (60 s), which
is most of their turnaround. We start a series as soon as the evidence says it is whole, and keep the
quiet period only as the fallback. ``decide`` applies these rules in order:

1. Nothing is complete before ``settle_seconds`` of quiet since the last instance (a burst still
   arriving, or a sender that opens one association per instance and is between two of them).
2. When an expected count is known (ImagesInAcquisition and the like, judged plausible by the
   receiver) and exactly reached, the series is complete: "expected count reached (134/134)".
   More instances than expected means the count describes something else (several acquisitions in
   one series): it is ignored from then on.
3. When every association that carried instances of the series is released or aborted, no expected
   count is pending, every instance has a slice position, the positions form one evenly spaced
   stack (no duplicate, no gap, steps within 1 % or 0.05 mm, as the loader checks) and the instance
   numbers are contiguous and unique, the series is complete: "association released, evenly spaced
   stack of 134". A single instance without a slice position (an Enhanced CT carries its whole
   stack in one multi-frame instance) is complete once released as well.
4. Otherwise the series is complete after ``quiet_seconds`` without a new instance, whatever the
   associations say: "quiet for 60 s (fallback: gap in slice positions)". An association still
   open after that long is a stalled sender: "quiet for 60 s, 1 association still open (stalled
   sender)".

What rule 3 cannot see: slices missing at either end of an evenly spaced, contiguously numbered
stack. The loader cannot see them either; an expected count, when the scanner sends one, can.
Late instances after dispatch are the scheduler's business (a new job), not this module's.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicom_node.geometry import analyse_spacing


@dataclass(frozen=True)
class SeriesSnapshot:
    """What the receiver knows of one series at one moment."""

    instance_count: int
    seconds_since_last_instance: float
    # associations that carried instances of this series and are not yet released/aborted
    open_associations: int
    # e.g. ImagesInAcquisition, when present and plausible
    expected_count: int | None
    # projections of ImagePositionPatient on the slice normal, one per instance (None entries dropped)
    slice_positions: tuple[float, ...]
    instance_numbers: tuple[int, ...]


@dataclass(frozen=True)
class CompletionPolicy:
    quiet_seconds: float = 60.0
    settle_seconds: float = 2.0


@dataclass(frozen=True)
class CompletionDecision:
    complete: bool
    reason: str


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
        return CompletionDecision(True, f"expected count reached ({count}/{expected})")
    expected_pending = expected is not None and expected > 0 and count < expected

    obstacle = _early_obstacle(snapshot, expected_pending)
    if obstacle is None:
        if count == 1:
            return CompletionDecision(True, "association released, single multi-frame instance")
        return CompletionDecision(True, f"association released, evenly spaced stack of {count}")

    if quiet >= policy.quiet_seconds:
        if snapshot.open_associations > 0:
            plural = "s" if snapshot.open_associations > 1 else ""
            return CompletionDecision(True, f"quiet for {policy.quiet_seconds:g} s, "
                                            f"{snapshot.open_associations} association{plural} still open "
                                            "(stalled sender)")
        return CompletionDecision(True, f"quiet for {policy.quiet_seconds:g} s (fallback: {obstacle})")
    return CompletionDecision(False, f"waiting: {obstacle}")


def _early_obstacle(snapshot: SeriesSnapshot, expected_pending: bool) -> str | None:
    """Why the series cannot be judged complete before the quiet period, or None when it can."""
    count = snapshot.instance_count
    if snapshot.open_associations > 0:
        plural = "s" if snapshot.open_associations > 1 else ""
        return f"{snapshot.open_associations} association{plural} open"
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
