"""Routing: which rules apply to a complete series, and what each of them will do. Pure.

Rules are evaluated in the order of the config and every matching rule produces one job. A rule's
``match`` maps DICOM keywords to case-insensitive shell-style patterns (``*``, ``?``); a rule
without ``match`` matches every CT series. Fallback rules are tried, in order, only when no other
rule matched. :func:`explain` says for every rule why it does or does not apply (the dry-run tester).

What a matching rule means is decided here, once, when the series is complete: :func:`route`
resolves the rule against the settings of that moment into a :class:`RoutedAction` (model, object
kinds, the full template, the SEG type, whether a person reviews the outputs first and who is told, and
per destination its address, TLS settings, retry policy and the SEG variant it receives). The job
stores that snapshot and the worker runs it as it is, so a rule or destination renamed, edited or
re-addressed while jobs are queued changes only the series routed after the change.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from dicom_node.errors import ConfigError, DicomNodeError
from dicom_node.seg_variants import resolve_seg_type, seg_type_for, variants_to_write
from dicom_node.settings import MATCH_KEYWORDS, DestinationTls, RoutingRule, Settings
from segmenter.core.catalogue import Catalogue, Code, StructureInfo, extend_catalogue


class RoutingError(DicomNodeError):
    """A job's routed action is missing or unreadable, or cannot be run as it was decided."""


@dataclass(frozen=True)
class SeriesAttributes:
    """The attributes rules may match on, as indexed at receive time."""

    Modality: str = ""
    BodyPartExamined: str = ""
    SeriesDescription: str = ""

    def get(self, keyword: str) -> str | None:
        return getattr(self, keyword, None) if keyword in self.__dataclass_fields__ else None


# the keys a rule's match may name, checked when the config is loaded: the fields above (a test holds them equal)
MATCHABLE_KEYWORDS = MATCH_KEYWORDS


def rule_matches(rule: RoutingRule, series: SeriesAttributes) -> bool:
    for keyword, pattern in rule.match.items():
        value = series.get(keyword)
        if value is None or not fnmatchcase(value.upper(), pattern.upper()):
            return False
    return True


def select_rules(rules: tuple[RoutingRule, ...], series: SeriesAttributes) -> list[RoutingRule]:
    """The matching rules in order; the matching fallback rules only when no other rule matched."""
    matched = [rule for rule in rules if not rule.fallback and rule_matches(rule, series)]
    return matched or [rule for rule in rules if rule.fallback and rule_matches(rule, series)]


@dataclass(frozen=True)
class RuleVerdict:
    """Whether one rule applies to a series, and the reasons (each pattern that failed, or why it was passed over)."""

    rule_name: str
    applies: bool
    fallback: bool
    reasons: tuple[str, ...]


def _mismatches(rule: RoutingRule, series: SeriesAttributes) -> list[str]:
    out = []
    for keyword, pattern in rule.match.items():
        value = series.get(keyword)
        if value is None or not fnmatchcase(value.upper(), pattern.upper()):
            out.append(f"{keyword} {value or ''!r} does not fit {pattern!r}")
    return out


def explain(rules: tuple[RoutingRule, ...], series: SeriesAttributes) -> list[RuleVerdict]:
    """One verdict per rule, in order: what :func:`select_rules` decides, with the reasons."""
    chosen = {rule.name for rule in select_rules(rules, series)}
    other_matched = any(not rule.fallback and rule_matches(rule, series) for rule in rules)
    verdicts = []
    for rule in rules:
        failed = _mismatches(rule, series)
        if rule.name in chosen:
            reasons = [f"{k} {series.get(k) or ''!r} fits {p!r}" for k, p in rule.match.items()] or \
                ["no match patterns: every series"]
            if rule.fallback:
                reasons.append("fallback rule: no other rule matched")
        elif failed:
            reasons = failed
        else:  # a fallback rule whose patterns fit, passed over because another rule matched
            reasons = ["fallback rule, not used: another rule matched"] if other_matched else []
        verdicts.append(RuleVerdict(rule.name, rule.name in chosen, rule.fallback, tuple(reasons)))
    return verdicts


