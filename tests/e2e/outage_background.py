"""The handle on the destination-outage scenario that the test session starts in the background."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

OUTAGE_TEST_FILE = "test_destination_outage.py"


@dataclass(frozen=True)
class OutageRun:
    process: subprocess.Popen[bytes]
    result: Path
    log: Path
