"""Series completion over real associations into the in-process listener: what can and cannot
make a series count as complete, and what late instances do to jobs already made.

Short timings: quiet 3 s, settle 0.3 s, after_release 1 s. The sweep is called by the test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import jobs
from dicom_node.db.engine import open_index
from dicom_node.db.tables import Association, Instance, Job, JobStatus
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from dicom_node.scheduler import sweep
from dicom_node.settings import Settings
from tests.conftest import make_settings

QUIET, SETTLE, AFTER_RELEASE = 3.0, 0.3, 1.0
RULES = {"rules": [{"name": "ct", "model": "builtin", "destinations": [], "outputs": ["SEG"],
                    "match": {"Modality": "CT"}}]}


@dataclass
class Node:
    settings: Settings
    factory: sessionmaker[Session]

    @property
    def port(self) -> int:
        return self.settings.node.port

    def jobs(self) -> list[Job]:
        with self.factory() as s:
            return list(s.scalars(select(Job).order_by(Job.id)))

    def sweep_for(self, seconds: float) -> list[Job]:
        """Sweep every 0.1 s for ``seconds``; the jobs then."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sweep(self.settings, self.factory)
            time.sleep(0.1)
        return self.jobs()

    def sweep_until(self, n: int, timeout: float = 10.0) -> list[Job]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sweep(self.settings, self.factory)
            found = self.jobs()
            if len(found) >= n:
                return found
            time.sleep(0.1)
        pytest.fail(f"fewer than {n} job(s) after {timeout} s: {[(j.id, j.instance_count) for j in self.jobs()]}")


def start_node(tmp_path: Path, **sections: object) -> Iterator[Node]:
    settings = make_settings(tmp_path, routing=RULES, **sections,  # type: ignore[arg-type]
                             completion={"quiet_seconds": QUIET, "settle_seconds": SETTLE,
                                         "after_release_seconds": AFTER_RELEASE, "sweep_interval_seconds": 0.2})
    factory = open_index(settings.node.database_url)
    ctx = ReceiverContext(factory=factory, store=InstanceStore(settings.node.storage_dir, 1))
    server = start_listener(settings.node, ctx)
    try:
        yield Node(settings, factory)
    finally:
        server.shutdown()
        ctx.close()
        factory.kw["bind"].dispose()


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[Node]:
    yield from start_node(tmp_path)


@pytest.fixture(scope="module")
def slices(nsclc_ct_files: list[Path]) -> list[Dataset]:
    """60 contiguous slices of ct/nsclc_lung1_001 in instance-number order (an evenly spaced stack)."""
    datasets = sorted((pydicom.dcmread(p) for p in nsclc_ct_files), key=lambda d: int(d.InstanceNumber))
    return datasets[40:100]


class Sender:
    """One real association from a CT scanner's AE."""

    def __init__(self, port: int) -> None:
        ae = AE(ae_title="CTSCANNER")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
        assert self.assoc.is_established

    def send(self, datasets: list[Dataset]) -> list[int]:
        return [int(self.assoc.send_c_store(ds).Status) for ds in datasets]


def send_released(port: int, datasets: list[Dataset]) -> None:
    sender = Sender(port)
    assert sender.send(datasets) == [0] * len(datasets)
    sender.assoc.release()


def test_an_association_aborted_after_40_is_never_dispatched_early_only_flagged_after_quiet(
        node: Node, slices: list[Dataset]) -> None:
    sender = Sender(node.port)
    assert sender.send(slices[:40]) == [0] * 40  # a perfect, contiguous stack of 40
    sender.assoc.abort()
    aborted_at = time.monotonic()
    assert node.sweep_for(SETTLE + AFTER_RELEASE + 0.7) == []  # what released would have dispatched by now
    (job,) = node.sweep_until(1)
    assert time.monotonic() - aborted_at >= QUIET - 0.2
    assert job.instance_count == 40
    assert job.completion_fallback is True
    assert job.completion_reason == f"quiet for {QUIET:g} s (fallback: 1 association aborted or dropped)"
    with node.factory() as s:
        (row,) = s.scalars(select(Association)).all()
    assert row.closed_at is not None and row.released is False


def test_an_aborted_carrier_is_not_made_good_by_a_later_released_one(node: Node, slices: list[Dataset]) -> None:
    """Cut after 30, the rest (not the first 30 again) on a new association that is released: the
    cut association still carries half the series, and it was never released."""
    cut = Sender(node.port)
    assert cut.send(slices[:30]) == [0] * 30
    cut.assoc.abort()
    send_released(node.port, slices[30:])
    assert node.sweep_for(SETTLE + AFTER_RELEASE + 0.7) == []
    (job,) = node.sweep_until(1)
    assert (job.instance_count, job.completion_fallback) == (60, True)
    assert job.completion_reason == f"quiet for {QUIET:g} s (fallback: 1 association aborted or dropped)"


