"""Tests that the session runs in the background while the others run, and judges at its end.

Each one is a long test that mostly needs time (a ten-minute outage) or CPU that the many waiting
tests leave idle (117 classes on a 512x512x300 CT). ``tests/conftest.py`` starts the selected ones
when collection ends and moves their judging tests last.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

# judging test file -> the pytest file it runs in a process of its own
BACKGROUND_PYTEST = {"test_total117_through_node.py": "tests/e2e/total117_scenario.py"}


@dataclass(frozen=True)
class PytestRun:
    """A pytest process running one scenario file; ``log`` holds its output."""

    process: subprocess.Popen[bytes]
    log: Path
