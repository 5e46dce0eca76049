"""Kill the whole node with SIGKILL at a chosen point of a series' way through it, start it again, and
judge what the planning system and the PACS received in the end.

The node runs as `dicom-node serve` (listener, sweep, worker, deliveries) in its own process group,
and every process of it is killed at once, as a power cut or the kernel's OOM killer would leave
it. Two real destinations receive the outputs:

- ``PACS``: a real Orthanc, whose index tells which output objects it holds;
- ``TPS``: dcmtk's ``storescp`` with unique file names, so that every C-STORE it answered leaves its
  own file and a re-sent object is counted, not hidden by the PACS' de-duplication. It sleeps
  ``TPS_SLEEP_AFTER_S`` after writing each object and before answering, which opens the window
  between "the peer holds it" and "the node recorded it" wide enough to kill the node inside it.

Kill points are found by watching the node from outside (the index database, the TPS folder), not
by hooks in the node's code. What the watcher saw when it killed is part of the outcome.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from tests.conftest import free_port
from tests.e2e import node_process as npx
from tests.peers import Orthanc, nodelay_env, require_tool

log = logging.getLogger(__name__)

TPS_SLEEP_AFTER_S = 3
RESEND_AFTER_S = 5
SEG_SOP_CLASS = npx.SEG_SOP_CLASS
RTSTRUCT_SOP_CLASS = npx.RTSTRUCT_SOP_CLASS

# in the order a series meets them
KILL_POINTS = (
    "mid-association",  # instances acknowledged, the association still sending
    "after-release",  # the whole series received and released, no job yet
    "job-queued",  # the job row exists
    "load",  # the worker reads the CT
    "segment",
    "write",  # SEG / RTSTRUCT being written
    "between-deliveries",  # the PACS has the outputs, the TPS (down at first) not yet
    "mid-delivery",  # the TPS wrote an object and has not answered yet: the at-least-once window
)


@dataclass
class Outcome:
    point: str
    seen_at_kill: str
    expected_instances: int
    seg_in_pacs: int = 0
    rtstruct_in_pacs: int = 0
    # per output SOP Instance UID, how many times the TPS answered a C-STORE for it
    tps_receptions: Counter[str] = field(default_factory=Counter)
    referenced_counts: list[int] = field(default_factory=list)  # CT instances each output refers to
    lost: bool = False
    detail: str = ""

    @property
    def partial(self) -> bool:
        return any(n != self.expected_instances for n in self.referenced_counts)

    @property
    def duplicate_objects(self) -> bool:
        """More than one SEG or RTSTRUCT for the series: a second job or version went out."""
        tps_objects = len(self.tps_receptions)
        return self.seg_in_pacs > 1 or self.rtstruct_in_pacs > 1 or tps_objects > 2

    @property
    def resent_in_window(self) -> int:
        """Objects the TPS answered more than once: the documented at-least-once window."""
        return sum(1 for n in self.tps_receptions.values() if n > 1)

    def line(self) -> str:
        return (f"{self.point:<19} seen {self.seen_at_kill:<34} lost={int(self.lost)} "
                f"partial={int(self.partial)} duplicates={int(self.duplicate_objects)} "
                f"resent_in_window={self.resent_in_window} {self.detail}")


class Tps:
    """dcmtk storescp as the planning system: one file per C-STORE answered."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        binary = require_tool("storescp")
        with open(self.folder.parent / "tps.log", "ab") as log_file:
            self.process = subprocess.Popen(
                [binary, "--aetitle", "TPS", "--output-directory", str(self.folder), "--unique-filenames",
                 "--sleep-after", str(TPS_SLEEP_AFTER_S), str(self.port)],
                stdout=log_file, stderr=subprocess.STDOUT, env=nodelay_env())
        time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def files(self) -> list[Path]:
        return [p for p in self.folder.iterdir() if p.is_file()]

    def receptions(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for path in self.files():
            try:
                counts[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] += 1
            except Exception:  # a file storescp was still writing when the count was taken
                continue
        return counts


def crash_config(tmp: Path, orthanc: Orthanc, tps_port: int) -> Path:
    """The node's config: two destinations, a short back-off, and completion timings short enough for
    a test (the evenly spaced, released series goes after ``after_release_seconds``)."""
    config = npx.write_config(tmp, orthanc, quiet_seconds=20, settle_seconds=1, sweep_interval_seconds=0.3)
    text = config.read_text().replace("heartbeat_seconds = 0.5", "heartbeat_seconds = 0.2")
    # retries close together: a destination back after the restart gets its objects within seconds
    text = text.replace("retry_backoff_seconds = 1", "retry_backoff_seconds = 1\nretry_max_backoff_seconds = 4")
    text = text.replace('destinations = ["PACS"]', 'destinations = ["PACS", "TPS"]')
    text += f"""
[[destinations]]
name = "TPS"
ae_title = "TPS"
host = "127.0.0.1"
port = {tps_port}
retry_backoff_seconds = 1
retry_max_backoff_seconds = 4
"""
    config.write_text(text)
    return config


def start_node(config: Path) -> npx.NodeProcess:
    """`dicom-node serve` in a process group of its own, so that every process of it can be killed."""
    log_path = config.parent / "serve.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(config)],
                                stdout=log_file, stderr=subprocess.STDOUT, env=nodelay_env(), start_new_session=True)
    return npx.NodeProcess(config, proc, log_path)


