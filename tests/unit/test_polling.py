"""Reactor polling shared out over the open associations."""

from __future__ import annotations

from types import SimpleNamespace

from dicom_node.receive import polling
from dicom_node.receive.polling import ReactorPolling, delay_for


def _assoc() -> SimpleNamespace:
    return SimpleNamespace(dul=SimpleNamespace(_run_loop_delay=polling.PYNETDICOM_DEFAULT_DELAY))


def test_delay_grows_with_open_associations_up_to_pynetdicoms_default() -> None:
    assert delay_for(0) == delay_for(1) == polling.FASTEST_DELAY
    assert delay_for(2) == 2 * polling.FASTEST_DELAY
    assert delay_for(50) == polling.PYNETDICOM_DEFAULT_DELAY
    assert all(delay_for(n) <= delay_for(n + 1) for n in range(20))


def test_open_associations_are_retuned_as_others_come_and_go() -> None:
    tracker = ReactorPolling()
    first, second = _assoc(), _assoc()
    tracker.opened(first)
    assert first.dul._run_loop_delay == polling.FASTEST_DELAY
    tracker.opened(second)
    assert first.dul._run_loop_delay == second.dul._run_loop_delay == delay_for(2)
    tracker.closed(second)
    tracker.closed(second)  # a second close event for the same association changes nothing
    assert first.dul._run_loop_delay == polling.FASTEST_DELAY
    assert tracker.associations() == [first]


def test_a_pynetdicom_without_the_knob_is_left_alone() -> None:
    tracker = ReactorPolling()
    bare = SimpleNamespace(dul=SimpleNamespace())
    tracker.opened(bare)  # must not raise, and must not invent the attribute
    assert not hasattr(bare.dul, "_run_loop_delay")
    tracker.closed(bare)
