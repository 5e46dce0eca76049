"""Bad input at the door: the malformed corpus (``tests/corpus``) over real associations and raw sockets.

Every malformed dataset goes out over its own real association and every malformed PDU over a raw
TCP socket. The node must answer each with a failure status (or a rejection, an abort, a closed
connection), store and index nothing, log one line per refused instance without patient data or
a traceback, send no traceback to the peer, and still take a good series afterwards.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE, _config, association
from pynetdicom.dsutils import split_dataset
from sqlalchemy import text

from dicom_node.logging_setup import PeerTracebackFilter
from dicom_node.receive.storage import file_header
from dicom_node.receive.validation import DoorLimits
from tests.corpus.datasets import dataset_cases, good_stream
from tests.corpus.pdus import ABORT, ASSOCIATE_AC, P_DATA, associate_rq, c_store, pdu_cases
from tests.integration.test_receiver import Node, _start
from tests.peers import store_series

PATIENT_MARKERS = ("Door^Corpus", "DOOR-1")


@pytest.fixture()
def door(tmp_path: Path) -> Iterator[Node]:
    for node in _start(tmp_path, max_dataset_mb=1, max_pixel_mb=1):
        node.ctx.limits = DoorLimits.of(node.settings.node)  # as ``serve`` builds it
        yield node


def _stored_files(node: Node) -> list[Path]:
    root = node.settings.node.storage_dir
    return [p for p in root.rglob("*") if p.is_file() and ".spool" not in p.parts]


def _split_after_our_file_meta(path: Path) -> tuple[object, int]:
    """pynetdicom's ``split_dataset``, with the offset of the dataset known rather than found:
    pydicom's reader skips a tail shorter than an element header, and a 1-byte dataset must go out."""
    meta, _offset = split_dataset(path)
    return meta, len(file_header(meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID,
                                 meta.TransferSyntaxUID))


def _send_raw(port: int, path: Path, syntax: str) -> object:
    """C-STORE the dataset bytes of ``path`` as they are (pynetdicom sends them without decoding)."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established, syntax
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


def _assert_clean_log(records: list[logging.LogRecord]) -> None:
    for record in records:
        text = record.getMessage()
        assert record.exc_info is None, f"traceback logged: {record.name}: {text}"
        assert not any(marker in text for marker in PATIENT_MARKERS), f"patient data logged: {text}"


def test_every_malformed_dataset_is_refused_and_the_node_keeps_serving(
        door: Node, tmp_path: Path, nsclc_ct_files: list[Path], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    monkeypatch.setattr(association, "split_dataset", _split_after_our_file_meta)
    caplog.set_level(logging.INFO)
    cases = dataset_cases()
    assert len(cases) >= 50
    sop, good = good_stream()
    good_file = tmp_path / "good.dcm"
    good_file.write_bytes(file_header("1.2.840.10008.5.1.4.1.1.2", sop, "1.2.840.10008.1.2.1") + good)
    assert _send_raw(door.port, good_file, "1.2.840.10008.1.2.1").Status == 0  # type: ignore[attr-defined]
    assert door.instance_count() == 1
    for path in _stored_files(door):
        path.unlink()
    with door.factory() as s, s.begin():
        s.execute(text("DELETE FROM instances"))
    caplog.clear()
    wrong: list[str] = []
    for number, case in enumerate(cases):
        path = tmp_path / f"case-{number}.dcm"
        path.write_bytes(file_header(case.sop_class, case.sop_uid, case.syntax) + case.stream)
        answer = _send_raw(door.port, path, case.syntax)
        status = int(answer.Status)  # type: ignore[attr-defined]
        comment = str(answer.get("ErrorComment", ""))  # type: ignore[attr-defined]
        if status not in case.statuses:
            wrong.append(f"{case.name}: 0x{status:04X} ({comment})")
        assert 0 < len(comment) <= 64 and "Traceback" not in comment and "File " not in comment, (case.name, comment)
    assert not wrong, "\n".join(wrong)
    assert door.instance_count() == 0
    assert _stored_files(door) == []
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused an instance")]
    assert len(refusals) == len(cases)
    _assert_clean_log(caplog.records)
    store_series(door.port, nsclc_ct_files[:3])
    assert door.instance_count() == 3


def _pdus(data: bytes) -> list[tuple[int, bytes]]:
    """(type, whole PDU) of each PDU in ``data``; a cut-off tail is left out."""
    found, pos = [], 0
    while pos + 6 <= len(data):
        kind, length = data[pos], struct.unpack_from(">I", data, pos + 2)[0]
        found.append((kind, data[pos:pos + 6 + length]))
        pos += 6 + length
    return found


def _read_until_quiet(sock: socket.socket, quiet: float) -> tuple[bytes, bool]:
    """What the node sends until it is silent for ``quiet`` seconds; and whether it closed."""
    received = b""
    sock.settimeout(quiet)
    while True:
        try:
            part = sock.recv(65536)
        except TimeoutError:
            return received, False
        except OSError:  # reset by the node
            return received, True
        if not part:
            return received, True
        received += part


def exchange(port: int, chunks: tuple[bytes, ...], quiet: float = 0.3, timeout: float = 10.0) -> bytes:
    """Send ``chunks`` on a fresh connection, each once the node has answered the one before (it
    went quiet), then close our side; everything the node sent until it closed."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:  # the node already closed: what it sent is the answer
                break
            part, closed = _read_until_quiet(sock, quiet)
            received += part
            if closed:
                return received
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return received
        part, _closed = _read_until_quiet(sock, timeout)
    return received + part