# -- the snapshot a job stores ---------------------------------------------------------------
# Its own models, not the settings classes: what a queued job does must not change with them.
_SNAPSHOT = ConfigDict(frozen=True, extra="forbid")


class TemplateSnapshot(BaseModel):
    """The output template's content as it was when the series was routed."""

    model_config = _SNAPSHOT

    name: str
    map: dict[str, str] = {}
    include: tuple[str, ...] = ()
    rename: dict[str, str] = {}
    merge: dict[str, tuple[str, ...]] = {}
    outputs: tuple[str, ...] = ()
    seg_type: str = ""


class StructureSnapshot(BaseModel):
    """A department structure ([[structures]]) as it was when the series was routed: codes, colour, type."""

    model_config = _SNAPSHOT

    name: str
    category: tuple[str, str, str]
    type: tuple[str, str, str]
    modifier: tuple[str, str, str] | None = None
    colour: tuple[int, int, int]
    rt_type: str
    description: str = ""

    @classmethod
    def of(cls, info: StructureInfo) -> StructureSnapshot:
        def code(c: Code) -> tuple[str, str, str]:
            return c.value, c.scheme, c.meaning

        return cls(name=info.name, category=code(info.category), type=code(info.type),
                   modifier=None if info.modifier is None else code(info.modifier), colour=info.colour,
                   rt_type=info.rt_type, description=info.description)

    def info(self) -> StructureInfo:
        return StructureInfo(self.name, Code(*self.category), Code(*self.type), self.colour, self.rt_type,
                             self.description, None if self.modifier is None else Code(*self.modifier),
                             source="[[structures]]")


class TlsSnapshot(BaseModel):
    """A destination's TLS settings as routed: the files are named (read when sending), the choices copied."""

    model_config = _SNAPSHOT

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    min_version: str = "1.2"
    check_hostname: bool = True

    @classmethod
    def of(cls, tls: DestinationTls) -> TlsSnapshot | None:
        """None for a destination without TLS."""
        if not tls.enabled:
            return None
        return cls(cert_file=str(tls.cert_file or ""), key_file=str(tls.key_file or ""),
                   ca_file=str(tls.ca_file or ""), min_version=tls.min_version, check_hostname=tls.check_hostname)


class RoutedDestination(BaseModel):
    """Where a job's objects go and how often they are tried, and which SEG variant this one gets."""

    model_config = _SNAPSHOT

    name: str
    ae_title: str
    host: str
    port: int
    timeout_seconds: float
    retry_backoff_seconds: float
    seg_type: str  # LABELMAP only where the destination accepts it, else BINARY (or the rule's type)
    # the defaults are those of jobs routed before deliveries retried by age (their max_attempts is dropped)
    max_age_hours: float = 24.0
    retry_max_backoff_seconds: float = 900.0
    tls: TlsSnapshot | None = None  # None: plain TCP (and every job routed before TLS existed)
    # SEG transfer syntaxes offered, preferred first (keywords); () uncompressed only, as jobs routed before them
    seg_transfer_syntaxes: tuple[str, ...] = ()
    accepts_labelmap_seg: bool = False

    @model_validator(mode="before")
    @classmethod
    def _drop_max_attempts(cls, data: Any) -> Any:
        """Snapshots of earlier versions name max_attempts; a delivery now retries by age."""
        if isinstance(data, dict) and "max_attempts" in data:
            return {k: v for k, v in data.items() if k != "max_attempts"}
        return data

    @property
    def tls_settings(self) -> DestinationTls:
        """The TLS table as the sender takes it: the routed files and choices."""
        if self.tls is None:
            return DestinationTls()
        t = self.tls
        return DestinationTls(enabled=True, cert_file=Path(t.cert_file) if t.cert_file else None,
                              key_file=Path(t.key_file) if t.key_file else None,
                              ca_file=Path(t.ca_file) if t.ca_file else None, min_version=t.min_version,
                              check_hostname=t.check_hostname)


