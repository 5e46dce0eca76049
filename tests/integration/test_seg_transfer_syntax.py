"""SEGs sent compressed where the peer accepts it: real dcmtk storescp peers that accept one transfer
syntax only (an association negotiation profile), a peer that accepts only uncompressed, and Orthanc.

What the peers stored is read back with highdicom (and dcmqi for the deflated BINARY SEG) and must
equal the label map; the result of each send names the syntax used.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_node.outputs.common import write_dataset
from dicom_node.outputs.seg import build_seg
from dicom_node.send.cstore import send_files
from dicom_node.settings import Destination
from tests.conftest import free_port
from tests.outputs_helpers import identity, synthetic_series
from tests.peers import nodelay_env, require_tool, start_orthanc
from tests.unit.test_outputs import phantom, result_for

SEG_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")  # Segmentation, Label Map Segmentation
UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
SYNTAX_UIDS = {"DeflatedExplicitVRLittleEndian": "1.2.840.10008.1.2.1.99", "RLELossless": "1.2.840.10008.1.2.5",
               "JPEGLSLossless": "1.2.840.10008.1.2.4.80", "JPEG2000Lossless": "1.2.840.10008.1.2.4.90"}
ALL_CONFIGURED = ("JPEGLSLossless", "JPEG2000Lossless", "RLELossless", "DeflatedExplicitVRLittleEndian")


@pytest.fixture(scope="module")
def segs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], np.ndarray, list[str]]:
    """A BINARY and a LABELMAP SEG of a 64x64 phantom (JPEG 2000 needs frames of 32 pixels or more), the
    label map and the CT's SOP Instance UIDs."""
    folder = tmp_path_factory.mktemp("segs")
    hu, labels, _ = phantom((5, 64, 64))
    series, _ = synthetic_series(hu, "HFS")
    paths = {}
    for seg_type in ("BINARY", "LABELMAP"):
        paths[seg_type] = folder / f"{seg_type}.dcm"
        write_dataset(build_seg(series, result_for(series, labels), identity(), seg_type=seg_type), paths[seg_type])
    return paths, labels, [str(ds.SOPInstanceUID) for ds in series.datasets]


@contextmanager
def storescp(folder: Path, syntaxes: tuple[str, ...]) -> Iterator[tuple[int, Path]]:
    """dcmtk's storescp accepting the SEG classes in ``syntaxes`` only (an association negotiation
    profile: it knows no Label Map Segmentation class of its own); yields its port and the folder it
    stores into."""
    binary = require_tool("storescp")
    received = folder / "received"
    received.mkdir(parents=True)
    port = free_port()
    profile = folder / "only.cfg"
    lines = ["[[TransferSyntaxes]]", "[Accepted]"]
    lines += [f"TransferSyntax{n} = {uid}" for n, uid in enumerate(syntaxes, 1)]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    lines += [f"PresentationContext{n} = {uid}\\Accepted" for n, uid in enumerate(SEG_CLASSES, 1)]
    lines += ["[[Profiles]]", "[Only]", "PresentationContexts = Contexts"]
    profile.write_text("\n".join(lines) + "\n")
    args = ["-xf", str(profile), "Only"]
    log = open(folder / "storescp.log", "wb")  # closed below, after the process
    proc = subprocess.Popen([binary, *args, "-aet", "STORESCP", "-od", str(received), str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=nodelay_env())
    try:
        _wait_for_port(port, proc)
        yield port, received
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, "storescp exited at start"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail("storescp did not listen within 10 s")


def _destination(port: int, syntaxes: tuple[str, ...], ae_title: str = "STORESCP") -> Destination:
    return Destination(name="PACS", ae_title=ae_title, host="127.0.0.1", port=port, timeout_seconds=10,
                       accepts_labelmap_seg=True, seg_transfer_syntaxes=syntaxes)


def _label_map_back(path: Path, uids: list[str]) -> np.ndarray:
    """The label map (segment numbers 1..N) a stored SEG holds, read with highdicom."""
    seg = hd.seg.segread(path)
    numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence if int(item.SegmentNumber) > 0]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=numbers, combine_segments=True,
                                               ignore_spatial_locations=False, assert_missing_frames_are_empty=True)
    return np.asarray(pixels)


def _only_file(folder: Path) -> Path:
    (stored,) = list(folder.iterdir())
    return stored