def _answer(replies: list[tuple[int, bytes]]) -> tuple[int, ...]:
    """The PDU types of the replies; repeated A-ABORTs (one per undecodable PDU) count once."""
    kinds: list[int] = []
    for kind, _pdu in replies:
        if not (kind == ABORT and kinds and kinds[-1] == ABORT):
            kinds.append(kind)
    return tuple(kinds)


def _status(pdu: bytes) -> int | None:
    """The Status of a DIMSE response command carried in one P-DATA-TF (implicit VR LE command set)."""
    at = pdu.find(b"\x00\x00\x00\x09\x02\x00\x00\x00")
    return None if at < 0 else int(struct.unpack_from("<H", pdu, at + 8)[0])


def test_every_malformed_pdu_is_answered_and_the_node_keeps_serving(
        door: Node, nsclc_ct_files: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    cases = pdu_cases()
    assert len(cases) >= 20
    wrong: list[str] = []
    for case in cases:
        replies = _pdus(exchange(door.port, case.chunks))
        kinds = _answer(replies)
        if kinds not in case.answers:
            wrong.append(f"{case.name}: answered {kinds}, expected one of {sorted(case.answers)}")
        for kind, pdu in replies:
            if kind == P_DATA:  # a C-STORE response: never success for these
                status = _status(pdu)
                if status is None or status == 0:
                    wrong.append(f"{case.name}: C-STORE answered {status}")
    assert not wrong, "\n".join(wrong)
    assert door.instance_count() == 0
    assert _stored_files(door) == []
    _assert_clean_log([r for r in caplog.records if r.name.startswith("dicom_node")])
    # pynetdicom logs a traceback per undecodable PDU; the node's log handlers make each one line
    peer_tracebacks = [r for r in caplog.records if r.exc_info]
    assert peer_tracebacks and all(r.name.startswith("pynetdicom") for r in peer_tracebacks)
    one_line = PeerTracebackFilter()
    for record in peer_tracebacks:
        one_line.filter(record)
    _assert_clean_log(caplog.records)
    # the raw client itself is sound: a well-formed C-STORE over it is stored
    sop, good = good_stream()
    replies = _pdus(exchange(door.port, (associate_rq(), c_store(good, sop_uid=sop))))
    assert [kind for kind, _ in replies][:2] == [ASSOCIATE_AC, P_DATA] and _status(replies[1][1]) == 0
    store_series(door.port, nsclc_ct_files[:3])
    assert door.instance_count() == 4
