"""DICOM TLS against dcmtk: storescu +tls to our TLS listener, our TLS destination to storescp +tls.

The certificates are made with openssl for each module (tests/tls_certs.py). Every refusal must be
a refusal for the right reason, and the listener says that reason in its log.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dicom_node.db.engine import open_index
from dicom_node.db.tables import Instance
from dicom_node.receive.ae import start_listener
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.receive.storage import InstanceStore
from dicom_node.receive.tls_listener import start_tls_listener
from dicom_node.send.cstore import echo, send_files
from dicom_node.settings import Destination, DestinationTls, Settings
from tests.conftest import free_port, make_settings
from tests.peers import nodelay_env, require_tool
from tests.tls_certs import Pki, make_pki

LISTENER_LOG = "dicom_node.receive.admission_server"  # the gated server does the handshake
GATE_LOG = "dicom_node.receive.audit_log"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def ct_files(nsclc_ct_files: list[Path]) -> list[Path]:
    return nsclc_ct_files[60:63]


@contextmanager
def tls_node(tmp_path: Path, pki: Pki, **tls: object) -> Iterator[Settings]:
    """The node's TLS listener (and its plain one) in this process, on free ports."""
    table = {"enabled": True, "port": free_port(), "cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
             "ca_file": str(pki.ca), "require_client_cert": True, **tls}
    settings = make_settings(tmp_path, node={"tls": table})
    factory = open_index(settings.node.database_url)
    ctx = ReceiverContext(factory=factory, store=InstanceStore(settings.node.storage_dir, 1))
    servers = [start_listener(settings.node, ctx), start_tls_listener(settings.node, ctx)]
    try:
        yield settings
    finally:
        for server in servers:
            server.shutdown()
        ctx.close()
        factory.kw["bind"].dispose()


def stored(settings: Settings) -> int:
    factory = open_index(settings.node.database_url)
    try:
        with factory() as session:
            return int(session.scalar(select(func.count(Instance.id))) or 0)
    finally:
        factory.kw["bind"].dispose()


