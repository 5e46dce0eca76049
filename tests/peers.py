"""Real peers for integration and end-to-end tests: Orthanc as the PACS, dcmtk tools, dciodvfy.

A missing tool is a test failure with the install command, never a skip: the README's test
command installs all of them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from tests.conftest import free_port

INSTALL_HINT = "run the README's test command (it installs dcmtk orthanc dicom3tools plastimatch)"


def require_tool(name: str) -> str:
    """The path of a command-line tool; a missing tool fails the test (never skips it)."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}")
    return path


def nodelay_env() -> dict[str, str]:
    """dcmtk waits 40-90 ms per object under Nagle's algorithm unless TCP_NODELAY is set."""
    return {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class Orthanc:
    process: subprocess.Popen[bytes]
    aet: str
    dicom_port: int
    http_port: int
    log_path: Path

    def rest(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=60) as resp:
            body = resp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())

    def instances(self) -> list[str]:
        return list(self.rest("/instances"))

    def instance_file(self, orthanc_id: str) -> bytes:
        return bytes(self.rest(f"/instances/{orthanc_id}/file"))

    def instance_tags(self, orthanc_id: str) -> dict[str, Any]:
        return dict(self.rest(f"/instances/{orthanc_id}/simplified-tags"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_orthanc(workdir: Path, aet: str = "ORTHANC") -> Orthanc:
    """Orthanc on free ports with its own config and storage, stopped by PID by the caller."""
    binary = require_tool("Orthanc")
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "test-pacs", "DicomAet": aet, "DicomPort": dicom_port, "HttpPort": http_port,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "StorageDirectory": str(workdir / "storage"), "IndexDirectory": str(workdir / "index"),
        "DicomCheckCalledAet": False, "Plugins": [], "HttpServerEnabled": True,
        "StableAge": 2, "DicomScuTimeout": 10, "UnknownSopClassAccepted": False,
    }
    cfg = workdir / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log_path = workdir / "orthanc.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    orthanc = Orthanc(proc, aet, dicom_port, http_port, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"Orthanc exited at start: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            orthanc.rest("/system")
            return orthanc
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    orthanc.stop()
    pytest.fail("Orthanc did not answer within 30 s")


class DciodvfyReport(NamedTuple):
    """What dciodvfy says of one file: its 'Error' lines, and the whole report for assertion messages."""

    errors: list[str]
    report: str


def dciodvfy_errors(path: Path) -> DciodvfyReport:
    """dciodvfy's verdict on a file (it reports on stderr): ``errors, report = dciodvfy_errors(p)``."""
    binary = require_tool("dciodvfy")
    proc = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=300)
    report = proc.stderr + proc.stdout
    return DciodvfyReport([line for line in report.splitlines() if line.startswith("Error")], report)


def store_series(port: int, files: list[Path], called_ae: str = "DICOMNODE") -> None:
    """Send ``files`` as CT over one real association to 127.0.0.1:``port``, each answered with success."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, "1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established
    for f in files:
        assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0
    assoc.release()


class RecordingScp:
    """A Storage SCP on localhost that keeps every SOP Instance UID it stored, in order, repeats
    included (Orthanc keeps one copy of a UID, so a second send would not be seen there)."""

    SOP_CLASSES = (CTImageStorage, "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.481.3",
                   "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7")

    def __init__(self, ae_title: str = "RECORDER", port: int | None = None) -> None:
        from pynetdicom import ALL_TRANSFER_SYNTAXES, evt

        self.ae_title = ae_title
        self.port = port or free_port()
        self.received: list[str] = []
        ae = AE(ae_title=ae_title)
        for uid in self.SOP_CLASSES:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)

        def on_store(event: Any) -> int:
            self.received.append(str(event.dataset.SOPInstanceUID))  # list.append is atomic under the GIL
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])

    def destination(self, name: str = "PACS", **extra: Any) -> dict[str, Any]:
        """The [[destinations]] table of this SCP."""
        return {"name": name, "ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port, **extra}

    def stop(self) -> None:
        self.server.shutdown()
