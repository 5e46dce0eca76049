"""The node's own tables of the config file: [node], [completion], [worker], [identity], [models], [housekeeping],
[web], [[destinations]] (the [tls] tables of [node] and of destinations are in :mod:`.tls`).

Each is a frozen pydantic dataclass: validated when built, from TOML or in code, unknown keys refused.
Paths are resolved against the config file's folder when the loader gives it as context.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import ConfigDict, Field, StrictBool, StrictStr, ValidationInfo, field_validator
from pydantic.dataclasses import dataclass

from dicom_node.settings.syntaxes import SEG_SYNTAXES, UNCOMPRESSED
from dicom_node.settings.tls import DEFAULT_PORT, DestinationTls, ListenerTls
from dicom_node.settings.values import (
    AETitle,
    Attempts,
    ConfigPath,
    Connections,
    DatabaseUrl,
    Device,
    Host,
    IntervalMinutes,
    KeepDays,
    LongString,
    MaxAgeHours,
    MaxBackoffSeconds,
    MaxPdu,
    Megabytes,
    MemoryBudgetGb,
    Name,
    OptionalConfigPath,
    PeerNetwork,
    Port,
    Seconds,
    SecondsOrZero,
    SegTransferSyntax,
    SeriesDescriptionPrefix,
    SeriesNumber,
    SizeLimitMb,
    Threads,
    UidRoot,
    problem,
)

TABLE = ConfigDict(extra="forbid")
DEFAULT_MIN_FREE_DISK_MB = 200  # node.min_free_disk_mb; the emergency clean-up's threshold is checked against it
DEFAULT_MAX_DATASET_MB = 1024  # an Enhanced CT of 1000 512x512 frames is 512 MB uncompressed
DEFAULT_MAX_PIXEL_MB = 2048
DEFAULT_RETRY_BACKOFF_SECONDS = 10.0  # a destination's first wait; checked against its longest one
DEFAULT_RETRY_MAX_BACKOFF_SECONDS = 900.0


@dataclass(frozen=True, kw_only=True, config=TABLE)
class NodeSettings:
    """[node]: the listener and where received instances and the index live."""

    ae_title: AETitle = Field(description="AE title of the listener (1-16 printable characters, no backslash)")
    host: Host = Field(default="127.0.0.1", description="address to listen on; 0.0.0.0 for every interface")
    port: Port = Field(default=DEFAULT_PORT, description="TCP port of the listener (without TLS)")
    storage_dir: ConfigPath = Field(description="folder of the received instances")
    database_url: DatabaseUrl = Field(
        description="SQLAlchemy URL of the index; a relative sqlite:/// path is relative to the config's folder")
    allowed_calling_aes: tuple[AETitle, ...] = Field(
        default=(), description="calling AE titles accepted; empty = any")
    allowed_peers: tuple[PeerNetwork, ...] = Field(
        default=(), description="IP addresses or CIDR networks that may connect; empty = any")
    negotiation_timeout_seconds: Seconds = Field(
        default=10.0, description="a connection without a complete A-ASSOCIATE-RQ by then is dropped")
    max_connections_per_peer: Connections = Field(
        default=8, description="open connections from one IP address; more are refused")
    max_associations: Connections = Field(
        default=32, description="negotiated associations at once; more are rejected (transient)")
    max_waiting_connections: Connections = Field(
        default=256, description="connections not yet negotiated; when full the oldest is dropped")
    min_free_disk_mb: Megabytes = Field(
        default=DEFAULT_MIN_FREE_DISK_MB,
        description="below this much free disk, C-STORE answers 0xA700 (out of resources)")
    max_pdu: MaxPdu = Field(default=0, description="maximum PDU length received, bytes; 0 = unlimited")
    max_dataset_mb: SizeLimitMb = Field(
        default=DEFAULT_MAX_DATASET_MB, description="a larger dataset is refused with 0xA700 (out of resources)")
    max_pixel_mb: SizeLimitMb = Field(
        default=DEFAULT_MAX_PIXEL_MB,
        description="pixels that would decode to more (Rows x Columns x frames x bytes) are refused with 0xA700")
    tls: ListenerTls = Field(default_factory=ListenerTls, description="[node.tls]: the TLS listener; off by default")


@dataclass(frozen=True, config=TABLE)
class CompletionSettings:
    """[completion]: when a series counts as complete."""

    quiet_seconds: Seconds = Field(
        default=60.0, description="fallback: no new instance for this long means complete")
    settle_seconds: SecondsOrZero = Field(
        default=2.0, description="no series is complete sooner than this after its last instance")
    after_release_seconds: SecondsOrZero = Field(
        default=10.0, description="a series whose every association was released is complete this long after "
                                  "the last release, when nothing new arrived (and its slices form one stack)")
    sweep_interval_seconds: Seconds = Field(default=1.0, description="how often the completion sweep runs")


@dataclass(frozen=True, config=TABLE)
class WorkerSettings:
    """[worker]: how workers claim, run and retry jobs."""

    poll_interval_seconds: Seconds = Field(default=0.5, description="wait between looks for a queued job")
    max_attempts: Attempts = Field(
        default=3, description="a job whose worker died or was lost during it is queued again until tried "
                               "this often, then it fails")
    stale_after_seconds: Seconds = Field(
        default=120.0, description="a running job whose worker stopped beating this long is queued again")
    heartbeat_seconds: Seconds = Field(
        default=5.0, description="how often a worker marks its running job alive; less than stale_after_seconds")
    delivery_lease_seconds: Seconds = Field(
        default=60.0, description="a worker holds the deliveries it sends this long, renewed while it sends; "
                                  "a dead worker's deliveries are free again after it")
    # the loader makes the default <node.storage_dir>/outputs; "outputs" is the default of code that builds one
    output_dir: ConfigPath = Field(
        default=Path("outputs"), description="folder of the job outputs (default: <node.storage_dir>/outputs)")


@dataclass(frozen=True, config=TABLE)
class IdentitySettings:
    """[identity]: who made the outputs. Nothing here is invented by the code: it comes from the config."""

    uid_root: UidRoot = Field(description="UID root of the objects made (digits and dots, at most 40 characters)")
    manufacturer: LongString = Field(description="Manufacturer of the objects made")
    manufacturer_model_name: LongString = Field(description="ManufacturerModelName")
    software_version: LongString = Field(description="SoftwareVersions")
    device_serial_number: LongString = Field(description="DeviceSerialNumber")
    institution_name: LongString = Field(default="", description="InstitutionName; empty = not written")
    seg_series_number: SeriesNumber = Field(default=9901, description="SeriesNumber of DICOM-SEG series")
    rtstruct_series_number: SeriesNumber = Field(default=9902, description="SeriesNumber of RTSTRUCT series")
    series_description_prefix: SeriesDescriptionPrefix = Field(
        default="AI-generated", description="start of every SeriesDescription; must contain 'AI'")
    sr_series_number: SeriesNumber = Field(default=9903, description="SeriesNumber of the SR (structure volumes)")
    preview_series_number: SeriesNumber = Field(default=9904, description="SeriesNumber of the QA preview")


@dataclass(frozen=True, config=TABLE)
class Destination:
    """[[destinations]]: a C-STORE SCP the outputs are sent to.

    A delivery is retried for ``max_age_hours`` after it was queued, ``retry_backoff_seconds`` after
    the first failure and twice as long after each further one, never more than
    ``retry_max_backoff_seconds`` apart; then it is dead (``dicom-node retry`` queues it again).
    """

    # keys of earlier versions: the loader says what took their place instead of only "unknown key"
    REPLACED_KEYS: ClassVar[dict[str, str]] = {
        "max_attempts": "no longer used: a delivery is retried until it is max_age_hours old (default 24), "
                        "at most retry_max_backoff_seconds apart; remove the key"}

    name: Name = Field(description="name routing rules use; unique")
    ae_title: AETitle = Field(description="called AE title")
    host: Host = Field(description="host name or address")
    port: Port = Field(description="TCP port")
    max_age_hours: MaxAgeHours = Field(
        default=24.0, description="a delivery not sent this long after it was queued is dead (dead letter)")
    retry_backoff_seconds: Seconds = Field(
        default=DEFAULT_RETRY_BACKOFF_SECONDS,
        description="wait before the first retry; doubles each retry up to retry_max_backoff_seconds")
    retry_max_backoff_seconds: MaxBackoffSeconds = Field(
        default=DEFAULT_RETRY_MAX_BACKOFF_SECONDS,
        description="longest wait between two tries of a delivery, at most 900 s")
    timeout_seconds: Seconds = Field(default=30.0, description="network and DIMSE timeout")
    accepts_labelmap_seg: StrictBool = Field(
        default=False, description="false: a rule's LABELMAP SEG goes here as BINARY")
    seg_transfer_syntaxes: tuple[SegTransferSyntax, ...] = Field(
        default=(), description="transfer syntaxes offered for SEGs, preferred first (DICOM keyword or UID): "
                                "DeflatedExplicitVRLittleEndian for any SEG; RLELossless, JPEGLSLossless, "
                                "JPEG2000Lossless for LABELMAP SEGs; uncompressed is always the fallback; "
                                "empty = uncompressed only")
    tls: DestinationTls = Field(default_factory=DestinationTls, description="[destinations.tls]: send with TLS; "
                                                                            "off by default")

    @field_validator("seg_transfer_syntaxes")
    @classmethod
    def _syntaxes_fit(cls, syntaxes: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        """Each once; uncompressed (the fallback) only last; LABELMAP-only ones where LABELMAP SEGs go."""
        for position, keyword in enumerate(syntaxes):
            if keyword in syntaxes[:position]:
                raise problem(f"{keyword} is listed twice (items {syntaxes.index(keyword)} and {position})")
        if UNCOMPRESSED in syntaxes[:-1]:
            raise problem(f"{UNCOMPRESSED} (uncompressed) is always proposed as the fallback, after "
                          "the others: list it last or leave it out")
        labelmap_only = [k for k in syntaxes if "BINARY" not in SEG_SYNTAXES[k].seg_types]
        if labelmap_only and info.data.get("accepts_labelmap_seg") is False:
            raise problem(f"{', '.join(labelmap_only)} compress{'es' if len(labelmap_only) == 1 else ''} "
                          "LABELMAP SEGs only (a BINARY SEG has 1 bit a pixel: uncompressed or "
                          "DeflatedExplicitVRLittleEndian), and this destination gets BINARY SEGs "
                          "(accepts_labelmap_seg = false)")
        return syntaxes


@dataclass(frozen=True, config=TABLE)
class ModelsSettings:
    """[models]: where registered learned models live (``segmenter models import``) and where they run."""

    dir: OptionalConfigPath = Field(default=None, description="folder of registered models; empty = built-in only")
    device: Device = Field(default="auto", description="auto (CUDA when available), cpu, cuda, cuda:N")
    threads: Threads = Field(default=0, description="torch CPU threads for learned models; 0 = torch's default")
    # host memory a learned model may use: models kept warm between jobs (their weights) and each
    # model's whole-image logits accumulator (above a quarter of this the export runs slab by slab)
    memory_budget_gb: MemoryBudgetGb = Field(default=8.0, description="host memory for warm weights and logits, GB")


@dataclass(frozen=True, config=TABLE)
class HousekeepingSettings:
    """[housekeeping]: when received instances and job outputs are removed (only once fully delivered)."""

    keep_instances_days: KeepDays = Field(
        default=7, description="received instances of a fully delivered series are removed this many days after "
                               "the last one arrived; 0 = kept forever")
    keep_outputs_days: KeepDays = Field(
        default=30, description="a job's output folder is removed this many days after every delivery of it was "
                                "sent; 0 = kept forever")
    interval_minutes: IntervalMinutes = Field(default=10, description="how often housekeeping runs in the listener")
    emergency_free_disk_mb: Megabytes = Field(
        default=2048, description="below this much free disk on the storage volume, the oldest fully delivered "
                                  "series and outputs are removed early; above node.min_free_disk_mb; 0 = off")


@dataclass(frozen=True, config=TABLE)
class WebSettings:
    """[web]: the admin web app and API (``dicom-node web``); behind a TLS reverse proxy when off the host."""

    host: Host = Field(default="127.0.0.1", description="address the web app listens on; keep 127.0.0.1 behind a proxy")
    port: Port = Field(default=8080, description="TCP port of the web app")
    session_minutes: IntervalMinutes = Field(default=480, description="a login session ends this long after login")
    secure_cookies: StrictBool = Field(
        default=False, description="mark the session cookie Secure: true when browsers reach the app over TLS")
    metrics_token: StrictStr = Field(
        default="", description="bearer token /metrics requires; empty = /metrics open to whoever reaches the port")
    login_failures_allowed: Attempts = Field(
        default=5, description="failed logins per user name and per address within login_window_seconds")
    login_window_seconds: Seconds = Field(default=300.0, description="window of the login rate limit")