class RoutedAction(BaseModel):
    """Everything a job does, decided at completion time from one rule and the settings then."""

    model_config = _SNAPSHOT

    rule_name: str
    model_id: str
    model_version: str = ""  # empty: whichever version the worker loads (it records it on the job)
    outputs: tuple[str, ...]  # the template's kinds when it names some, else the rule's
    template: TemplateSnapshot | None = None
    structures: tuple[StructureSnapshot, ...] = ()  # the department's [[structures]] when it was routed
    seg_type: str  # the template's SEG type when it names one, else the rule's
    seg_max_segments: int = 0
    destinations: tuple[RoutedDestination, ...] = ()
    # "required": the worker writes the outputs and holds them for a person's decision (dicom_node.review);
    # jobs routed before review existed send at once
    review: str = "none"
    reviewers: tuple[str, ...] = ()

    @property
    def review_required(self) -> bool:
        return self.review == "required"

    @property
    def seg_types(self) -> tuple[str, ...]:
        """The SEG variants to write: every one a destination gets, the requested one first."""
        return variants_to_write(self.seg_type, [d.seg_type for d in self.destinations])

    def catalogue(self) -> Catalogue | None:
        """The catalogue the job's structures resolve in: the built-in one (None) or it and the snapshot's own."""
        return extend_catalogue(s.info() for s in self.structures) if self.structures else None

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> RoutedAction:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise RoutingError(f"the job's routed action cannot be read: {exc}") from exc


def routed_action(rule: RoutingRule, settings: Settings) -> RoutedAction:
    """Resolve ``rule`` against ``settings``: the values are copied, nothing refers back to them."""
    configured = settings.templates.get(rule.template) if rule.template else None
    if rule.template and configured is None:
        raise ConfigError(f"routing rule {rule.name!r}: template {rule.template!r} is not configured")
    template = None if configured is None else TemplateSnapshot(
        name=configured.name, map=dict(configured.map), include=tuple(configured.include),
        rename=dict(configured.rename), merge={k: tuple(v) for k, v in configured.merge.items()},
        outputs=tuple(configured.outputs), seg_type=configured.seg_type)
    seg_type = resolve_seg_type(rule, configured)
    destinations = []
    for name in rule.destinations:
        dest = settings.destinations.get(name)
        if dest is None:
            raise ConfigError(f"routing rule {rule.name!r}: destination {name!r} is not configured")
        destinations.append(RoutedDestination(
            name=dest.name, ae_title=dest.ae_title, host=dest.host, port=dest.port,
            timeout_seconds=dest.timeout_seconds, retry_backoff_seconds=dest.retry_backoff_seconds,
            max_age_hours=dest.max_age_hours, retry_max_backoff_seconds=dest.retry_max_backoff_seconds,
            seg_type=seg_type_for(seg_type, dest.accepts_labelmap_seg), tls=TlsSnapshot.of(dest.tls),
            accepts_labelmap_seg=dest.accepts_labelmap_seg, seg_transfer_syntaxes=dest.seg_transfer_syntaxes))
    # rules name a model by id only today; a pinned version would be copied here
    return RoutedAction(rule_name=rule.name, model_id=rule.model,
                        outputs=tuple(template.outputs if template and template.outputs else rule.outputs),
                        template=template, seg_type=seg_type, seg_max_segments=rule.seg_max_segments,
                        structures=tuple(StructureSnapshot.of(s.info()) for s in settings.structures.values()),
                        destinations=tuple(destinations), review=rule.review, reviewers=tuple(rule.reviewers))


def route(settings: Settings, series: SeriesAttributes) -> list[RoutedAction]:
    """One action per matching rule, in the order of the config."""
    return [routed_action(rule, settings) for rule in select_rules(settings.rules, series)]
