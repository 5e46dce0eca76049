"""The listener stays available: idle and half-open connections, per-peer caps, allow-lists, and the
association audit, over real sockets and associations on localhost (Linux routes all of 127/8 to lo)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.association_report import association_lines
from dicom_node.db.engine import open_index
from dicom_node.db.tables import AssociationAudit, AuditResult, Instance
from dicom_node.receive.admission_server import AdmissionServer
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from dicom_node.settings import Settings
from tests.conftest import make_settings
from tests.peers import store_series


@dataclass
class Listener:
    settings: Settings
    factory: sessionmaker[Session]
    server: AdmissionServer

    @property
    def port(self) -> int:
        return self.settings.node.port

    def instances(self) -> int:
        with self.factory() as s:
            return int(s.scalar(select(func.count(Instance.id))) or 0)

    def audit(self, until: Callable[[list[AssociationAudit]], bool], timeout: float = 5.0) -> list[AssociationAudit]:
        """The audit rows, oldest first, once ``until`` holds for them (they are written by a thread)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.factory() as s:
                rows = list(s.scalars(select(AssociationAudit).order_by(AssociationAudit.id)))
            if until(rows) or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


@contextmanager
def listening(tmp_path: Path, **node: object) -> Iterator[Listener]:
    settings = make_settings(tmp_path, node=node)
    factory = open_index(settings.node.database_url)
    ctx = ReceiverContext(factory=factory, store=InstanceStore(settings.node.storage_dir, 1))
    server = start_listener(settings.node, ctx)
    try:
        yield Listener(settings, factory, server)
    finally:
        server.shutdown()
        ctx.close()
        factory.kw["bind"].dispose()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return sock


def closed_by_listener(sock: socket.socket, timeout: float) -> bool:
    """True when the listener closes the connection within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def echo(port: int, calling: str = "TESTSCU", source: str = "") -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification, ImplicitVRLittleEndian)
    ae.acse_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE", bind_address=(source, 0))
    if not assoc.is_established:
        return False
    ok = bool(assoc.send_c_echo().Status == 0)
    assoc.release()
    return ok


def with_result(result: AuditResult, reason: str) -> Callable[[list[AssociationAudit]], bool]:
    return lambda rows: any(r.result == result and reason in r.reason for r in rows)


def test_200_idle_sockets_do_not_keep_a_series_out(tmp_path: Path, nsclc_ct_files: list[Path]) -> None:
    """The outside tester's lock-out: before the gate, 33 silent sockets took every association slot."""
    with listening(tmp_path) as node:
        # 25 peers with 8 silent connections each: every one within its peer's cap, all of them waiting
        idle = [connect(node.port, f"127.0.0.{2 + i // 8}") for i in range(200)]
        try:
            deadline = time.monotonic() + 5
            while node.server.gate.waiting() < 200 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert node.server.gate.waiting() == 200
            started = time.monotonic()
            store_series(node.port, nsclc_ct_files[:20])
            elapsed = time.monotonic() - started
            assert node.instances() == 20
            assert elapsed < 5.0, f"a series behind 200 idle sockets took {elapsed:.1f} s"
            assert node.server.gate.waiting() == 200  # the silent ones are still held, not served
        finally:
            for sock in idle:
                sock.close()


def test_a_full_waiting_room_drops_the_connection_waiting_longest(tmp_path: Path) -> None:
    with listening(tmp_path, max_waiting_connections=4) as node:
        first = connect(node.port, "127.0.0.2")
        time.sleep(0.2)
        later = [connect(node.port, f"127.0.0.{3 + i}") for i in range(4)]
        try:
            assert closed_by_listener(first, 5.0)
            time.sleep(0.2)
            assert echo(node.port)  # a fifth waiting connection again: the next oldest goes
            rows = node.audit(lambda rows: sum(r.result == AuditResult.DROPPED for r in rows) >= 2)
            dropped = [r for r in rows if r.result == AuditResult.DROPPED]
            assert [r.peer_address.split(":")[0] for r in dropped] == ["127.0.0.2", "127.0.0.3"]
            assert all(r.reason.startswith("waiting room full") for r in dropped)
            assert closed_by_listener(later[0], 1.0)
            assert not any(closed_by_listener(s, 0.05) for s in later[1:])
        finally:
            for sock in [first, *later]:
                sock.close()


