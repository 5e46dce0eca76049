"""Typed, frozen settings loaded once from TOML and validated at start (``dicom-node check-config``).

Every error names the key and what is wrong with it. Relative paths are resolved against the
directory of the config file, so a config means the same thing whatever the working directory.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_node.errors import ConfigError

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash/control
_UID_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
# Object kinds a rule or template may ask for: SEG, RTSTRUCT, SR (TID 1500 structure volumes),
# PREVIEW (QA picture: a Secondary Capture sent, a PNG kept beside the objects).
OUTPUT_KINDS = ("SEG", "RTSTRUCT", "SR", "PREVIEW")
# What a rule sends when it names no outputs (unchanged since before SR and PREVIEW existed).
DEFAULT_OUTPUT_KINDS = ("SEG", "RTSTRUCT")


@dataclass(frozen=True)
class NodeSettings:
    ae_title: str
    host: str
    port: int
    storage_dir: Path
    database_url: str
    allowed_calling_aes: tuple[str, ...] = ()
    min_free_disk_mb: int = 200
    max_pdu: int = 0  # 0 = unlimited


@dataclass(frozen=True)
class CompletionSettings:
    quiet_seconds: float = 60.0
    settle_seconds: float = 2.0
    sweep_interval_seconds: float = 1.0


@dataclass(frozen=True)
class WorkerSettings:
    poll_interval_seconds: float = 0.5
    max_attempts: int = 3
    stale_after_seconds: float = 120.0
    heartbeat_seconds: float = 5.0
    output_dir: Path = Path("outputs")


@dataclass(frozen=True)
class IdentitySettings:
    """Who made the outputs. Nothing here is invented by the code: it comes from the config."""

    uid_root: str
    manufacturer: str
    manufacturer_model_name: str
    software_version: str
    device_serial_number: str
    institution_name: str = ""
    seg_series_number: int = 9901
    rtstruct_series_number: int = 9902
    series_description_prefix: str = "AI-generated"
    sr_series_number: int = 9903
    preview_series_number: int = 9904


@dataclass(frozen=True)
class Destination:
    name: str
    ae_title: str
    host: str
    port: int
    max_attempts: int = 5
    retry_backoff_seconds: float = 10.0
    timeout_seconds: float = 30.0
    accepts_labelmap_seg: bool = False  # False: a rule's LABELMAP SEG goes here as BINARY


@dataclass(frozen=True)
class Template:
    """Per-target output template (see ``dicom_node.templates``): merge, include, rename, outputs."""

    name: str
    include: tuple[str, ...] = ()  # catalogue names after merging; empty = everything produced
    rename: dict[str, str] = field(default_factory=dict)  # catalogue name -> ROI name at this site
    merge: dict[str, tuple[str, ...]] = field(default_factory=dict)  # catalogue target -> sources
    outputs: tuple[str, ...] = ()  # empty = the routing rule's outputs
    seg_type: str = ""  # BINARY, LABELMAP or FRACTIONAL; empty = the routing rule's


@dataclass(frozen=True)
class RoutingRule:
    name: str
    model: str
    destinations: tuple[str, ...]
    outputs: tuple[str, ...] = DEFAULT_OUTPUT_KINDS
    match: dict[str, str] = field(default_factory=dict)
    template: str = ""  # name of a [[templates]] entry; empty = all structures, catalogue names
    seg_type: str = "BINARY"  # BINARY, LABELMAP or FRACTIONAL (see dicom_node.outputs.seg)
    seg_max_segments: int = 0  # > 0: one SEG instance per group of at most this many segments


@dataclass(frozen=True)
class ModelsSettings:
    """Where registered learned models live (``segmenter models import``) and where they run."""

    dir: Path | None = None
    device: str = "auto"  # auto (CUDA when available), cpu, cuda, cuda:N
    threads: int = 0  # torch CPU threads for learned models; 0 = torch's default (one per core)
    # host memory a learned model may use: models kept warm between jobs (their weights) and each
    # model's whole-image logits accumulator (above a quarter of this the export runs slab by slab)
    memory_budget_gb: float = 8.0


@dataclass(frozen=True)
class Settings:
    node: NodeSettings
    completion: CompletionSettings
    worker: WorkerSettings
    identity: IdentitySettings
    destinations: dict[str, Destination]
    rules: tuple[RoutingRule, ...]
    source: Path | None = None
    templates: dict[str, Template] = field(default_factory=dict)
    models: ModelsSettings = field(default_factory=ModelsSettings)


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")


def parse_models(data: dict[str, Any], base: Path) -> ModelsSettings:
    m = _table(data, "models", "", required=False)
    _unknown_keys(m, {"dir", "device", "threads", "memory_budget_gb"}, "models")
    device = _get(m, "device", "models", str, "auto")
    if not _DEVICE_RE.match(device):
        raise ConfigError(f"models.device: {device!r} is not one of auto, cpu, cuda, cuda:N")
    threads = _get(m, "threads", "models", int, 0)
    if threads < 0:
        raise ConfigError(f"models.threads: must be 0 (torch's default) or a positive count, got {threads}")
    budget = float(_get(m, "memory_budget_gb", "models", (int, float), 8.0))
    if not 0.25 <= budget <= 4096:
        raise ConfigError(f"models.memory_budget_gb: must be between 0.25 and 4096 GB, got {budget:g}")
    raw_dir = _get(m, "dir", "models", str, "")
    return ModelsSettings(dir=_path(raw_dir, base) if raw_dir else None, device=device, threads=threads,
                          memory_budget_gb=budget)


def _table(data: dict[str, Any], key: str, where: str, required: bool = True) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}{key}: missing table [{where}{key}]")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{key}: must be a table, got {type(value).__name__}")
    return value


def _get(data: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in data:
        if default is ...:
            raise ConfigError(f"{where}.{key}: missing (required)")
        return default
    value = data[key]
    # bool is an int in Python; a port of `true` is still wrong
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}.{key}: expected {_kind_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key}: expected {_kind_name(kind)}, got {type(value).__name__} {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__


def _ae(value: str, where: str) -> str:
    if not _AE_RE.match(value) or value.strip() == "":
        raise ConfigError(f"{where}: {value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return value.strip()


def _port(value: int, where: str) -> int:
    if not 1 <= value <= 65535:
        raise ConfigError(f"{where}: port {value} is outside 1-65535")
    return value


def _positive(value: float, where: str) -> float:
    if value <= 0:
        raise ConfigError(f"{where}: must be greater than 0, got {value}")
    return float(value)


def _unknown_keys(data: dict[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(data) - known)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)} (known: {', '.join(sorted(known))})")


def _path(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _sqlite_url(url: str, base: Path) -> str:
    """Make a relative SQLite file path relative to the config's folder, like every other path."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        return prefix + str(_path(url[len(prefix):], base))
    return url


