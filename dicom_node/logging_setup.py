"""Third-party log noise and patient data kept out of the node's log.

highdicom logs a line per module it builds at INFO and pydicom warns (through ``warnings`` and its
``pydicom`` logger) about values it finds odd. At INFO both are held to WARNING; with ``-v``
(DEBUG) everything they say is kept. Python warnings are routed into logging so they reach the
same handlers, and every record from those libraries, or from ``warnings``, has the values it
quotes replaced: they are header values of the patient's images (highdicom's person-name warning
quotes the patient's name, pydicom's invalid-value warnings quote the value), and the log must
never carry patient names or IDs.
"""

from __future__ import annotations

import logging
import re

# loggers of the libraries that quote header values, and the one ``logging.captureWarnings`` uses
QUOTING_LOGGERS = ("pydicom", "highdicom", "py.warnings")
# held to WARNING at INFO: highdicom reports each step of building an object at INFO
QUIET_AT_INFO = ("highdicom", "pydicom")
REDACTED = "<value not logged>"

# highdicom.valuerep.check_person_name: 'The string "Doe" is unlikely to represent the intended
# person name since it contains only a single component. ...' (a long explanation follows)
_PERSON_NAME_WARNING = re.compile(r'The string ".*?" is unlikely to represent the intended person name', re.S)
PERSON_NAME_NOTE = ("a person name in the source images has a single component (no caret); it is written as "
                    "received (highdicom warns, the name is not logged)")
# a quoted value: "..." or '...' (pydicom quotes with repr, highdicom with double quotes)
_QUOTED = re.compile(r"\"[^\"\n]*\"|'[^'\n]*'")


def redact(message: str) -> str:
    """``message`` with every value it quotes replaced; highdicom's person-name warning shortened."""
    if _PERSON_NAME_WARNING.search(message):
        return PERSON_NAME_NOTE
    return _QUOTED.sub(REDACTED, message)


class PatientDataFilter(logging.Filter):
    """Rewrites records of the quoting libraries (``QUOTING_LOGGERS``) so no quoted value remains.

    Attached to handlers, it sees every record that reaches them, whichever logger made it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        # one record passes every handler's filter in turn: rewritten once
        if getattr(record, "patient_data_redacted", False):
            return True
        if not any(record.name == name or record.name.startswith(name + ".") for name in QUOTING_LOGGERS):
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed format: nothing of it is safe to show
            message = f"{record.msg!s}"
        record.msg, record.args = redact(message), None
        record.patient_data_redacted = True
        return True


class PeerTracebackFilter(logging.Filter):
    """pynetdicom logs a traceback for each PDU or DIMSE message of a peer it cannot decode: the
    peer's malformed bytes, not a fault of the node. At INFO such a record becomes one line (its
    message and the exception's type) without the traceback; with ``-v`` the traceback stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and (record.name == "pynetdicom" or record.name.startswith("pynetdicom.")):
            error = record.exc_info[1]
            try:
                message = record.getMessage()
            except (TypeError, ValueError):
                message = f"{record.msg!s}"
            record.msg = f"{message} ({type(error).__name__} from the peer's data)".lstrip()
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def configure_third_party_logging(verbose: bool) -> None:
    """Quiet highdicom and pydicom at INFO, route warnings into logging and redact on every root handler.

    Call after the root handlers exist (``logging.basicConfig``); calling it again adds no second filter.
    """
    for name in QUIET_AT_INFO:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, PatientDataFilter) for f in handler.filters):
            handler.addFilter(PatientDataFilter())
        if not verbose and not any(isinstance(f, PeerTracebackFilter) for f in handler.filters):
            handler.addFilter(PeerTracebackFilter())
