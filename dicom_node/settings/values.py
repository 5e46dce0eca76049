"""Value types of the config file: each one checks one kind of value and says what is wrong with it.

A failed check raises a ``PydanticCustomError`` of type ``config_value`` whose message is ours (no
"Value error," prefix) and shows the offending value; :mod:`dicom_node.settings.problems` puts the
key's TOML path in front of it. Ranges are repeated in the JSON Schema (``json_schema_extra``) rather
than given as pydantic constraints, so that a violation gets the message below and not pydantic's.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StrictInt, StrictStr, ValidationInfo
from pydantic.types import Strict
from pydantic_core import PydanticCustomError

# Object kinds a rule or template may ask for: SEG, RTSTRUCT, SR (TID 1500 structure volumes),
# PREVIEW (QA picture: a Secondary Capture sent, a PNG kept beside the objects).
OUTPUT_KINDS = ("SEG", "RTSTRUCT", "SR", "PREVIEW")
# What a rule sends when it names no outputs (unchanged since before SR and PREVIEW existed).
DEFAULT_OUTPUT_KINDS = ("SEG", "RTSTRUCT")
SEG_TYPES = ("BINARY", "LABELMAP", "FRACTIONAL")  # as dicom_node.outputs.seg.SEG_TYPES
# The series attributes a routing rule's ``match`` may name (dicom_node.routing.SeriesAttributes has
# exactly these fields; routing imports this module, so the list lives here).
MATCH_KEYWORDS = ("Modality", "BodyPartExamined", "SeriesDescription")

PORT_RANGE = (1, 65535)
# pynetdicom takes any maximum PDU length >= 0 (0: unlimited) and sends it as a 32-bit unsigned
# number; below 4096 bytes every instance is cut into so many PDUs that a transfer crawls.
MAX_PDU_RANGE = (4096, 2**32 - 1)
SERIES_NUMBER_RANGE = (1, 2**31 - 1)  # IS: a signed 32-bit integer; series numbers are positive
MEMORY_BUDGET_GB_RANGE = (0.25, 4096.0)
SIZE_LIMIT_MB_RANGE = (1, 65536)
KEEP_DAYS_RANGE = (0, 36500)  # 0: kept forever; a century is the most a retention period can sensibly be
INTERVAL_MINUTES_RANGE = (1, 1440)  # housekeeping runs at least once a day
MAX_AGE_HOURS_RANGE = (0.0001, 8760.0)  # a delivery retries for at most a year; the low end lets tests see one die
MAX_BACKOFF_SECONDS_RANGE = (0.1, 900.0)  # retries of a delivery are never more than 15 minutes apart
DICOM_LO_MAX = 64  # Manufacturer, InstitutionName, ...: VR LO, at most 64 characters
TLS_VERSIONS = ("1.2", "1.3")  # the lowest TLS version a [tls] table may accept; below 1.2 is broken

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash/control
_UID_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_ROI_NAME_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,64}$")  # LO: 64 printable ASCII, no backslash
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")
# a reviewer: a user name of the web admin (as dicom_node.web.routes.users_admin.USER_NAME) or an e-mail address
USER_NAME_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
REVIEW_MODES = ("none", "required")  # a routing rule's ``review``: send at once, or hold for a person's decision


def problem(message: str) -> PydanticCustomError:
    """A config error with our message; the message is a context value, so braces in it stay as they are."""
    return PydanticCustomError("config_value", "{message}", {"message": message})


def _schema(**keywords: Any) -> Any:
    return Field(json_schema_extra=keywords)


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _between(low: float, high: float, unit: str = "") -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not low <= value <= high:
            raise problem(f"must be between {_number(low)} and {_number(high)}{unit}, got {_number(value)}")
        return value
    return check


def _at_least(low: int, hint: str = "") -> Callable[[int], int]:
    def check(value: int) -> int:
        if value < low:
            raise problem(f"must be >= {low}{hint}, got {value}")
        return value
    return check


def _positive(value: float) -> float:
    if value <= 0:
        raise problem(f"must be greater than 0, got {_number(value)}")
    return value


def _not_negative(value: float) -> float:
    if value < 0:
        raise problem(f"must be >= 0, got {_number(value)}")
    return value


def _max_pdu(value: int) -> int:
    low, high = MAX_PDU_RANGE
    if value != 0 and not low <= value <= high:
        raise problem(f"must be 0 (unlimited) or between {low} and {high} bytes, got {value}")
    return value


Port = Annotated[StrictInt, _schema(minimum=PORT_RANGE[0], maximum=PORT_RANGE[1]),
                 AfterValidator(_between(*PORT_RANGE))]
Seconds = Annotated[float, Strict(), _schema(exclusiveMinimum=0), AfterValidator(_positive)]
SecondsOrZero = Annotated[float, Strict(), _schema(minimum=0), AfterValidator(_not_negative)]
Count = Annotated[StrictInt, _schema(minimum=0), AfterValidator(_at_least(0, " (0: no limit)"))]
Attempts = Annotated[StrictInt, _schema(minimum=1), AfterValidator(_at_least(1))]
Connections = Annotated[StrictInt, _schema(minimum=1), AfterValidator(_at_least(1))]
Megabytes = Annotated[StrictInt, _schema(minimum=0), AfterValidator(_at_least(0))]
SizeLimitMb = Annotated[StrictInt, _schema(minimum=SIZE_LIMIT_MB_RANGE[0], maximum=SIZE_LIMIT_MB_RANGE[1]),
                        AfterValidator(_between(*SIZE_LIMIT_MB_RANGE, unit=" MB"))]
Threads = Annotated[StrictInt, _schema(minimum=0), AfterValidator(_at_least(0, " (0: torch's default)"))]
MaxPdu = Annotated[StrictInt, _schema(anyOf=[{"const": 0}, {"minimum": MAX_PDU_RANGE[0], "maximum": MAX_PDU_RANGE[1]}]),
                   AfterValidator(_max_pdu)]
KeepDays = Annotated[StrictInt, _schema(minimum=KEEP_DAYS_RANGE[0], maximum=KEEP_DAYS_RANGE[1]),
                     AfterValidator(_between(*KEEP_DAYS_RANGE, unit=" days (0: keep forever)"))]
IntervalMinutes = Annotated[StrictInt, _schema(minimum=INTERVAL_MINUTES_RANGE[0], maximum=INTERVAL_MINUTES_RANGE[1]),
                            AfterValidator(_between(*INTERVAL_MINUTES_RANGE, unit=" minutes"))]
SeriesNumber = Annotated[StrictInt, _schema(minimum=SERIES_NUMBER_RANGE[0], maximum=SERIES_NUMBER_RANGE[1]),
                         AfterValidator(_between(*SERIES_NUMBER_RANGE))]
MemoryBudgetGb = Annotated[float, Strict(),
                           _schema(minimum=MEMORY_BUDGET_GB_RANGE[0], maximum=MEMORY_BUDGET_GB_RANGE[1]),
                           AfterValidator(_between(*MEMORY_BUDGET_GB_RANGE, unit=" GB"))]
MaxAgeHours = Annotated[float, Strict(), _schema(minimum=MAX_AGE_HOURS_RANGE[0], maximum=MAX_AGE_HOURS_RANGE[1]),
                        AfterValidator(_between(*MAX_AGE_HOURS_RANGE, unit=" hours"))]
MaxBackoffSeconds = Annotated[float, Strict(),
                              _schema(minimum=MAX_BACKOFF_SECONDS_RANGE[0], maximum=MAX_BACKOFF_SECONDS_RANGE[1]),
                              AfterValidator(_between(*MAX_BACKOFF_SECONDS_RANGE, unit=" s"))]


def _ae_title(value: str) -> str:
    if not _AE_RE.match(value) or value.strip() == "":
        raise problem(f"{value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return value.strip()


def _uid_root(value: str) -> str:
    root = value.rstrip(".")
    if not _UID_ROOT_RE.match(root) or len(root) > 40:
        raise problem(f"{root!r} is not a valid UID root (digits and dots, at most 40 characters)")
    return root


def _not_blank(value: str) -> str:
    if not value.strip():
        raise problem("must not be empty")
    return value


def _long_string(value: str) -> str:
    if len(value) > DICOM_LO_MAX:
        raise problem(f"must be at most {DICOM_LO_MAX} characters (DICOM LO), got {len(value)}")
    return value


def _says_ai(value: str) -> str:
    if "ai" not in value.lower():
        raise problem(f"{value!r} must say the content is AI-generated (contain 'AI')")
    return _long_string(value)


def _device(value: str) -> str:
    if not _DEVICE_RE.match(value):
        raise problem(f"{value!r} is not one of auto, cpu, cuda, cuda:N")
    return value


def _tls_version(value: str) -> str:
    if value not in TLS_VERSIONS:
        raise problem(f"{value!r} is not one of {', '.join(TLS_VERSIONS)} (older TLS versions are not offered)")
    return value


def _output_kind(value: str) -> str:
    if value.upper() not in OUTPUT_KINDS:
        raise problem(f"{value!r} is not one of {', '.join(OUTPUT_KINDS)}")
    return value.upper()


def _seg_type(value: str) -> str:
    if value.upper() not in SEG_TYPES:
        raise problem(f"{value!r} is not one of {', '.join(SEG_TYPES)}")
    return value.upper()


def _seg_type_or_empty(value: str) -> str:
    return value if value == "" else _seg_type(value)


def _seg_transfer_syntax(value: str) -> str:
    from dicom_node.settings.syntaxes import known_syntaxes, missing_encoder, seg_syntax

    syntax = seg_syntax(value)
    if syntax is None:
        raise problem(f"{value!r} is not a SEG transfer syntax; one of (keyword or UID): {known_syntaxes()}")
    missing = missing_encoder(syntax)
    if missing:
        raise problem(f"{syntax.keyword}: pydicom cannot encode it here ({missing})")
    return syntax.keyword


def _roi_name(value: str) -> str:
    if not _ROI_NAME_RE.match(value) or not value.strip():
        raise problem(f"{value!r} is not a valid ROI name (1-64 printable ASCII characters, no backslash)")
    return value


def _reviewer(value: str) -> str:
    if "@" in value and not _EMAIL_RE.match(value):
        raise problem(f"{value!r} is not an e-mail address (name@domain)")
    if not USER_NAME_RE.match(value):
        raise problem(f"{value!r} is neither a user name of the web admin (letters, digits, . _ @ -; at most 64) "
                      "nor an e-mail address")
    return value


def _review_mode(value: str) -> str:
    if value not in REVIEW_MODES:
        raise problem(f"{value!r} is not one of {', '.join(REVIEW_MODES)}")
    return value


def _match_keyword(value: str) -> str:
    if value not in MATCH_KEYWORDS:
        raise problem(f"unknown key; known: {', '.join(sorted(MATCH_KEYWORDS))}")
    return value


AETitle = Annotated[StrictStr, _schema(pattern=_AE_RE.pattern), AfterValidator(_ae_title)]
UidRoot = Annotated[StrictStr, _schema(pattern=r"^[0-9.]{1,41}$"), AfterValidator(_uid_root)]
Name = Annotated[StrictStr, _schema(minLength=1), AfterValidator(_not_blank)]
Host = Annotated[StrictStr, _schema(minLength=1), AfterValidator(_not_blank)]
LongString = Annotated[StrictStr, _schema(maxLength=DICOM_LO_MAX), AfterValidator(_long_string)]
SeriesDescriptionPrefix = Annotated[StrictStr, _schema(maxLength=DICOM_LO_MAX), AfterValidator(_says_ai)]
Device = Annotated[StrictStr, _schema(pattern=_DEVICE_RE.pattern), AfterValidator(_device)]
TlsVersion = Annotated[StrictStr, _schema(enum=list(TLS_VERSIONS)), AfterValidator(_tls_version)]
OutputKind = Annotated[StrictStr, AfterValidator(_output_kind)]
SegType = Annotated[StrictStr, AfterValidator(_seg_type)]
SegTypeOrEmpty = Annotated[StrictStr, AfterValidator(_seg_type_or_empty)]
StructureName = Annotated[StrictStr, _schema(minLength=1)]  # in the catalogue: settings.structures checks it
SegTransferSyntax = Annotated[StrictStr, AfterValidator(_seg_transfer_syntax)]
RoiName = Annotated[StrictStr, _schema(pattern=_ROI_NAME_RE.pattern), AfterValidator(_roi_name)]
MatchKeyword = Annotated[StrictStr, AfterValidator(_match_keyword)]
Reviewer = Annotated[StrictStr, _schema(minLength=1, maxLength=254), AfterValidator(_reviewer)]
ReviewMode = Annotated[StrictStr, _schema(enum=list(REVIEW_MODES)), AfterValidator(_review_mode)]


def _peer_network(value: str) -> str:
    """An IP address or a CIDR network; a single address becomes its /32 (/128) network."""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise problem(f"{value!r} is not an IP address or a CIDR network (e.g. 10.0.0.5, 10.1.0.0/16)") from None


PeerNetwork = Annotated[StrictStr, _schema(minLength=1), AfterValidator(_peer_network)]


def _path_text(value: Any) -> Any:
    if not isinstance(value, str | Path):
        raise problem(f"expected str (a path), got {type(value).__name__} {value!r}")
    return value


def _base(info: ValidationInfo) -> Path | None:
    """The config file's folder, given as validation context by the loader; None when built in code."""
    context = info.context if isinstance(info.context, dict) else {}
    base = context.get("base")
    return base if isinstance(base, Path) else None


def resolve_path(value: Path, base: Path | None) -> Path:
    """A relative path means relative to the config file's folder, whatever the working directory."""
    if base is None:
        return value
    path = value.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _resolved_path(value: Path, info: ValidationInfo) -> Path:
    return resolve_path(value, _base(info))


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else _path_text(value)


def _optional_resolved_path(value: Path | None, info: ValidationInfo) -> Path | None:
    return None if value is None else resolve_path(value, _base(info))


def _database_url(value: str, info: ValidationInfo) -> str:
    """A relative SQLite file path is relative to the config's folder, like every other path."""
    _not_blank(value)
    base, prefix = _base(info), "sqlite:///"
    if base is not None and value.startswith(prefix) and not value.startswith("sqlite:////") \
            and value != "sqlite:///:memory:":
        return prefix + str(resolve_path(Path(value[len(prefix):]), base))
    return value


ConfigPath = Annotated[Path, BeforeValidator(_path_text), AfterValidator(_resolved_path)]
OptionalConfigPath = Annotated[Path | None, BeforeValidator(_empty_is_none), AfterValidator(_optional_resolved_path)]
DatabaseUrl = Annotated[StrictStr, _schema(minLength=1), AfterValidator(_database_url)]