def parse_settings(data: dict[str, Any], base: Path) -> Settings:
    """Validate a parsed TOML document. ``base`` resolves relative paths."""
    _unknown_keys(data, {"node", "completion", "worker", "identity", "destinations", "routing", "templates",
                         "models"}, "config")
    n = _table(data, "node", "")
    _unknown_keys(n, {"ae_title", "host", "port", "storage_dir", "database_url", "allowed_calling_aes",
                      "min_free_disk_mb", "max_pdu"}, "node")
    allowed = _get(n, "allowed_calling_aes", "node", list, [])
    node = NodeSettings(
        ae_title=_ae(_get(n, "ae_title", "node", str), "node.ae_title"),
        host=_get(n, "host", "node", str, "127.0.0.1"),
        port=_port(_get(n, "port", "node", int, 11112), "node.port"),
        storage_dir=_path(_get(n, "storage_dir", "node", str), base),
        database_url=_sqlite_url(_get(n, "database_url", "node", str), base),
        allowed_calling_aes=tuple(_ae(a, "node.allowed_calling_aes") if isinstance(a, str) else
                                  _raise(f"node.allowed_calling_aes: {a!r} is not a string") for a in allowed),
        min_free_disk_mb=_get(n, "min_free_disk_mb", "node", int, 200),
        max_pdu=_get(n, "max_pdu", "node", int, 0),
    )

    c = _table(data, "completion", "", required=False)
    _unknown_keys(c, {"quiet_seconds", "settle_seconds", "sweep_interval_seconds"}, "completion")
    completion = CompletionSettings(
        quiet_seconds=_positive(_get(c, "quiet_seconds", "completion", (int, float), 60.0), "completion.quiet_seconds"),
        settle_seconds=float(_get(c, "settle_seconds", "completion", (int, float), 2.0)),
        sweep_interval_seconds=_positive(_get(c, "sweep_interval_seconds", "completion", (int, float), 1.0),
                                         "completion.sweep_interval_seconds"),
    )

    w = _table(data, "worker", "", required=False)
    _unknown_keys(w, {"poll_interval_seconds", "max_attempts", "stale_after_seconds", "heartbeat_seconds",
                      "output_dir"}, "worker")
    worker = WorkerSettings(
        poll_interval_seconds=_positive(_get(w, "poll_interval_seconds", "worker", (int, float), 0.5),
                                        "worker.poll_interval_seconds"),
        max_attempts=int(_positive(_get(w, "max_attempts", "worker", int, 3), "worker.max_attempts")),
        stale_after_seconds=_positive(_get(w, "stale_after_seconds", "worker", (int, float), 120.0),
                                      "worker.stale_after_seconds"),
        heartbeat_seconds=_positive(_get(w, "heartbeat_seconds", "worker", (int, float), 5.0),
                                    "worker.heartbeat_seconds"),
        output_dir=_path(_get(w, "output_dir", "worker", str, str(node.storage_dir / "outputs")), base),
    )

    i = _table(data, "identity", "")
    _unknown_keys(i, {"uid_root", "manufacturer", "manufacturer_model_name", "software_version",
                      "device_serial_number", "institution_name", "seg_series_number", "rtstruct_series_number",
                      "sr_series_number", "preview_series_number", "series_description_prefix"}, "identity")
    uid_root = _get(i, "uid_root", "identity", str).rstrip(".")
    if not _UID_ROOT_RE.match(uid_root) or len(uid_root) > 40:
        raise ConfigError(f"identity.uid_root: {uid_root!r} is not a valid UID root (digits and dots, at most 40 characters)")
    identity = IdentitySettings(
        uid_root=uid_root,
        manufacturer=_get(i, "manufacturer", "identity", str),
        manufacturer_model_name=_get(i, "manufacturer_model_name", "identity", str),
        software_version=_get(i, "software_version", "identity", str),
        device_serial_number=_get(i, "device_serial_number", "identity", str),
        institution_name=_get(i, "institution_name", "identity", str, ""),
        seg_series_number=_get(i, "seg_series_number", "identity", int, 9901),
        rtstruct_series_number=_get(i, "rtstruct_series_number", "identity", int, 9902),
        series_description_prefix=_get(i, "series_description_prefix", "identity", str, "AI-generated"),
        sr_series_number=_get(i, "sr_series_number", "identity", int, 9903),
        preview_series_number=_get(i, "preview_series_number", "identity", int, 9904),
    )
    if "ai" not in identity.series_description_prefix.lower():
        raise ConfigError("identity.series_description_prefix: must say the content is AI-generated (contain 'AI')")

    destinations: dict[str, Destination] = {}
    raw_dests = data.get("destinations", [])
    if not isinstance(raw_dests, list):
        raise ConfigError("destinations: must be an array of tables ([[destinations]])")
    for idx, d in enumerate(raw_dests):
        where = f"destinations[{idx}]"
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: must be a table")
        _unknown_keys(d, {"name", "ae_title", "host", "port", "max_attempts", "retry_backoff_seconds",
                          "timeout_seconds", "accepts_labelmap_seg"}, where)
        name = _get(d, "name", where, str)
        if name in destinations:
            raise ConfigError(f"{where}.name: duplicate destination name {name!r}")
        destinations[name] = Destination(
            name=name,
            ae_title=_ae(_get(d, "ae_title", where, str), f"{where}.ae_title"),
            host=_get(d, "host", where, str),
            port=_port(_get(d, "port", where, int), f"{where}.port"),
            max_attempts=_get(d, "max_attempts", where, int, 5),
            retry_backoff_seconds=float(_get(d, "retry_backoff_seconds", where, (int, float), 10.0)),
            timeout_seconds=_positive(_get(d, "timeout_seconds", where, (int, float), 30.0), f"{where}.timeout_seconds"),
            accepts_labelmap_seg=_get(d, "accepts_labelmap_seg", where, bool, False),
        )

    templates = parse_templates(data.get("templates", []))

    routing = _table(data, "routing", "", required=False)
    _unknown_keys(routing, {"rules"}, "routing")
    raw_rules = routing.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ConfigError("routing.rules: must be an array of tables ([[routing.rules]])")
    rules: list[RoutingRule] = []
    for idx, r in enumerate(raw_rules):
        where = f"routing.rules[{idx}]"
        if not isinstance(r, dict):
            raise ConfigError(f"{where}: must be a table")
        _unknown_keys(r, {"name", "model", "destinations", "outputs", "match", "template", "seg_type",
                          "seg_max_segments"}, where)
        template = _get(r, "template", where, str, "")
        if template and template not in templates:
            raise ConfigError(f"{where}.template: {template!r} is not a configured template "
                              f"(known: {', '.join(templates) or 'none'})")
        dests = tuple(_get(r, "destinations", where, list))
        for dname in dests:
            if dname not in destinations:
                raise ConfigError(f"{where}.destinations: {dname!r} is not a configured destination "
                                  f"(known: {', '.join(destinations) or 'none'})")
        outputs = tuple(str(o).upper() for o in _get(r, "outputs", where, list, list(DEFAULT_OUTPUT_KINDS)))
        for o in outputs:
            if o not in OUTPUT_KINDS:
                raise ConfigError(f"{where}.outputs: {o!r} is not one of {', '.join(OUTPUT_KINDS)}")
        match = _get(r, "match", where, dict, {})
        for k, v in match.items():
            if not isinstance(v, str):
                raise ConfigError(f"{where}.match.{k}: must be a string pattern, got {v!r}")
        rules.append(RoutingRule(
            name=_get(r, "name", where, str),
            model=_get(r, "model", where, str),
            destinations=dests,
            outputs=outputs,
            match=dict(match),
            template=template,
            seg_type=_seg_type(_get(r, "seg_type", where, str, "BINARY"), f"{where}.seg_type"),
            seg_max_segments=_non_negative(_get(r, "seg_max_segments", where, int, 0), f"{where}.seg_max_segments"),
        ))
    return Settings(node=node, completion=completion, worker=worker, identity=identity,
                    destinations=destinations, rules=tuple(rules), templates=templates,
                    models=parse_models(data, base))