def test_silent_half_open_and_non_dicom_connections_are_dropped(tmp_path: Path) -> None:
    with listening(tmp_path, negotiation_timeout_seconds=1.0) as node:
        silent = connect(node.port)
        half = connect(node.port)
        half.sendall(bytes([0x01, 0x00, 0x00, 0x00, 0x00, 0x44]) + b"\x00\x01" + b"\x00" * 20)  # 28 of 74 bytes
        http = connect(node.port)
        http.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        assert closed_by_listener(http, 2.0)
        assert closed_by_listener(half, 5.0) and closed_by_listener(silent, 5.0)
        assert 0.9 < time.monotonic() - started < 5.0
        for sock in (silent, half, http):
            sock.close()
        rows = node.audit(lambda rows: len(rows) >= 3)
        reasons = sorted(r.reason for r in rows if r.result == AuditResult.DROPPED)
        assert len(reasons) == 3
        assert reasons[0].startswith("negotiation timeout") and reasons[1].startswith("negotiation timeout")
        assert reasons[2] == "not an A-ASSOCIATE-RQ (PDU type 0x47)"
        assert echo(node.port)  # and the listener still serves


def test_connections_beyond_the_per_peer_cap_are_refused_and_audited(tmp_path: Path) -> None:
    with listening(tmp_path, max_connections_per_peer=3) as node:
        held = [connect(node.port) for _ in range(3)]
        extra = connect(node.port)
        assert closed_by_listener(extra, 2.0)
        assert not echo(node.port)  # 127.0.0.1 is at its cap
        assert echo(node.port, source="127.0.0.2")  # another peer is not
        rows = node.audit(lambda rows: sum(r.result == AuditResult.REFUSED for r in rows) >= 2)
        refused = [r for r in rows if r.result == AuditResult.REFUSED]
        assert len(refused) == 2
        assert all(r.reason == "too many connections from 127.0.0.1 (max_connections_per_peer 3)" for r in refused)
        for sock in [*held, extra]:
            sock.close()
        # the peer's count goes down as its connections end, waiting or associated
        deadline = time.monotonic() + 5
        while node.server.gate.waiting() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(echo(node.port) for _ in range(6))


def test_peer_allow_list_refuses_other_addresses(tmp_path: Path) -> None:
    with listening(tmp_path, allowed_peers=["127.0.0.1"]) as node:
        assert not echo(node.port, source="127.0.0.2")
        assert echo(node.port, source="127.0.0.1")
        rows = node.audit(lambda rows: len(rows) >= 2)
        assert [(r.result, r.reason, r.peer_address.split(":")[0]) for r in rows] == [
            (AuditResult.REFUSED, "peer address not allowed", "127.0.0.2"),
            (AuditResult.ACCEPTED, "", "127.0.0.1"),
        ]
        assert (rows[1].calling_ae, rows[1].called_ae) == ("TESTSCU", "DICOMNODE")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_calling_ae_rejection_is_audited_logged_and_listed(tmp_path: Path, backend: str,
                                                           request: pytest.FixtureRequest,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'i.sqlite'}"
    caplog.set_level(logging.INFO)
    with listening(tmp_path, allowed_calling_aes=["SCANNER1"], database_url=url) as node:
        assert not echo(node.port, calling="INTRUDER")
        assert echo(node.port, calling="SCANNER1")
        rows = node.audit(lambda rows: len(rows) >= 2)
        assert [(r.result, r.calling_ae, r.called_ae, r.reason) for r in rows] == [
            (AuditResult.REJECTED, "INTRUDER", "DICOMNODE", "calling AE not allowed"),
            (AuditResult.ACCEPTED, "SCANNER1", "DICOMNODE", ""),
        ]
        assert all(r.peer_address.startswith("127.0.0.1:") for r in rows)
        rejected_lines = [r.getMessage() for r in caplog.records if "calling AE not allowed" in r.getMessage()]
        assert len(rejected_lines) == 1 and "INTRUDER" in rejected_lines[0]
        listed = association_lines(url, rejected_only=True, limit=10)
        assert len(listed) == 2 and "rejected" in listed[1] and "INTRUDER" in listed[1]
        assert len(association_lines(url, rejected_only=False, limit=10)) == 3
