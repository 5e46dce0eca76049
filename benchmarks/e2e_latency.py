"""End-to-end latency: last slice sent by storescu -> SEG and RTSTRUCT stored in Orthanc.

Runs the real node (``dicom-node serve``) against a real Orthanc and prints the stage breakdown.
The anchor, measured in the same run, is the same node with the fixed 60 s quiet timer that
mercure and Orthanc use to decide that a series is complete (``--anchor-quiet``).

    .venv/bin/python benchmarks/e2e_latency.py [--series DIR] [--anchor-quiet 60] [--no-anchor]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pydicom  # noqa: E402
from sqlalchemy import select  # noqa: E402

from dicom_node.db.tables import Delivery, Job, Series  # noqa: E402
from tests.e2e import node_process as npx  # noqa: E402
from tests.peers import start_orthanc  # noqa: E402

log = logging.getLogger("e2e_latency")


@dataclass
class Run:
    label: str
    total: float
    completion_wait: float
    queue_wait: float
    stages: dict[str, float]
    delivery: float
    reason: str


def one_run(label: str, files: list[Path], workdir: Path, quiet: float, early: bool) -> Run:
    orthanc = start_orthanc(workdir / "orthanc")
    try:
        # the shipped wait after a release (completion.after_release_seconds), not the tests' short one
        completion: dict[str, float] = {"quiet_seconds": quiet, "after_release_seconds": 10.0}
        if not early:
            # the anchor: only the quiet timer decides (settle = quiet disables the early rules)
            completion["settle_seconds"] = quiet
        config = npx.write_config(workdir, orthanc, **completion)
        node = npx.start(config, "serve")
        try:
            npx.wait_listening(node)
            log.info("%s: sending %d slices", label, len(files))
            last_sent = npx.storescu(node.port, files)
            last_sent_wall = time.time()
            study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            npx.wait_for_outputs(orthanc, study_uid, node, timeout=quiet + 600)
            total = time.monotonic() - last_sent
        finally:
            node.stop()
        with npx.index_of(config)() as s:
            job = s.scalars(select(Job)).one()
            series = s.scalars(select(Series)).one()
            deliveries = s.scalars(select(Delivery)).all()
            created = job.created_at.timestamp()
            started = job.started_at.timestamp() if job.started_at else created
            stages = json.loads(job.timings or "{}")
            finished_processing = started + sum(stages.values())
            last_delivery = max(d.sent_at.timestamp() for d in deliveries if d.sent_at)
            return Run(label, total, created - last_sent_wall, started - created, stages,
                       last_delivery - finished_processing, series.completion_reason)
    finally:
        orthanc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=Path,
                        default=REPO.parent / "shared" / "data" / "ct" / "nsclc_lung1_001" / "ct")
    parser.add_argument("--anchor-quiet", type=float, default=60.0)
    parser.add_argument("--no-anchor", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    files = sorted(p for p in args.series.iterdir() if p.is_file())
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        runs.append(one_run("ours (series-aware completion)", files, Path(tmp) / "ours", 60.0, early=True))
        if not args.no_anchor:
            runs.append(one_run(f"anchor: fixed {args.anchor_quiet:g} s quiet timer", files, Path(tmp) / "anchor",
                                args.anchor_quiet, early=False))
    print(f"machine: {platform.node()} {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
          f"storescu and node with TCP_NODELAY on; series {args.series.name} ({len(files)} slices)")
    stage_names = sorted({k for r in runs for k in r.stages})
    header = ["run", "total s", "completion s", "queue s", *[f"{k} s" for k in stage_names], "delivery s"]
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for r in runs:
        cells = [r.label, f"{r.total:.1f}", f"{r.completion_wait:.1f}", f"{r.queue_wait:.1f}",
                 *[f"{r.stages.get(k, 0):.1f}" for k in stage_names], f"{r.delivery:.1f}"]
        print(" | ".join(cells))
    for r in runs:
        print(f"{r.label}: completion reason: {r.reason}")
    if len(runs) == 2:
        print(f"ours is {runs[1].total / runs[0].total:.1f}x faster from last slice to objects in the PACS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
