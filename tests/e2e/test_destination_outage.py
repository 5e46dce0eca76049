"""A ten-minute destination outage ends in delivery without any manual step.

The scenario (tests/e2e/outage_scenario.py: a real `dicom-node serve`, storescu, and an Orthanc that
comes up on the PACS's port only after ten minutes) is started in the background when the session
starts (tests/conftest.py); this test waits for it and judges its result."""

from __future__ import annotations

import json

import pytest

from tests.conftest import OUTAGE_RUN

pytestmark = pytest.mark.e2e


def test_a_ten_minute_outage_ends_in_delivery_without_a_manual_step(request: pytest.FixtureRequest) -> None:
    run = request.config.stash[OUTAGE_RUN]
    try:
        run.process.wait(timeout=1800)
    except Exception:
        pytest.fail(f"the outage scenario did not end in 30 min:\n{run.log.read_text(errors='replace')[-4000:]}")
    assert run.result.is_file(), run.log.read_text(errors="replace")[-4000:]
    result = json.loads(run.result.read_text())
    assert "error" not in result, f"{result}\n{run.log.read_text(errors='replace')[-4000:]}"
    assert result["outage_measured_seconds"] >= 600, result
    assert result["node_alive"], result
    statuses = {d["status"] for d in result["deliveries"]}
    assert statuses == {"sent"}, result
    assert all(d["attempts"] > 1 for d in result["deliveries"]), "every delivery should have been retried"
    assert result["in_pacs"] == {"SEG": 1, "RTSTRUCT": 1}, result
    # the next try after the PACS is back comes within the capped back-off (plus the send itself)
    assert result["delivered_after_pacs_back_seconds"] <= result["max_backoff_seconds"] + 60, result
