"""The worker leaves out indexed instances whose file never arrived (never acknowledged)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from dicom_node.worker import existing_paths


def test_all_present_is_unchanged(tmp_path: Path) -> None:
    paths = [tmp_path / f"{i}.dcm" for i in range(3)]
    for p in paths:
        p.write_bytes(b"x")
    assert existing_paths(paths, grace_seconds=5) == tuple(paths)  # no wait when nothing is missing


def test_missing_file_is_left_out_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    present = tmp_path / "a.dcm"
    present.write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        assert existing_paths([present, tmp_path / "never.dcm"], grace_seconds=0.01) == (present,)
    assert "1 indexed instance(s) have no file" in caplog.text


def test_file_arriving_within_the_grace_period_is_kept(tmp_path: Path) -> None:
    late = tmp_path / "late.dcm"
    timer = threading.Timer(0.05, late.write_bytes, args=(b"x",))
    timer.start()
    try:
        assert existing_paths([late], grace_seconds=1.0) == (late,)
    finally:
        timer.join()