def kill_all(node: npx.NodeProcess) -> None:
    try:
        os.killpg(node.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    node.process.wait()


def _query(config: Path, sql: str) -> list[tuple[object, ...]]:
    path = config.parent / "index.sqlite"
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return list(conn.execute(sql).fetchall())
    except sqlite3.Error:  # locked or not yet migrated: look again
        return []


def state_line(config: Path, tps: Tps) -> str:
    instances = _query(config, "SELECT count(*) FROM instances")
    jobs = _query(config, "SELECT status, stage FROM jobs ORDER BY id")
    deliveries = _query(config, "SELECT destination, status FROM deliveries ORDER BY id")
    return (f"instances={instances[0][0] if instances else 0} jobs={jobs} "
            f"deliveries={Counter(f'{d}:{s}' for d, s in deliveries)} tps_files={len(tps.files())}")


def _reached(point: str, config: Path, tps: Tps, send_done: bool, expected: int) -> bool:
    jobs = _query(config, "SELECT status, stage FROM jobs")
    if point == "mid-association":
        count = _query(config, "SELECT count(*) FROM instances")
        return not send_done and bool(count) and int(count[0][0]) >= expected // 3  # type: ignore[call-overload]
    if point == "after-release":
        return send_done
    if point == "job-queued":
        return bool(jobs)
    if point in ("load", "segment", "write"):
        return any(str(status).lower() == "running" and stage == point for status, stage in jobs)
    deliveries = _query(config, "SELECT destination, status FROM deliveries")
    pacs_sent = [str(s).lower() for d, s in deliveries if d == "PACS"]
    if point == "between-deliveries":
        return bool(pacs_sent) and all(s == "sent" for s in pacs_sent)
    if point == "mid-delivery":
        return bool(tps.files())
    raise ValueError(f"unknown kill point {point!r}; known: {', '.join(KILL_POINTS)}")


def run(point: str, tmp: Path, orthanc: Orthanc, ct_files: list[Path], delay: float = 0.0,
        timeout: float = 240) -> Outcome:
    """One crash scenario, start to end: kill ``delay`` seconds after ``point`` is reached; the caller
    judges the ``Outcome``."""
    tps = Tps(tmp / "tps", free_port())
    config = crash_config(tmp, orthanc, tps.port)
    study_uid = str(pydicom.dcmread(ct_files[0], stop_before_pixels=True).StudyInstanceUID)
    outcome = Outcome(point, "", len(ct_files))
    orthanc.clear()
    if point != "between-deliveries":  # for that point the TPS is down until the node was killed
        tps.start()
    node = start_node(config)
    sender: subprocess.Popen[bytes] | None = None
    try:
        npx.wait_listening(node)
        sender = _storescu(node.port, ct_files, tmp / "storescu-1.log")
        deadline = time.monotonic() + timeout
        while not _reached(point, config, tps, sender.poll() is not None, len(ct_files)):
            if time.monotonic() > deadline:
                outcome.lost, outcome.detail = True, f"kill point never reached: {state_line(config, tps)}"
                return outcome
            if point == "after-release" and sender.poll() is not None:
                break
            time.sleep(0.01)
        time.sleep(delay)
        kill_all(node)
        outcome.seen_at_kill = state_line(config, tps)
        log.info("%s: killed at %s", point, outcome.seen_at_kill)
        cut = sender.wait(timeout=60) != 0
        tps.stop()
        tps.start()
        node = start_node(config)
        npx.wait_listening(node)
        if cut:  # the sender saw its association fail: it sends the whole series again a little later, as a
            # scanner would; by then the restarted node has had time to judge what it held
            time.sleep(RESEND_AFTER_S)
            resend = _storescu(node.port, ct_files, tmp / "storescu-2.log")
            if resend.wait(timeout=120) != 0:
                outcome.lost, outcome.detail = True, "the resend after the restart failed"
                return outcome
        _wait_delivered(outcome, config, orthanc, tps, study_uid, deadline)
    finally:
        if sender is not None and sender.poll() is None:
            sender.kill()
        kill_all(node)
        tps.stop()
    return outcome


def _storescu(port: int, files: list[Path], log_path: Path) -> subprocess.Popen[bytes]:
    binary = require_tool("storescu")
    with open(log_path, "wb") as log_file:
        return subprocess.Popen([binary, "-aec", "DICOMNODE", "-aet", "CTSCANNER", "127.0.0.1", str(port),
                                 *map(str, files)], stdout=log_file, stderr=subprocess.STDOUT, env=nodelay_env())


def _wait_delivered(outcome: Outcome, config: Path, orthanc: Orthanc, tps: Tps, study_uid: str,
                    deadline: float) -> None:
    """Wait until every delivery is recorded as sent and both peers hold a SEG and an RTSTRUCT, then
    a little longer (a duplicate sent late must be seen), and fill in what they received."""
    settled_since: float | None = None
    while time.monotonic() < deadline:
        deliveries = _query(config, "SELECT status FROM deliveries")
        found = npx.outputs_in(orthanc, study_uid)
        all_sent = bool(deliveries) and all(str(s).lower() == "sent" for (s,) in deliveries)
        done = all_sent and found["SEG"] and found["RTSTRUCT"]
        if done:
            settled_since = settled_since or time.monotonic()
            if time.monotonic() - settled_since > TPS_SLEEP_AFTER_S + 2:
                break
        time.sleep(0.5)
    else:
        outcome.lost = True
        outcome.detail = f"not delivered in time: {state_line(config, tps)}"
    found = npx.outputs_in(orthanc, study_uid)
    outcome.seg_in_pacs, outcome.rtstruct_in_pacs = len(found["SEG"]), len(found["RTSTRUCT"])
    outcome.tps_receptions = tps.receptions()
    for oid in found["SEG"] + found["RTSTRUCT"]:
        outcome.referenced_counts.append(_referenced_instances(npx.dataset_from_bytes(orthanc.instance_file(oid))))


def _referenced_instances(ds: pydicom.Dataset) -> int:
    """How many CT instances an output object says it was made from."""
    if "ReferencedSeriesSequence" in ds:  # SEG: Common Instance Reference module
        return sum(len(s.ReferencedInstanceSequence) for s in ds.ReferencedSeriesSequence)
    study = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]  # RTSTRUCT
    return sum(len(s.ContourImageSequence) for s in study.RTReferencedSeriesSequence)
