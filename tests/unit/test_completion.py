"""The series-completion policy: one test per rule and the edge cases around them."""

from __future__ import annotations

import random

import pytest

from dicom_node.series import (
    CompletionDecision,
    CompletionPolicy,
    SeriesSnapshot,
    decide,
)

POLICY = CompletionPolicy(quiet_seconds=60.0, settle_seconds=2.0, after_release_seconds=2.0)
RELEASED = 2.5  # seconds since the release in the snapshots below, unless a test says otherwise


def snap(count: int = 10, quiet: float = 3.0, open_associations: int = 0, expected: int | None = None,
         positions: tuple[float, ...] | None = None, numbers: tuple[int, ...] | None = None,
         unreleased: int = 0, since_release: float | None = RELEASED) -> SeriesSnapshot:
    return SeriesSnapshot(
        instance_count=count, seconds_since_last_instance=quiet, open_associations=open_associations,
        expected_count=expected,
        slice_positions=tuple(3.0 * k - 100.0 for k in range(count)) if positions is None else positions,
        instance_numbers=tuple(range(1, count + 1)) if numbers is None else numbers,
        unreleased_associations=unreleased, seconds_since_release=since_release)


def test_defaults_are_the_documented_ones() -> None:
    assert CompletionPolicy() == CompletionPolicy(quiet_seconds=60.0, settle_seconds=2.0, after_release_seconds=10.0)


def test_nothing_is_complete_while_settling_even_with_every_sign_of_completeness() -> None:
    decision = decide(snap(count=134, quiet=1.9, expected=134), POLICY)
    assert decision == CompletionDecision(False, decision.reason)
    assert "settling" in decision.reason


def test_no_instances_is_never_complete() -> None:
    assert not decide(snap(count=0, quiet=1000.0, positions=(), numbers=()), POLICY).complete


def test_expected_count_reached_completes_even_with_an_open_association() -> None:
    decision = decide(snap(count=134, quiet=2.0, open_associations=1, expected=134), POLICY)
    assert decision == CompletionDecision(True, "expected count reached (134/134)", confirmed=True)


def test_expected_count_not_reached_blocks_early_completion() -> None:
    decision = decide(snap(count=100, expected=134), POLICY)
    assert not decision.complete
    assert "100/134" in decision.reason
    fallback = decide(snap(count=100, quiet=60.0, expected=134), POLICY)
    assert fallback.complete and fallback.reason == "quiet for 60 s (fallback: 100/134 expected instances)"


def test_more_instances_than_expected_ignores_the_count() -> None:
    decision = decide(snap(count=140, expected=134), POLICY)
    assert decision == CompletionDecision(True, "association released, evenly spaced stack of 140", confirmed=True)


def test_released_evenly_spaced_contiguous_stack_completes_early() -> None:
    decision = decide(snap(count=134, quiet=2.5), POLICY)
    assert decision == CompletionDecision(True, "association released, evenly spaced stack of 134", confirmed=True)


def test_unordered_arrival_does_not_matter() -> None:
    positions = [3.0 * k for k in range(50)]
    numbers = list(range(7, 57))
    pairs = list(zip(positions, numbers, strict=True))
    random.Random(4).shuffle(pairs)
    decision = decide(snap(count=50, positions=tuple(p for p, _ in pairs), numbers=tuple(n for _, n in pairs)),
                      POLICY)
    assert decision.complete and "evenly spaced stack of 50" in decision.reason


def test_overlapping_slices_thicker_than_their_step_are_fine() -> None:
    # totalseg_example_dicom: 3 mm slices 2 mm apart, positions descending in arrival
    positions = tuple(-766.5 - 2.0 * k for k in range(20))
    assert decide(snap(count=20, positions=positions), POLICY).complete


def test_open_association_waits_then_completes_as_stalled_sender() -> None:
    waiting = decide(snap(count=134, quiet=30.0, open_associations=1), POLICY)
    assert not waiting.complete and waiting.reason == "waiting: 1 association open"
    stalled = decide(snap(count=134, quiet=60.0, open_associations=2), POLICY)
    assert stalled == CompletionDecision(True, "quiet for 60 s, 2 associations still open (stalled sender)")


@pytest.mark.parametrize(("positions", "numbers", "obstacle"), [
    ((0.0, 3.0, 6.0, 12.0), (1, 2, 3, 4), "gap in slice positions"),
    ((0.0, 3.0, 3.0, 6.0), (1, 2, 3, 4), "duplicate slice positions"),
    ((0.0, 5.0, 10.0, 20.0, 27.0), (1, 2, 3, 4, 5), "uneven slice spacing"),
    ((0.0, 3.0, 6.0, 9.0), (1, 2, 3, 5), "instance numbers not contiguous"),
    ((0.0, 3.0, 6.0, 9.0), (1, 2, 2, 3), "duplicate instance numbers"),
    ((0.0, 3.0, 6.0), (1, 2, 3, 4), "1 of 4 instances without slice position"),
    ((0.0, 3.0, 6.0, 9.0), (1, 2, 3), "1 of 4 instances without instance number"),
])
def test_a_doubtful_stack_waits_for_the_quiet_period(positions: tuple[float, ...], numbers: tuple[int, ...],
                                                      obstacle: str) -> None:
    count = max(len(positions), len(numbers))
    early = decide(snap(count=count, positions=positions, numbers=numbers), POLICY)
    assert early == CompletionDecision(False, f"waiting: {obstacle}")
    late = decide(snap(count=count, quiet=61.0, positions=positions, numbers=numbers), POLICY)
    assert late == CompletionDecision(True, f"quiet for 60 s (fallback: {obstacle})")


