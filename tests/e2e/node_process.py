"""Run the real node (``dicom-node serve`` / ``worker``) as processes against a real Orthanc."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.engine import open_index
from tests.conftest import free_port
from tests.peers import Orthanc, nodelay_env, require_tool

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


class PacsAddress(Protocol):
    """Where the config's one destination points: a running ``Orthanc``, or any AE title and port."""

    aet: str
    dicom_port: int


def write_config(tmp: Path, orthanc: PacsAddress, template: str = "", model: str = "builtin",
                 models_dir: Path | None = None, outputs: tuple[str, ...] = ("SEG", "RTSTRUCT"),
                 **completion: float) -> Path:
    """A node config on ``tmp`` delivering to ``orthanc``; ``template`` is TOML for one [[templates]]
    entry named "site", which the rule then uses; ``model`` is the rule's model id."""
    port = free_port()
    comp = {"quiet_seconds": 30, "settle_seconds": 1, "after_release_seconds": 1, "sweep_interval_seconds": 0.5,
            **completion}
    text = f"""
[node]
ae_title = "DICOMNODE"
host = "127.0.0.1"
port = {port}
storage_dir = "storage"
database_url = "sqlite:///index.sqlite"
min_free_disk_mb = 1

[completion]
{chr(10).join(f'{k} = {v}' for k, v in comp.items())}

[worker]
poll_interval_seconds = 0.2
heartbeat_seconds = 0.5
stale_after_seconds = 60
output_dir = "outputs"

[models]
dir = "{models_dir or tmp / 'models'}"
device = "cpu"

[identity]
uid_root = "1.2.826.0.1.3680043.8.498"
manufacturer = "Test Physics"
manufacturer_model_name = "dicom-autocontour-node"
software_version = "0.1.0"
device_serial_number = "E2E-1"

[[destinations]]
name = "PACS"
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
retry_backoff_seconds = 1

[[routing.rules]]
name = "ct-builtin"
match = {{ Modality = "CT" }}
model = "{model}"
outputs = {json.dumps(list(outputs))}
destinations = ["PACS"]
"""
    if template:
        text += 'template = "site"\n\n[[templates]]\nname = "site"\n' + template + "\n"
    path = tmp / "node.toml"
    path.write_text(text)
    return path


@dataclass
class NodeProcess:
    config: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def port(self) -> int:
        return int(tomllib.loads(self.config.read_text())["node"]["port"])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start(config: Path, *args: str, name: str = "serve") -> NodeProcess:
    log_path = config.parent / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", *args, "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, env=nodelay_env())
    return NodeProcess(config, proc, log_path)


def wait_listening(node: NodeProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            pytest.fail(f"the node exited at start:\n{node.log()[-3000:]}")
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
        if assoc.is_established:
            assoc.release()
            return
        time.sleep(0.3)
    pytest.fail(f"the node did not listen within {timeout} s:\n{node.log()[-3000:]}")


def storescu(port: int, files: list[Path]) -> float:
    """Send with dcmtk storescu (TCP_NODELAY on); returns the time the last slice was acknowledged."""
    binary = require_tool("storescu")
    proc = subprocess.run([binary, "-aec", "DICOMNODE", "-aet", "CTSCANNER", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, env=nodelay_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return time.monotonic()


def index_of(config: Path) -> sessionmaker[Session]:
    return open_index(f"sqlite:///{config.parent / 'index.sqlite'}")


def wait_for_outputs(orthanc: Orthanc, study_uid: str, node: NodeProcess, timeout: float) -> dict[str, list[str]]:
    """Orthanc ids of the SEG and RTSTRUCT instances for the study, once both are there."""
    deadline = time.monotonic() + timeout
    found: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        found = outputs_in(orthanc, study_uid)
        if found["SEG"] and found["RTSTRUCT"]:
            return found
        time.sleep(0.5)
    pytest.fail(f"Orthanc holds {found} after {timeout} s; node log:\n{node.log()[-4000:]}")


def sop_classes_in(orthanc: Orthanc, study_uid: str) -> list[str]:
    ids = orthanc.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}})
    out = []
    for oid in ids:
        value = orthanc.rest(f"/instances/{oid}/metadata/SopClassUid")
        out.append(value.decode() if isinstance(value, bytes) else str(value))
    return out


def outputs_in(orthanc: Orthanc, study_uid: str) -> dict[str, list[str]]:
    """Orthanc ids of the SEG and RTSTRUCT instances of a study (from its index: no tag dumps, which
    for a large RTSTRUCT are slow enough to time out)."""
    found: dict[str, list[str]] = {"SEG": [], "RTSTRUCT": []}
    ids = orthanc.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}})
    for oid in ids:
        sop_class = orthanc.rest(f"/instances/{oid}/metadata/SopClassUid")
        sop_class = sop_class.decode() if isinstance(sop_class, bytes) else str(sop_class)
        if sop_class == SEG_SOP_CLASS:
            found["SEG"].append(oid)
        elif sop_class == RTSTRUCT_SOP_CLASS:
            found["RTSTRUCT"].append(oid)
    return found


def fetch(orthanc: Orthanc, oid: str, dest: Path) -> Path:
    dest.write_bytes(orthanc.instance_file(oid))
    return dest


def plastimatch_masks(rtstruct: Path, ct_dir: Path, out: Path) -> dict[str, sitk.Image]:
    """RTSTRUCT -> one mask per ROI with plastimatch, on the referenced CT's grid.

    ``--xor-contours`` fills with the even-odd rule, as planning systems do; plastimatch's default
    (OR of the polygons on a slice) would fill every hole, e.g. the trachea inside the body."""
    binary = require_tool("plastimatch")
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([binary, "convert", "--input", str(rtstruct), "--referenced-ct", str(ct_dir),
                           "--output-prefix", str(out), "--prefix-format", "nii.gz", "--xor-contours"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {p.name[: -len(".nii.gz")]: sitk.ReadImage(str(p)) for p in out.glob("*.nii.gz")}


def on_grid(mask: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Nearest-neighbour resampling onto the reference grid: compare in physical space, not arrays."""
    resampled = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    return sitk.GetArrayFromImage(resampled) > 0


def job_dir(config: Path) -> list[Path]:
    return sorted((config.parent / "outputs").glob("job-*"))


def read_structures(job: Path) -> dict[str, Any]:
    return dict(json.loads((job / "structures.json").read_text()))


def dataset_from_bytes(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def kill(node: NodeProcess) -> None:
    if node.process.poll() is None:
        os.kill(node.process.pid, signal.SIGKILL)
        node.process.wait()