@pytest.mark.parametrize(("seg_type", "accepted"), [
    ("BINARY", "DeflatedExplicitVRLittleEndian"),
    ("LABELMAP", "DeflatedExplicitVRLittleEndian"),
    ("LABELMAP", "RLELossless"),
    ("LABELMAP", "JPEGLSLossless"),
    ("LABELMAP", "JPEG2000Lossless"),
])
def test_a_peer_accepting_one_compressed_syntax_gets_the_seg_in_it_equal_to_the_label_map(
        tmp_path: Path, segs: tuple[dict[str, Path], np.ndarray, list[str]], seg_type: str, accepted: str) -> None:
    paths, labels, uids = segs
    with storescp(tmp_path, (SYNTAX_UIDS[accepted],)) as (port, received):
        # every syntax configured, the accepted one not first: the peer's answer decides
        configured = ALL_CONFIGURED if seg_type == "LABELMAP" else ("DeflatedExplicitVRLittleEndian",)
        (result,) = send_files(_destination(port, configured), "DICOMNODE", [paths[seg_type]])
        assert (result.ok, result.error, result.transfer_syntax) == (True, "", accepted)
    stored = _only_file(received)
    assert pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == SYNTAX_UIDS[accepted]
    assert stored.stat().st_size < paths[seg_type].stat().st_size
    assert np.array_equal(_label_map_back(stored, uids), labels)


def test_the_first_configured_syntax_the_peer_accepts_is_used(
        tmp_path: Path, segs: tuple[dict[str, Path], np.ndarray, list[str]]) -> None:
    paths, labels, uids = segs
    both = (SYNTAX_UIDS["RLELossless"], SYNTAX_UIDS["JPEGLSLossless"], *UNCOMPRESSED)
    with storescp(tmp_path, both) as (port, received):
        results = send_files(_destination(port, ("JPEGLSLossless", "RLELossless")), "DICOMNODE",
                             [paths["LABELMAP"], paths["BINARY"]])
    # the BINARY SEG fits neither: uncompressed, in the same association
    assert [(r.ok, r.transfer_syntax) for r in results] == [(True, "JPEGLSLossless"), (True, "ExplicitVRLittleEndian")]
    by_syntax = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID): p
                 for p in received.iterdir()}
    assert sorted(by_syntax) == sorted([SYNTAX_UIDS["JPEGLSLossless"], "1.2.840.10008.1.2.1"])
    assert np.array_equal(_label_map_back(by_syntax[SYNTAX_UIDS["JPEGLSLossless"]], uids), labels)
    assert np.array_equal(_label_map_back(by_syntax["1.2.840.10008.1.2.1"], uids), labels)


@pytest.mark.parametrize("seg_type", ["BINARY", "LABELMAP"])
def test_a_peer_accepting_only_uncompressed_gets_it_uncompressed(
        tmp_path: Path, segs: tuple[dict[str, Path], np.ndarray, list[str]], seg_type: str) -> None:
    paths, labels, uids = segs
    with storescp(tmp_path, ("1.2.840.10008.1.2",)) as (port, received):  # Implicit VR Little Endian only
        (result,) = send_files(_destination(port, ALL_CONFIGURED if seg_type == "LABELMAP" else
                                            ("DeflatedExplicitVRLittleEndian",)), "DICOMNODE", [paths[seg_type]])
        assert (result.ok, result.transfer_syntax) == (True, "ImplicitVRLittleEndian"), result.error
    stored = _only_file(received)
    assert pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert np.array_equal(_label_map_back(stored, uids), labels)


def test_a_seg_that_cannot_be_encoded_goes_uncompressed_and_fails_clearly_where_only_that_syntax_is_taken(
        tmp_path: Path) -> None:
    hu, labels, _ = phantom()  # 24x30 frames: too small for JPEG 2000's 6 resolution levels
    series, _ = synthetic_series(hu, "HFS")
    path = tmp_path / "small.dcm"
    write_dataset(build_seg(series, result_for(series, labels), identity(), seg_type="LABELMAP"), path)
    with storescp(tmp_path / "mixed", (SYNTAX_UIDS["JPEG2000Lossless"], *UNCOMPRESSED)) as (port, received):
        (result,) = send_files(_destination(port, ("JPEG2000Lossless",)), "DICOMNODE", [path])
    assert (result.ok, result.transfer_syntax) == (True, "ExplicitVRLittleEndian"), result.error
    with storescp(tmp_path / "j2k", (SYNTAX_UIDS["JPEG2000Lossless"],)) as (port, received):
        (result,) = send_files(_destination(port, ("JPEG2000Lossless",)), "DICOMNODE", [path])
    assert not result.ok and result.error.startswith("cannot encode small.dcm as JPEG2000Lossless: "), result.error
    assert list(received.iterdir()) == []