def test_spacing_within_tolerance_counts_as_even() -> None:
    positions = (0.0, 3.01, 6.0, 8.99, 12.02)  # rounding noise well inside 1 % / 0.05 mm
    assert decide(snap(count=5, positions=positions), POLICY).complete
    assert not decide(snap(count=5, positions=(0.0, 3.0, 6.2, 9.0, 12.0)), POLICY).complete


def test_single_slice_waits_but_single_multiframe_instance_completes() -> None:
    single = decide(snap(count=1, positions=(12.0,), numbers=(1,)), POLICY)
    assert not single.complete and single.reason == "waiting: a single slice"
    multiframe = decide(snap(count=1, positions=(), numbers=(1,)), POLICY)
    assert multiframe == CompletionDecision(True, "association released, single multi-frame instance", confirmed=True)
    assert decide(snap(count=1, quiet=60.0, positions=(12.0,), numbers=(1,)), POLICY).complete


def test_two_slices_released_complete_early() -> None:
    assert decide(snap(count=2, positions=(0.0, 5.0), numbers=(1, 2)), POLICY).complete


def test_quiet_period_is_configurable() -> None:
    policy = CompletionPolicy(quiet_seconds=10.0, settle_seconds=0.5, after_release_seconds=0.5)
    decision = decide(snap(count=4, quiet=10.0, positions=(0.0, 3.0, 9.0, 12.0)), policy)
    assert decision == CompletionDecision(True, "quiet for 10 s (fallback: gap in slice positions)")
    assert decide(snap(count=4, quiet=0.6, since_release=0.6), policy).complete


def test_reasons_fit_the_completion_reason_column() -> None:
    for s in (snap(count=10000, quiet=61.0, open_associations=12), snap(count=3, quiet=61.0, numbers=(1, 2, 9))):
        assert len(decide(s, POLICY).reason) <= 128


# -- what a release can and cannot prove ------------------------------------------------------------------

def test_an_aborted_association_never_counts_as_released_however_perfect_the_stack() -> None:
    """The tester's case: A-ABORT after 40 of 134 slices sent in order leaves a perfect stack of 40."""
    cut = snap(count=40, quiet=30.0, unreleased=1, since_release=None)  # evenly spaced, contiguously numbered
    assert decide(cut, POLICY) == CompletionDecision(False, "waiting: 1 association aborted or dropped")
    late = decide(snap(count=40, quiet=60.0, unreleased=1, since_release=None), POLICY)
    assert late == CompletionDecision(True, "quiet for 60 s (fallback: 1 association aborted or dropped)",
                                      confirmed=False)


def test_one_aborted_carrier_among_released_ones_still_blocks_early_completion() -> None:
    decision = decide(snap(count=134, quiet=30.0, unreleased=1, since_release=25.0), POLICY)
    assert not decision.complete and decision.reason == "waiting: 1 association aborted or dropped"


def test_the_expected_count_is_evidence_even_after_an_abort() -> None:
    decision = decide(snap(count=134, expected=134, unreleased=2, since_release=None), POLICY)
    assert decision == CompletionDecision(True, "expected count reached (134/134)", confirmed=True)


def test_a_release_counts_only_after_the_wait_without_anything_new() -> None:
    policy = CompletionPolicy(quiet_seconds=60.0, settle_seconds=0.5, after_release_seconds=10.0)
    waiting = decide(snap(count=50, quiet=9.0, since_release=9.0), policy)
    assert not waiting.complete and waiting.reason == "waiting: released 9.0 s ago, waiting 10 s"
    done = decide(snap(count=50, quiet=10.5, since_release=10.0), policy)
    assert done == CompletionDecision(True, "association released, evenly spaced stack of 50", confirmed=True)


def test_without_any_release_only_the_quiet_period_decides() -> None:
    waiting = decide(snap(count=50, quiet=59.0, since_release=None), POLICY)
    assert waiting == CompletionDecision(False, "waiting: no association released")
    late = decide(snap(count=50, quiet=60.0, since_release=None), POLICY)
    assert late == CompletionDecision(True, "quiet for 60 s (fallback: no association released)")


def test_fallback_decisions_are_unconfirmed_and_evidence_is_confirmed() -> None:
    fallback = [snap(count=4, quiet=61.0, positions=(0.0, 3.0, 9.0, 12.0)),
                snap(count=5, quiet=61.0, open_associations=1), snap(count=5, quiet=61.0, unreleased=1),
                snap(count=5, quiet=61.0, expected=9)]
    assert all(d.complete and not d.confirmed for d in (decide(s, POLICY) for s in fallback))
    evidence = [snap(count=9, expected=9), snap(count=9)]
    assert all(d.complete and d.confirmed for d in (decide(s, POLICY) for s in evidence))


def test_open_association_wins_over_aborted_in_the_reason() -> None:
    decision = decide(snap(count=20, quiet=5.0, open_associations=1, unreleased=1), POLICY)
    assert decision.reason == "waiting: 1 association open"