def test_a_dropped_connection_counts_as_aborted(node: Node, slices: list[Dataset]) -> None:
    sender = Sender(node.port)
    assert sender.send(slices[:10]) == [0] * 10
    sender.assoc.dul.socket.socket.close()  # TCP closed, no A-RELEASE and no A-ABORT
    sender.assoc.kill()
    assert node.sweep_for(SETTLE + AFTER_RELEASE + 0.7) == []
    with node.factory() as s:
        (row,) = s.scalars(select(Association)).all()
    assert row.closed_at is not None and row.released is False


def test_the_whole_series_resent_on_a_new_association_after_a_cut_is_one_job_of_the_full_series(
        node: Node, slices: list[Dataset]) -> None:
    cut = Sender(node.port)
    assert cut.send(slices[:30]) == [0] * 30
    cut.assoc.abort()
    send_released(node.port, slices)  # the sender starts again from the first slice
    (job,) = node.sweep_until(1)
    assert (job.instance_count, job.completion_fallback) == (60, False)
    assert job.completion_reason == "association released, evenly spaced stack of 60"
    assert len(node.sweep_for(QUIET + 0.5)) == 1  # nothing more after the quiet period either
    with node.factory() as s:
        first, second = s.scalars(select(Association).order_by(Association.id)).all()
        carriers = set(s.scalars(select(Instance.association_id)))
    assert (first.released, second.released) == (False, True)
    assert carriers == {second.id}  # the re-sent duplicates belong to the association that brought them


def test_several_associations_with_pauses_longer_than_settle_make_one_job(node: Node, slices: list[Dataset]) -> None:
    for part in (slices[:20], slices[20:40], slices[40:]):
        send_released(node.port, part)
        assert node.sweep_for(SETTLE + 0.4) == []  # a pause longer than settle, shorter than after_release
    (job,) = node.sweep_until(1)
    assert (job.instance_count, job.completion_fallback) == (60, False)
    assert len(node.sweep_for(AFTER_RELEASE + 0.3)) == 1


def test_the_expected_count_dispatches_early_even_with_the_association_open(
        node: Node, slices: list[Dataset]) -> None:
    datasets = []
    for ds in slices[:20]:
        copy = deepcopy(ds)  # the module's datasets stay as they are
        copy.ImagesInAcquisition = 20
        datasets.append(copy)
    sender = Sender(node.port)
    try:
        assert sender.send(datasets) == [0] * 20
        (job,) = node.sweep_until(1, timeout=QUIET - 0.5)  # before the quiet period could
        assert (job.instance_count, job.completion_fallback) == (20, False)
        assert job.completion_reason == "expected count reached (20/20)"
    finally:
        sender.assoc.release()


def test_a_release_dispatches_after_after_release_seconds_not_before(node: Node, slices: list[Dataset]) -> None:
    send_released(node.port, slices[:20])
    released_at = time.monotonic()
    assert node.sweep_for(AFTER_RELEASE - 0.3) == []
    (job,) = node.sweep_until(1)  # the reason below says it was the release, not the quiet period
    assert time.monotonic() - released_at >= AFTER_RELEASE - 0.1  # the node notes it before the sender returns
    assert (job.instance_count, job.completion_fallback) == (20, False)
    assert job.completion_reason == "association released, evenly spaced stack of 20"


def test_late_instances_supersede_a_job_that_delivered_nothing(node: Node, slices: list[Dataset]) -> None:
    send_released(node.port, slices[:20])
    (first,) = node.sweep_until(1)
    assert first.status == JobStatus.QUEUED
    late = Sender(node.port)
    assert late.send(slices[20:25]) == [0] * 5
    # held at once, while the late association is still open: no worker may contour the part
    sweep(node.settings, node.factory)
    (held,) = node.jobs()
    assert held.status == JobStatus.SUPERSEDED and held.superseded_by is None
    assert jobs.claim(node.factory, "w") is None
    late.assoc.release()
    old, new = node.sweep_until(2)
    assert (old.status, old.superseded_by) == (JobStatus.SUPERSEDED, new.id)
    assert (new.status, new.supersedes, new.instance_count) == (JobStatus.QUEUED, old.id, 25)
    assert jobs.claim(node.factory, "w") == new.id


def test_a_sop_instance_received_again_under_another_series_is_refused_and_leaves_no_file(
        node: Node, slices: list[Dataset]) -> None:
    send_released(node.port, slices[:3])
    moved = deepcopy(slices[1])
    moved.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    sender = Sender(node.port)
    assert sender.send([moved]) == [0x0111]  # duplicate SOP Instance
    assert sender.send([slices[2]]) == [0]  # the same series again is a harmless duplicate
    sender.assoc.release()
    storage = node.settings.node.storage_dir
    files = sorted(p for p in storage.rglob("*.dcm"))
    with node.factory() as s:
        indexed = sorted(Path(p) for p in s.scalars(select(Instance.path)))
    assert files == indexed and len(files) == 3
    assert not (storage / str(moved.StudyInstanceUID) / str(moved.SeriesInstanceUID)).exists()
