"""A destination outage of real length, ended without any manual step.

    .venv/bin/python -m tests.e2e.outage_scenario --outage-seconds 600 --work DIR --result FILE

A real `dicom-node serve` receives a CT (40 slices of the NSCLC series, sent with storescu) while
its PACS is down: nothing listens on the PACS's port. The first delivery attempt fails; from then on
the PACS stays down for ``--outage-seconds``. Then a real Orthanc starts on that port, and the
script waits for the node's own retries to deliver the SEG and the RTSTRUCT. The result (JSON) says
when each thing happened, how many attempts the deliveries took and what Orthanc holds.

The test suite starts this in the background when the session starts and checks its result last
(tests/e2e/test_destination_outage.py), so the ten minutes pass while the other tests run.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pydicom

from tests.conftest import SHARED_DATA, free_port
from tests.e2e import node_process as npx
from tests.peers import start_orthanc


class _Pacs:
    """The destination's address while nothing listens on it."""

    def __init__(self, aet: str, dicom_port: int) -> None:
        self.aet, self.dicom_port = aet, dicom_port


def _deliveries(config: Path) -> list[tuple[str, int, str]]:
    try:
        with sqlite3.connect(f"file:{config.parent / 'index.sqlite'}?mode=ro", uri=True, timeout=1) as conn:
            return [(str(s).lower(), int(a), str(e)) for s, a, e in
                    conn.execute("SELECT status, attempts, last_error FROM deliveries ORDER BY id")]
    except sqlite3.Error:
        return []


def run(outage_seconds: float, work: Path, max_backoff_seconds: float) -> dict[str, Any]:
    ct_files = sorted((SHARED_DATA / "ct" / "nsclc_lung1_001" / "ct").glob("*.dcm"))[40:80]
    study_uid = str(pydicom.dcmread(ct_files[0], stop_before_pixels=True).StudyInstanceUID)
    pacs = _Pacs("ORTHANC", free_port())
    http_port = free_port()
    config = npx.write_config(work, pacs, quiet_seconds=20, settle_seconds=1)
    text = config.read_text().replace("retry_backoff_seconds = 1",
                                      f"retry_backoff_seconds = 5\nretry_max_backoff_seconds = {max_backoff_seconds}")
    config.write_text(text)
    result: dict[str, Any] = {"outage_seconds": outage_seconds, "max_backoff_seconds": max_backoff_seconds}
    node = npx.start(config, "serve")
    orthanc = None
    try:
        npx.wait_listening(node, timeout=120)
        npx.storescu(node.port, ct_files)
        start = time.monotonic()
        while not any(attempts >= 1 and error for _, attempts, error in _deliveries(config)):
            if time.monotonic() - start > 300:
                raise RuntimeError(f"no delivery attempt within 300 s; deliveries: {_deliveries(config)}")
            time.sleep(1)
        first_failure = time.monotonic()
        result["first_error"] = next(e for _, a, e in _deliveries(config) if a >= 1 and e)
        time.sleep(max(0.0, outage_seconds - (time.monotonic() - first_failure)))
        orthanc = start_orthanc(work / "orthanc", aet=pacs.aet, dicom_port=pacs.dicom_port, http_port=http_port)
        back = time.monotonic()
        result["outage_measured_seconds"] = round(back - first_failure, 1)
        deadline = back + max_backoff_seconds + 120
        while time.monotonic() < deadline:
            rows = _deliveries(config)
            if rows and all(status == "sent" for status, _, _ in rows):
                break
            time.sleep(1)
        result["delivered_after_pacs_back_seconds"] = round(time.monotonic() - back, 1)
        result["deliveries"] = [{"status": s, "attempts": a} for s, a, _ in _deliveries(config)]
        found = npx.outputs_in(orthanc, study_uid)
        result["in_pacs"] = {kind: len(ids) for kind, ids in found.items()}
        result["node_alive"] = node.process.poll() is None
    finally:
        node.stop()
        if orthanc is not None:
            orthanc.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage-seconds", type=float, default=600)
    parser.add_argument("--max-backoff-seconds", type=float, default=120,
                        help="the destination's retry_max_backoff_seconds (the default config caps at 900)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args.outage_seconds, args.work, args.max_backoff_seconds)
    except Exception as exc:  # the test reads the reason from the result file
        result = {"error": f"{type(exc).__name__}: {exc}"}
    args.result.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2), file=sys.stderr)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    raise SystemExit(main())
