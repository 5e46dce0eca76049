"""atheris target: the C-STORE handler's parsing of a received dataset, on fuzzed bytes.

Each input is one transfer syntax (its first byte picks one of ``SYNTAXES``) and the dataset
stream that follows. The target calls what ``handlers.handle_store`` calls before it writes
anything: ``validation.screen`` (the header scan, or pydicom's decode for deflate and big
endian, and the checks at the door) and ``handlers.extract_meta``. Refusing the input
(``BadInstance``) is the expected outcome of garbage; any other exception is a finding.

    python tests/fuzz/fuzz_receive.py [libFuzzer options] [CORPUS_DIR ...]
    python tests/fuzz/fuzz_receive.py --write-seeds DIR   # the corpus builders' cases as seeds

``scripts/fuzz.sh [SECONDS]`` runs it for longer.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import warnings
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# heavy third-party modules stay uninstrumented; the node's receive path is instrumented
import pydicom
import pynetdicom  # noqa: F401
import sqlalchemy  # noqa: F401
from pydicom.uid import UID
from pynetdicom.dsutils import decode

with atheris.instrument_imports(include=["dicom_node"]):
    from dicom_node.receive.handlers import CT_IMAGE_STORAGE, extract_meta
    from dicom_node.receive.validation import MEGABYTE, BadInstance, DoorLimits, screen

SYNTAXES = tuple(UID(uid) for uid in (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
))
LIMITS = DoorLimits(4 * MEGABYTE, 16 * MEGABYTE)
# with FUZZ_RECEIVE_CANARY=1 this input raises: the bounded test checks that a finding fails the run
CANARY = b"\x01canary input"
_CANARY_ON = os.environ.get("FUZZ_RECEIVE_CANARY") == "1"


def parse_like_handle_store(data: bytes) -> None:
    """What ``handle_store`` does with a received dataset before storing it; raises BadInstance to refuse."""
    if not data:
        return
    syntax, encoded = SYNTAXES[data[0] % len(SYNTAXES)], data[1:]

    def decoded() -> pydicom.Dataset:
        return decode(io.BytesIO(encoded), syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)

    header = screen(encoded, syntax, decoded, LIMITS)
    extract_meta(header, "1.2.3.4", CT_IMAGE_STORAGE, str(syntax))


def test_one_input(data: bytes) -> None:
    if _CANARY_ON and data == CANARY:
        raise RuntimeError("canary input")
    try:
        parse_like_handle_store(data)
    except BadInstance:
        pass


def write_seeds(folder: Path) -> int:
    """The corpus builders' datasets (good and malformed) as seed inputs; returns how many."""
    from tests.corpus.datasets import dataset_cases, good_stream

    folder.mkdir(parents=True, exist_ok=True)
    index = {str(uid): number for number, uid in enumerate(SYNTAXES)}
    seeds = [(index["1.2.840.10008.1.2.1"], good_stream()[1]), (index["1.2.840.10008.1.2"], good_stream(False)[1])]
    seeds += [(index.get(case.syntax, 1), case.stream) for case in dataset_cases()
              if len(case.stream) < 64 * 1024]
    for number, (syntax, stream) in enumerate(seeds):
        (folder / f"seed-{number:03d}").write_bytes(bytes([syntax]) + stream)
    return len(seeds)


def main() -> None:
    # pydicom warns about every odd value it converts: noise at a million inputs a minute
    warnings.simplefilter("ignore")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        print(write_seeds(Path(sys.argv[2])))
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