_ROI_NAME_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,64}$")  # LO: 64 printable ASCII, no backslash


def _structure(name: object, where: str) -> str:
    """A catalogue structure name (checked against the catalogue now, not when a job runs)."""
    from segmenter.core.catalogue import (
        load_catalogue,  # data only; kept out of module import time
    )

    if not isinstance(name, str):
        raise ConfigError(f"{where}: structure names must be strings, got {name!r}")
    if name not in load_catalogue():
        raise ConfigError(f"{where}: {name!r} is not a structure of the catalogue")
    return name


def parse_templates(raw: object) -> dict[str, Template]:
    """``[[templates]]`` tables -> name -> Template; every name checked against the structure catalogue."""
    if not isinstance(raw, list):
        raise ConfigError("templates: must be an array of tables ([[templates]])")
    templates: dict[str, Template] = {}
    for idx, t in enumerate(raw):
        where = f"templates[{idx}]"
        if not isinstance(t, dict):
            raise ConfigError(f"{where}: must be a table")
        _unknown_keys(t, {"name", "include", "rename", "merge", "outputs", "seg_type"}, where)
        name = _get(t, "name", where, str)
        if not name.strip() or name in templates:
            raise ConfigError(f"{where}.name: {name!r} is empty or a duplicate template name")
        merge: dict[str, tuple[str, ...]] = {}
        seen: set[str] = set()
        for target, sources in _get(t, "merge", where, dict, {}).items():
            w = f"{where}.merge.{target}"
            _structure(target, w)
            if not isinstance(sources, list) or not sources:
                raise ConfigError(f"{w}: must be a non-empty list of structure names")
            names = tuple(_structure(s, w) for s in sources)
            twice = seen.intersection(names)
            if twice:
                raise ConfigError(f"{w}: {', '.join(sorted(twice))} already merged into another structure")
            seen.update(names)
            merge[target] = names
        include = tuple(_structure(s, f"{where}.include") for s in _get(t, "include", where, list, []))
        rename: dict[str, str] = {}
        for source, target in _get(t, "rename", where, dict, {}).items():
            _structure(source, f"{where}.rename")
            if not isinstance(target, str) or not _ROI_NAME_RE.match(target) or not target.strip():
                raise ConfigError(f"{where}.rename.{source}: {target!r} is not a valid ROI name "
                                  "(1-64 printable ASCII characters, no backslash)")
            rename[source] = target
        if len(set(rename.values())) != len(rename):
            raise ConfigError(f"{where}.rename: two structures would get the same name")
        outputs = tuple(str(o).upper() for o in _get(t, "outputs", where, list, []))
        for o in outputs:
            if o not in OUTPUT_KINDS:
                raise ConfigError(f"{where}.outputs: {o!r} is not one of {', '.join(OUTPUT_KINDS)}")
        templates[name] = Template(name=name, include=include, rename=rename, merge=merge, outputs=outputs,
                                   seg_type=_seg_type(_get(t, "seg_type", where, str, ""), f"{where}.seg_type",
                                                      allow_empty=True))
    return templates


SEG_TYPES = ("BINARY", "LABELMAP", "FRACTIONAL")  # as dicom_node.outputs.seg.SEG_TYPES


def _non_negative(value: int, where: str) -> int:
    if value < 0:
        raise ConfigError(f"{where}: must be >= 0 (0: no limit), got {value}")
    return value


def _seg_type(value: str, where: str, allow_empty: bool = False) -> str:
    if allow_empty and value == "":
        return value
    if value.upper() not in SEG_TYPES:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(SEG_TYPES)}")
    return value.upper()


def _raise(message: str) -> str:
    raise ConfigError(message)


def load_settings(path: Path) -> Settings:
    """Load and validate a TOML config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    settings = parse_settings(data, path.resolve().parent)
    return Settings(**{**settings.__dict__, "source": path.resolve()})
