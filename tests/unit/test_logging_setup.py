"""Patient data quoted by pydicom and highdicom never reaches a log handler; their noise stays out at INFO."""

from __future__ import annotations

import logging
import struct
import warnings
from collections.abc import Iterator

import pytest
from highdicom.valuerep import check_person_name
from pydicom.dataset import Dataset

from dicom_node.logging_setup import (
    PERSON_NAME_NOTE,
    QUIET_AT_INFO,
    REDACTED,
    PatientDataFilter,
    PeerTracebackFilter,
    configure_third_party_logging,
    redact,
)

NAME = "Markername"


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname} {self.format(record)}")


@pytest.fixture()
def handler() -> Iterator[ListHandler]:
    """A root handler as ``logging.basicConfig`` makes one; logging is put back as it was afterwards."""
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in QUIET_AT_INFO}
    root_level = root.level
    list_handler = ListHandler()
    root.addHandler(list_handler)
    root.setLevel(logging.DEBUG)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            yield list_handler
    finally:
        logging.captureWarnings(False)
        root.removeHandler(list_handler)
        root.setLevel(root_level)
        for other in root.handlers:
            for f in [f for f in other.filters if isinstance(f, PatientDataFilter | PeerTracebackFilter)]:
                other.removeFilter(f)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_highdicom_person_name_warning_never_reaches_a_handler(handler: ListHandler) -> None:
    second = ListHandler()  # a record passes each handler's filter: the rewrite must survive the second
    logging.getLogger().addHandler(second)
    try:
        # an earlier in-process command may have left logging's capture on while pytest's per-test
        # catch_warnings restored showwarning: captureWarnings(True) alone would then change nothing
        logging.captureWarnings(False)
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # and the warning may have been shown once already
            configure_third_party_logging(verbose=False)
            check_person_name(NAME)  # highdicom's own check, as its constructors call it
    finally:
        logging.getLogger().removeHandler(second)
    for lines in (handler.lines, second.lines):
        assert lines, "the warning was expected to reach the log"
        assert not any(NAME in line for line in lines), lines
        assert any(PERSON_NAME_NOTE in line for line in lines), lines


def test_pydicom_invalid_value_warnings_are_redacted(handler: ListHandler) -> None:
    configure_third_party_logging(verbose=False)
    ds = Dataset()
    ds.PatientBirthDate = NAME  # not a DA: pydicom warns and logs, quoting the value
    lines = [line for line in handler.lines if "Invalid value for VR DA" in line]
    assert {line.split()[0] for line in lines} == {"pydicom", "py.warnings"}  # both of pydicom's channels
    assert all(REDACTED in line for line in lines)
    assert not any(NAME in line for line in handler.lines), handler.lines


def test_without_the_setup_the_name_would_be_logged(handler: ListHandler) -> None:
    # the same warning with the filter left out: the check above is what keeps the name out
    logging.captureWarnings(True)
    check_person_name(NAME)
    assert any(NAME in line for line in handler.lines)


def test_highdicom_info_is_held_back_unless_verbose(handler: ListHandler) -> None:
    configure_third_party_logging(verbose=False)
    logging.getLogger("highdicom.seg.sop").info("add plane #%d", 1)
    logging.getLogger("highdicom.seg.sop").warning("something %s", "odd")
    assert [line for line in handler.lines if line.startswith("highdicom")] == \
        ["highdicom.seg.sop WARNING something odd"]
    configure_third_party_logging(verbose=True)
    logging.getLogger("highdicom.seg.sop").info("add plane #%d", 2)
    assert "highdicom.seg.sop INFO add plane #2" in handler.lines
    assert sum(isinstance(f, PatientDataFilter) for f in handler.filters) == 1  # configured twice, one filter


def test_the_node_s_own_records_are_left_alone(handler: ListHandler) -> None:
    configure_third_party_logging(verbose=False)
    logging.getLogger("dicom_node.worker").info("structure 'Lung_L' written")
    assert "dicom_node.worker INFO structure 'Lung_L' written" in handler.lines


def test_redact() -> None:
    assert redact("Invalid value for VR PN: 'Doe^John'.") == f"Invalid value for VR PN: {REDACTED}."
    assert redact('a "b" and \'c\'') == f"a {REDACTED} and {REDACTED}"
    assert redact('The string "Doe" is unlikely to represent the intended person name since ...') == \
        PERSON_NAME_NOTE
    assert redact("nothing quoted") == "nothing quoted"


def _log_a_decode_error(logger: str) -> None:
    try:
        struct.unpack(">I", b"")
    except struct.error as exc:
        logging.getLogger(logger).exception(exc)  # as pynetdicom's DUL logs a PDU it cannot decode


def test_a_peer_s_undecodable_pdu_is_one_line_without_traceback(handler: ListHandler) -> None:
    configure_third_party_logging(verbose=False)
    _log_a_decode_error("pynetdicom.dul")
    _log_a_decode_error("dicom_node.receive.handlers")  # the node's own failures keep their traceback
    assert "pynetdicom.dul ERROR unpack requires a buffer of 4 bytes (error from the peer's data)" in handler.lines
    own = [line for line in handler.lines if line.startswith("dicom_node")]
    assert len(own) == 1 and "Traceback" in own[0]


def test_a_peer_s_traceback_is_kept_when_verbose(handler: ListHandler) -> None:
    configure_third_party_logging(verbose=True)
    _log_a_decode_error("pynetdicom.dul")
    assert any(line.startswith("pynetdicom.dul") and "Traceback" in line for line in handler.lines)
