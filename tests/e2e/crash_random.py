"""Crash the node at N random points and report what the peers received.

    .venv/bin/python -m tests.e2e.crash_random --runs 20 [--seed 7] [--work DIR]

Each run picks a kill point (tests/e2e/crash_harness.py) and a random delay after it, kills every
process of the node with SIGKILL, starts it again (the sender re-sends a cut series) and waits for
the deliveries. It prints one line per run and a summary; it exits 1 when any run lost a series,
delivered part of one, or sent a second version. Objects re-sent in the documented window (the peer
answered, the node had not recorded it yet) are counted and reported, not failed.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
from pathlib import Path

from tests.e2e import crash_harness
from tests.peers import start_orthanc

log = logging.getLogger("crash_random")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None, help="random seed (printed, so a run can be repeated)")
    parser.add_argument("--max-delay", type=float, default=1.5, help="largest delay after the kill point, s")
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temp folder)")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2].parent / "shared" / "data")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("pynetdicom",):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    ct_files = sorted((args.data / "ct" / "nsclc_lung1_001" / "ct").glob("*.dcm"))
    if len(ct_files) != 134:
        log.error("expected the 134 slices of %s/ct/nsclc_lung1_001/ct, found %d", args.data, len(ct_files))
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="crash-"))
    log.info("seed %d, %d runs, work folder %s", seed, args.runs, work)
    orthanc = start_orthanc(work / "orthanc")
    outcomes = []
    try:
        for run in range(1, args.runs + 1):
            point = rng.choice(crash_harness.KILL_POINTS)
            delay = round(rng.uniform(0, args.max_delay), 2)
            folder = work / f"run-{run:03d}"
            folder.mkdir(parents=True)
            outcome = crash_harness.run(point, folder, orthanc, ct_files, delay=delay)
            outcomes.append(outcome)
            log.info("run %3d  +%.2f s  %s", run, delay, outcome.line())
    finally:
        orthanc.stop()
    lost = sum(o.lost for o in outcomes)
    partial = sum(o.partial for o in outcomes)
    duplicates = sum(o.duplicate_objects for o in outcomes)
    window = sum(o.resent_in_window for o in outcomes)
    log.info("%d runs: %d lost, %d partial deliveries, %d duplicates; %d object(s) re-sent in the "
             "documented at-least-once window", len(outcomes), lost, partial, duplicates, window)
    return 1 if lost or partial or duplicates else 0


if __name__ == "__main__":
    raise SystemExit(main())