def test_dcmqi_reads_the_deflated_binary_seg_a_peer_stored_equal_to_the_label_map(
        tmp_path: Path, segs: tuple[dict[str, Path], np.ndarray, list[str]]) -> None:
    beside = Path(sys.executable).parent / "segimage2itkimage"  # the test extra's dcmqi, in the venv
    tool = str(beside) if beside.exists() else shutil.which("segimage2itkimage") or require_tool("segimage2itkimage")
    paths, labels, _ = segs
    with storescp(tmp_path, (SYNTAX_UIDS["DeflatedExplicitVRLittleEndian"],)) as (port, received):
        (result,) = send_files(_destination(port, ("DeflatedExplicitVRLittleEndian",)), "DICOMNODE",
                               [paths["BINARY"]])
        assert result.ok, result.error
    out = tmp_path / "dcmqi"
    out.mkdir()
    run = subprocess.run([tool, "--inputDICOM", str(_only_file(received)), "--outputDirectory", str(out),
                          "--outputType", "nifti", "--prefix", "seg"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    files = sorted(out.glob("seg-*.nii.gz"), key=lambda p: int(p.name.split("-")[1].split(".")[0]))
    assert len(files) == 2, [p.name for p in files]
    for number, path in enumerate(files, start=1):
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0, labels == number), path.name


def test_orthanc_stores_the_deflated_binary_seg_and_gives_it_back_equal_to_the_label_map(
        tmp_path: Path, segs: tuple[dict[str, Path], np.ndarray, list[str]]) -> None:
    paths, labels, uids = segs
    orthanc = start_orthanc(tmp_path / "orthanc")
    try:
        dest = _destination(orthanc.dicom_port, ("DeflatedExplicitVRLittleEndian",), ae_title=orthanc.aet)
        (result,) = send_files(dest, "DICOMNODE", [paths["BINARY"]])
        assert (result.ok, result.transfer_syntax) == (True, "DeflatedExplicitVRLittleEndian"), result.error
        (instance,) = orthanc.rest("/instances")
        assert orthanc.rest(f"/instances/{instance}/metadata/TransferSyntax") == \
            SYNTAX_UIDS["DeflatedExplicitVRLittleEndian"].encode()
        back = tmp_path / "from-orthanc.dcm"
        back.write_bytes(orthanc.rest(f"/instances/{instance}/file"))
    finally:
        orthanc.stop()
    assert np.array_equal(_label_map_back(back, uids), labels)


def test_dicom_node_send_negotiates_the_same_way_and_records_the_syntax(
        tmp_path: Path, segs: tuple[dict[str, Path], np.ndarray, list[str]]) -> None:
    from types import SimpleNamespace

    from sqlalchemy import select

    from dicom_node.db.tables import Delivery, DeliveryStatus
    from tests.e2e.node_process import index_of, write_config

    paths, labels, uids = segs
    with storescp(tmp_path / "peer", (SYNTAX_UIDS["RLELossless"],)) as (port, received):
        config = write_config(tmp_path, SimpleNamespace(aet="STORESCP", dicom_port=port))
        text = config.read_text().replace('name = "PACS"\n', 'name = "PACS"\naccepts_labelmap_seg = true\n'
                                          'seg_transfer_syntaxes = ["RLELossless"]\n', 1)
        assert "RLELossless" in text
        config.write_text(text)
        proc = subprocess.run([sys.executable, "-m", "dicom_node.cli", "send", str(paths["LABELMAP"]), "PACS",
                               "--config", str(config)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "1 sent, 0 failed"
    factory = index_of(config)
    with factory() as s:
        (row,) = s.scalars(select(Delivery)).all()
    factory.kw["bind"].dispose()
    assert (row.status, row.transfer_syntax) == (DeliveryStatus.SENT, "RLELossless")
    assert np.array_equal(_label_map_back(_only_file(received), uids), labels)
