"""Crash safety: the whole node is killed with SIGKILL at each point of a series' way through it and
started again. In the end the PACS and the planning system hold exactly one SEG and one RTSTRUCT of
the whole series: nothing lost, nothing of part of the series, no second version. Only in the
documented window (the peer answered, the node had not yet recorded it) may the same object be
sent twice; the test counts how often that happens."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest

from tests.e2e import crash_harness
from tests.peers import Orthanc

log = logging.getLogger(__name__)
pytestmark = pytest.mark.e2e
SLICES = 60  # the middle of the real CT: each scenario runs the whole node twice; `crash_test.sh` sends all 134


@pytest.fixture(scope="module")
def crash_ct_files(nsclc_ct_files: list[Path]) -> list[Path]:
    """A contiguous stack of SLICES slices of the real CT (one series, fewer slices to segment)."""
    def z(path: Path) -> float:
        return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])

    by_z = sorted(nsclc_ct_files, key=z)
    start = (len(by_z) - SLICES) // 2
    return by_z[start:start + SLICES]


@pytest.mark.parametrize("point", crash_harness.KILL_POINTS)
def test_kill_9_loses_nothing_and_sends_no_partial_or_second_version(
        point: str, orthanc: Orthanc, crash_ct_files: list[Path], tmp_path: Path) -> None:
    outcome = crash_harness.run(point, tmp_path, orthanc, crash_ct_files)
    log.info("%s", outcome.line())
    assert not outcome.lost, outcome.line()
    assert outcome.seg_in_pacs == 1 and outcome.rtstruct_in_pacs == 1, outcome.line()
    assert not outcome.partial, f"{outcome.referenced_counts} of {outcome.expected_instances}: {outcome.line()}"
    assert not outcome.duplicate_objects, outcome.line()
    assert len(outcome.tps_receptions) == 2, outcome.line()
    if point != "mid-delivery":
        assert outcome.resent_in_window == 0, outcome.line()