def storescu(port: int, files: list[Path], *tls: str) -> subprocess.CompletedProcess[str]:
    """dcmtk storescu with the TLS options given (none: plain TCP)."""
    return subprocess.run([require_tool("storescu"), *tls, "-aec", "DICOMNODE", "-aet", "TLSSCU", "-to", "10",
                           "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, env=nodelay_env(), timeout=60)


def client_tls(pki: Pki, ca: Path | None = None, cert: Path | None = None, key: Path | None = None) -> list[str]:
    return ["+tls", str(key or pki.client_key), str(cert or pki.client_cert), "-pw", "+cf", str(ca or pki.ca)]


def refusal(caplog: pytest.LogCaptureFixture, timeout: float = 10.0, logger: str = LISTENER_LOG,
            word: str = "refused") -> str:
    """The listener's refusal line (it is logged by the connection's thread, maybe after the client gave up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [r.getMessage() for r in caplog.records if r.name == logger and word in r.getMessage()]
        if lines:
            return lines[0]
        time.sleep(0.1)
    pytest.fail("the TLS listener logged no refusal")


def test_storescu_with_tls_and_client_certificate_stores_the_series(tmp_path: Path, pki: Pki,
                                                                    ct_files: list[Path]) -> None:
    with tls_node(tmp_path, pki) as settings:
        proc = storescu(settings.node.tls.port, ct_files, *client_tls(pki))
        assert proc.returncode == 0, proc.stderr
        assert stored(settings) == len(ct_files)


def test_client_without_certificate_is_refused_when_one_is_required(
        tmp_path: Path, pki: Pki, ct_files: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LISTENER_LOG)
    with tls_node(tmp_path, pki) as settings:
        proc = storescu(settings.node.tls.port, ct_files, "+tla", "+cf", str(pki.ca))
        assert proc.returncode != 0
        line = refusal(caplog)
        assert stored(settings) == 0
    assert line.startswith("TLS connection from 127.0.0.1:") and "sent no client certificate" in line, line


def test_client_certificate_of_another_ca_is_refused(tmp_path: Path, pki: Pki, ct_files: list[Path],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LISTENER_LOG)
    with tls_node(tmp_path, pki) as settings:
        proc = storescu(settings.node.tls.port, ct_files, *client_tls(pki, cert=pki.other_cert, key=pki.other_key))
        assert proc.returncode != 0
        line = refusal(caplog)
        assert stored(settings) == 0
    assert "certificate was not accepted" in line and "CERTIFICATE_VERIFY_FAILED" in line, line


def test_client_that_does_not_trust_our_certificate_gets_nothing_stored(
        tmp_path: Path, pki: Pki, ct_files: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LISTENER_LOG)
    with tls_node(tmp_path, pki) as settings:
        proc = storescu(settings.node.tls.port, ct_files, *client_tls(pki, ca=pki.other_ca))
        assert proc.returncode != 0
        line = refusal(caplog)
        assert stored(settings) == 0
    assert "does not trust our certificate" in line, line


def test_plain_client_on_the_tls_port_is_refused_and_the_plain_port_still_works(
        tmp_path: Path, pki: Pki, ct_files: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LISTENER_LOG)
    with tls_node(tmp_path, pki) as settings:
        proc = storescu(settings.node.tls.port, ct_files)
        assert proc.returncode != 0
        line = refusal(caplog)
        assert stored(settings) == 0
        assert storescu(settings.node.port, ct_files[:1]).returncode == 0  # the plain listener beside it
        assert stored(settings) == 1
    assert "does not speak TLS" in line, line


def test_a_silent_connection_does_not_hold_up_other_clients(tmp_path: Path, pki: Pki, ct_files: list[Path]) -> None:
    """pynetdicom alone handshakes inside accept(): one silent client would block every other one."""
    with tls_node(tmp_path, pki, handshake_timeout_seconds=120.0) as settings:
        with socket.create_connection(("127.0.0.1", settings.node.tls.port)) as silent:
            proc = storescu(settings.node.tls.port, ct_files, *client_tls(pki))
            assert proc.returncode == 0, proc.stderr
            assert stored(settings) == len(ct_files)
            silent.setblocking(False)
            with pytest.raises(BlockingIOError):  # still open, still waited for: the store did not wait on it
                silent.recv(1)


def test_a_silent_connection_is_closed_after_the_handshake_timeout(tmp_path: Path, pki: Pki,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    # the connection gate holds it (no thread of its own) for the handshake timeout, then drops and audits it
    caplog.set_level(logging.WARNING, GATE_LOG)
    with tls_node(tmp_path, pki, handshake_timeout_seconds=0.5) as settings:
        with socket.create_connection(("127.0.0.1", settings.node.tls.port)) as silent:
            silent.settimeout(30)
            assert silent.recv(1) == b""  # closed by the node
        line = refusal(caplog, logger=GATE_LOG, word="dropped")
    assert "negotiation timeout (0.5 s" in line, line


# -- our destination with TLS -> storescp +tls ---------------------------------------------------------


@pytest.fixture()
def storescp(tmp_path: Path, pki: Pki) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp with TLS that requires a client certificate signed by the test CA."""
    port, out = free_port(), tmp_path / "received"
    out.mkdir()
    proc = subprocess.Popen([require_tool("storescp"), "+tls", str(pki.server_key), str(pki.server_cert), "-pw",
                             "+cf", str(pki.ca), "-aet", "TLSSCP", "-od", str(out), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=nodelay_env())
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def destination(port: int, host: str = "127.0.0.1", **tls: object) -> Destination:
    return Destination(name="TPS", ae_title="TLSSCP", host=host, port=port, timeout_seconds=10.0,
                       tls=DestinationTls(enabled=True, **tls))  # type: ignore[arg-type]


def test_destination_with_tls_delivers_to_storescp(storescp: tuple[int, Path], pki: Pki,
                                                   ct_files: list[Path]) -> None:
    port, out = storescp
    dest = destination(port, ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    assert echo(dest, "DICOMNODE") == 0
    results = send_files(dest, "DICOMNODE", ct_files)
    assert [r.error for r in results] == [""] * len(ct_files)
    assert len(list(out.iterdir())) == len(ct_files)


@pytest.mark.parametrize(("tls", "reason"), [
    ({"ca_file": "other_ca", "cert_file": "client_cert", "key_file": "client_key"},
     "certificate was not accepted: self-signed certificate in certificate chain [CERTIFICATE_VERIFY_FAILED]"),
    ({"ca_file": "ca"}, "the peer requires a client certificate and we sent none"),
], ids=["wrong-ca", "no-client-certificate"])
def test_destination_refused_says_why(storescp: tuple[int, Path], pki: Pki, ct_files: list[Path],
                                      tls: dict[str, str], reason: str) -> None:
    port, out = storescp
    dest = destination(port, **{key: getattr(pki, name) for key, name in tls.items()})
    results = send_files(dest, "DICOMNODE", ct_files[:1])
    assert not results[0].ok
    assert reason in results[0].error, results[0].error
    assert list(out.iterdir()) == []


def test_destination_host_name_is_checked_unless_turned_off(storescp: tuple[int, Path], pki: Pki,
                                                            ct_files: list[Path]) -> None:
    """The server certificate names localhost and 127.0.0.1; 127.0.0.2 reaches the same storescp."""
    port, out = storescp
    files = {"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key}
    (checked,) = send_files(destination(port, host="127.0.0.2", **files), "DICOMNODE", ct_files[:1])
    assert not checked.ok and "IP address mismatch" in checked.error, checked.error
    (unchecked,) = send_files(destination(port, host="127.0.0.2", check_hostname=False, **files), "DICOMNODE",
                              ct_files[:1])
    assert unchecked.ok, unchecked.error
    (by_name,) = send_files(destination(port, host="localhost", **files), "DICOMNODE", ct_files[1:2])
    assert by_name.ok, by_name.error
    assert len(list(out.iterdir())) == 2
