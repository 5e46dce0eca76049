"""The receiver over real associations on a free localhost port."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.engine import open_index
from dicom_node.db.tables import Association, Instance
from dicom_node.db.tables import Series as SeriesRow
from dicom_node.receive import polling
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from dicom_node.settings import Settings
from tests.conftest import make_settings
from tests.peers import nodelay_env, require_tool


@dataclass
class Node:
    settings: Settings
    factory: sessionmaker[Session]
    store: InstanceStore
    ctx: ReceiverContext

    @property
    def port(self) -> int:
        return self.settings.node.port

    def instance_count(self) -> int:
        with self.factory() as s:
            return int(s.scalar(select(func.count(Instance.id))) or 0)


def _start(tmp_path: Path, housekeeping: dict[str, object] | None = None, **node: object) -> Iterator[Node]:
    sections: dict[str, object] = {"node": node} if node else {}
    if housekeeping is not None:
        sections["housekeeping"] = housekeeping
    settings = make_settings(tmp_path, **sections)
    factory = open_index(settings.node.database_url)
    store = InstanceStore(settings.node.storage_dir, settings.node.min_free_disk_mb)
    ctx = ReceiverContext(factory=factory, store=store)
    server = start_listener(settings.node, ctx)
    try:
        yield Node(settings, factory, store, ctx)
    finally:
        server.shutdown()
        factory.kw["bind"].dispose()


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[Node]:
    yield from _start(tmp_path)


def _associate(port: int, contexts: list[tuple[str, list[str]]], calling: str = "TESTSCU"):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    return ae.associate("127.0.0.1", port, ae_title="DICOMNODE")


def _send(port: int, ds: pydicom.Dataset, calling: str = "TESTSCU") -> int | None:
    """Store one dataset; None when no presentation context was accepted (a refusal)."""
    ts = str(ds.file_meta.TransferSyntaxUID)
    assoc = _associate(port, [(str(ds.SOPClassUID), [ts])], calling)
    if not assoc.is_established:  # pynetdicom gives up when no context was accepted
        return None
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status) if status else -1
    finally:
        assoc.release()


def test_echo_and_store_uncompressed(node: Node, nsclc_ct_files: list[Path]) -> None:
    assoc = _associate(node.port, [(Verification, [ImplicitVRLittleEndian]),
                                   (CTImageStorage, [ExplicitVRLittleEndian])])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    for path in nsclc_ct_files[:3]:
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
    assoc.release()
    assert node.instance_count() == 3
    with node.factory() as s:
        row = s.scalars(select(Instance)).first()
        assert row is not None
        stored = pydicom.dcmread(row.path)
        original = pydicom.dcmread(next(p for p in nsclc_ct_files if pydicom.dcmread(p).SOPInstanceUID == row.sop_uid))
        assert np.array_equal(stored.pixel_array, original.pixel_array)
    # the listener records the release in its own thread, after the requestor's release returned
    deadline = time.monotonic() + 10
    while True:
        with node.factory() as s:
            if s.scalar(select(Association.released)) is True:
                break
        assert time.monotonic() < deadline, "the association's release was not recorded"
        time.sleep(0.05)


def _dcmtk_compress(tool: list[str], src: Path, dst: Path) -> pydicom.Dataset:
    require_tool(tool[0])
    subprocess.run([*tool, str(src), str(dst)], check=True, capture_output=True)
    return pydicom.dcmread(dst)


COMPRESSORS = {
    "jpeg-lossless": (["dcmcjpeg", "+e1"], "1.2.840.10008.1.2.4.70"),
    "jpeg-ls": (["dcmcjpls"], "1.2.840.10008.1.2.4.80"),
    "rle": (["dcmcrle"], "1.2.840.10008.1.2.5"),
    "deflated": (["dcmconv", "+td"], "1.2.840.10008.1.2.1.99"),
    "implicit": (["dcmconv", "+ti"], "1.2.840.10008.1.2"),
}


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_compressed_syntaxes_are_stored_and_decode(node: Node, nsclc_ct_files: list[Path], tmp_path: Path,
                                                   name: str) -> None:
    tool, ts = COMPRESSORS[name]
    ds = _dcmtk_compress(tool, nsclc_ct_files[10], tmp_path / f"{name}.dcm")
    assert ds.file_meta.TransferSyntaxUID == ts
    assert _send(node.port, ds) == 0
    with node.factory() as s:
        row = s.scalars(select(Instance)).one()
        assert row.transfer_syntax_uid == ts
        decoded = pydicom.dcmread(row.path).pixel_array
    assert np.array_equal(decoded, pydicom.dcmread(nsclc_ct_files[10]).pixel_array)


def test_jpeg2000_from_the_real_compressed_series(node: Node, shared_data: Path) -> None:
    ds = pydicom.dcmread(shared_data / "odd" / "pydicom-data" / "693_J2KR.dcm")
    assert _send(node.port, ds) == 0
    with node.factory() as s:
        row = s.scalars(select(Instance)).one()
        assert pydicom.dcmread(row.path).pixel_array.shape == ds.pixel_array.shape


def test_duplicate_instance_is_stored_once(node: Node, nsclc_ct_files: list[Path]) -> None:
    ds = pydicom.dcmread(nsclc_ct_files[0])
    assert _send(node.port, ds) == 0
    assert _send(node.port, ds) == 0
    assert node.instance_count() == 1
    assert len(list(node.settings.node.storage_dir.rglob("*.dcm"))) == 1


def test_calling_ae_not_on_the_allow_list_is_rejected(tmp_path: Path, nsclc_ct_files: list[Path]) -> None:
    for n in _start(tmp_path, allowed_calling_aes=["SCANNER1"]):
        bad = _associate(n.port, [(CTImageStorage, [ExplicitVRLittleEndian])], calling="INTRUDER")
        assert bad.is_rejected
        assert _send(n.port, pydicom.dcmread(nsclc_ct_files[0]), calling="SCANNER1") == 0
        assert n.instance_count() == 1


def test_non_ct_sop_class_is_refused_at_negotiation(node: Node) -> None:
    assoc = _associate(node.port, [(MRImageStorage, [ExplicitVRLittleEndian]),
                                   (Verification, [ImplicitVRLittleEndian])])
    assert assoc.is_established
    assert [str(c.abstract_syntax) for c in assoc.accepted_contexts] == [Verification]
    assert [str(c.abstract_syntax) for c in assoc.rejected_contexts] == [MRImageStorage]
    assoc.release()


def test_full_disk_answers_out_of_resources_and_stores_nothing(tmp_path: Path, nsclc_ct_files: list[Path]) -> None:
    # more than any disk has free; the emergency clean-up, which must start above that floor, is off
    for n in _start(tmp_path, housekeeping={"emergency_free_disk_mb": 0}, min_free_disk_mb=10**9):
        assert _send(n.port, pydicom.dcmread(nsclc_ct_files[0])) == 0xA700
        assert n.instance_count() == 0
        assert list(n.settings.node.storage_dir.rglob("*.dcm")) == []


def test_failed_file_write_withdraws_the_row_and_answers_out_of_resources(node: Node,
                                                                           nsclc_ct_files: list[Path]) -> None:
    # the row is committed while the file is written; when the write fails the row must go again
    ds = pydicom.dcmread(nsclc_ct_files[0])
    blocker = node.settings.node.storage_dir / str(ds.StudyInstanceUID)
    blocker.write_bytes(b"not a folder")  # the series folder cannot be created under a file
    assert _send(node.port, ds) == 0xA700
    assert node.instance_count() == 0
    with node.factory() as s:
        assert s.scalar(select(func.sum(SeriesRow.instance_count))) in (0, None)
    blocker.unlink()
    assert _send(node.port, ds) == 0
    assert node.instance_count() == 1
    with node.factory() as s:
        assert s.scalar(select(func.sum(SeriesRow.instance_count))) == 1
    assert pydicom.dcmread(next(node.settings.node.storage_dir.rglob("*.dcm"))).SOPInstanceUID == ds.SOPInstanceUID


def test_database_failure_answers_out_of_resources_and_keeps_serving(node: Node, nsclc_ct_files: list[Path]) -> None:
    with node.factory.kw["bind"].begin() as conn:
        conn.execute(text("ALTER TABLE instances RENAME TO instances_away"))
    assert _send(node.port, pydicom.dcmread(nsclc_ct_files[0])) == 0xA700
    assert list(node.settings.node.storage_dir.rglob("*.dcm")) == []  # no orphan file
    with node.factory.kw["bind"].begin() as conn:
        conn.execute(text("ALTER TABLE instances_away RENAME TO instances"))
    assert _send(node.port, pydicom.dcmread(nsclc_ct_files[0])) == 0
    assert node.instance_count() == 1


def test_storescu_with_tcp_nodelay(node: Node, nsclc_ct_files: list[Path]) -> None:
    storescu = require_tool("storescu")
    proc = subprocess.run([storescu, "-aec", "DICOMNODE", "-aet", "STORESCU", "127.0.0.1", str(node.port),
                           *map(str, nsclc_ct_files[:20])], capture_output=True, text=True, env=nodelay_env(),
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert node.instance_count() == 20


def test_reactor_polling_follows_the_open_associations(node: Node) -> None:
    """The listener's reactors poll faster while few associations are open (see receive.polling);
    the knob must exist in the pynetdicom we install, or the tuning would silently do nothing."""
    tracker = node.ctx.polling

    def settle(count: int) -> list[object]:
        deadline = time.monotonic() + 5  # the listener sees connections open and close in its own threads
        while len(tracker.associations()) != count and time.monotonic() < deadline:
            time.sleep(0.01)
        open_now = tracker.associations()
        assert len(open_now) == count
        return open_now

    first = _associate(node.port, [(Verification, [ImplicitVRLittleEndian])])
    assert first.is_established
    (alone,) = settle(1)
    assert alone.dul._run_loop_delay == polling.FASTEST_DELAY  # type: ignore[attr-defined]
    second = _associate(node.port, [(Verification, [ImplicitVRLittleEndian])], calling="OTHERSCU")
    assert second.is_established
    both = settle(2)
    assert all(a.dul._run_loop_delay == polling.delay_for(2) for a in both)  # type: ignore[attr-defined]
    second.release()
    (left,) = settle(1)
    assert left is alone and alone.dul._run_loop_delay == polling.FASTEST_DELAY  # type: ignore[attr-defined]
    first.release()
    settle(0)


def _odd_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "odd").rglob("*") if p.is_file() and not p.name.endswith((".txt", ".md")))


def test_every_odd_file_is_stored_or_refused_and_the_node_keeps_serving(node: Node, shared_data: Path,
                                                                        nsclc_ct_files: list[Path]) -> None:
    outcomes: dict[str, str] = {}
    for path in _odd_files(shared_data):
        ds = pydicom.dcmread(path, force=True)
        if "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # what a sender would assume
        if "SOPClassUID" not in ds:
            outcomes[path.name] = "unsendable (no SOP Class UID)"
            continue
        try:
            status = _send(node.port, ds)
        except (ValueError, AttributeError, TypeError) as exc:  # the SCU cannot encode it
            outcomes[path.name] = f"unsendable ({type(exc).__name__})"
            continue
        if status is None:
            outcomes[path.name] = "refused at negotiation"
        elif status == 0:
            outcomes[path.name] = "stored"
        else:
            assert status in (0xA700, 0xA900, 0xC000, 0x0122), f"{path.name}: unexpected status {status:#06x}"
            outcomes[path.name] = f"refused 0x{status:04X}"
    stored_sops = {pydicom.dcmread(p, force=True).get("SOPClassUID") for p in _odd_files(shared_data)
                   if outcomes.get(p.name) == "stored"}
    assert stored_sops <= {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"}
    assert outcomes["test-SR.dcm"] == "refused at negotiation"
    assert outcomes["eCT_Supplemental.dcm"] == "stored"  # Enhanced CT is accepted
    assert outcomes["CT_small.dcm"] == "stored"
    # still serving after all of that
    assert _send(node.port, pydicom.dcmread(nsclc_ct_files[0])) == 0
