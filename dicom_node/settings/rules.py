"""What is made for whom: [[routing.rules]] (which series, which model, which destinations) and [[templates]].

Checks that need other tables (a rule naming a destination or template, unique names) are in
:mod:`dicom_node.settings.crosschecks`; here each table is checked on its own.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field, StrictBool, StrictStr, field_validator
from pydantic.dataclasses import dataclass

from dicom_node.settings.values import (
    DEFAULT_OUTPUT_KINDS,
    MATCH_KEYWORDS,
    Count,
    MatchKeyword,
    Name,
    OutputKind,
    Reviewer,
    ReviewMode,
    RoiName,
    SegType,
    SegTypeOrEmpty,
    StructureName,
    problem,
)

TABLE = ConfigDict(extra="forbid")


def _not_empty(names: tuple[str, ...]) -> tuple[str, ...]:
    if not names:
        raise problem("must be a non-empty list of structure names")
    return names


MergeSources = Annotated[tuple[StructureName, ...], Field(json_schema_extra={"minItems": 1}),
                         AfterValidator(_not_empty)]


@dataclass(frozen=True, config=TABLE)
class Template:
    """[[templates]]: per-target output template (see ``dicom_node.templates``): map, merge, include, rename, outputs.

    Structure names are checked against the catalogue the node runs with (built-in + [[structures]]) by
    :func:`dicom_node.settings.structures.template_structure_problems`, where the whole config is known."""

    name: Name = Field(description="name a routing rule's template key uses; unique")
    map: dict[StructureName, StructureName] = Field(
        default_factory=dict, description="model's name -> the site's structure (catalogue or [[structures]]): "
                                          "the site's codes and colour are used; applied first")
    include: tuple[StructureName, ...] = Field(
        default=(), description="catalogue names after merging; empty = everything produced")
    rename: dict[StructureName, RoiName] = Field(
        default_factory=dict, description="catalogue name -> ROI name at this site")
    merge: dict[StructureName, MergeSources] = Field(
        default_factory=dict, description="catalogue target -> the structures merged into it")
    outputs: tuple[OutputKind, ...] = Field(
        default=(), description="object kinds; empty = the routing rule's outputs")
    seg_type: SegTypeOrEmpty = Field(
        default="", description="BINARY, LABELMAP or FRACTIONAL; empty = the routing rule's")

    @field_validator("rename")
    @classmethod
    def _one_structure_per_name(cls, rename: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        for source, target in rename.items():
            if target in seen:
                raise problem(f"{seen[target]} and {source} would get the same name {target!r}")
            seen[target] = source
        return rename

    @field_validator("map")
    @classmethod
    def _one_source_per_target(cls, mapping: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        for source, target in mapping.items():
            if target in seen:
                raise problem(f"{seen[target]} and {source} both map to {target}; use merge to unite structures")
            seen[target] = source
        return mapping

    @field_validator("merge")
    @classmethod
    def _each_source_merged_once(cls, merge: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        into: dict[str, str] = {}
        for target, sources in merge.items():
            twice = sorted(s for s in set(sources) if s in into)
            if twice:
                raise problem(f"{', '.join(twice)} already merged into another structure "
                              f"({', '.join(into[s] for s in twice)}), not also into {target}")
            into.update(dict.fromkeys(sources, target))
        return merge


@dataclass(frozen=True, config=TABLE)
class RoutingRule:
    """[[routing.rules]]: a complete series that matches gets one job: model, outputs, destinations."""

    name: Name = Field(description="name of the rule, recorded on its jobs; unique")
    model: Name = Field(description="id of a registered model, or builtin; id:head1+head2 runs some heads only")
    destinations: tuple[StrictStr, ...] = Field(description="names of [[destinations]] the outputs are sent to")
    outputs: tuple[OutputKind, ...] = Field(
        default=DEFAULT_OUTPUT_KINDS, description="object kinds: SEG, RTSTRUCT, SR, PREVIEW")
    match: dict[MatchKeyword, StrictStr] = Field(
        default_factory=dict, description="DICOM keyword -> case-insensitive shell pattern; empty = every CT series",
        json_schema_extra={"propertyNames": {"enum": list(MATCH_KEYWORDS)}})
    template: StrictStr = Field(
        default="", description="name of a [[templates]] entry; empty = all structures, catalogue names")
    seg_type: SegType = Field(
        default="BINARY", description="BINARY, LABELMAP or FRACTIONAL (see dicom_node.outputs.seg)")
    seg_max_segments: Count = Field(
        default=0, description="> 0: one SEG instance per group of at most this many segments")
    fallback: StrictBool = Field(
        default=False, description="true: this rule is tried only when no other rule matched the series")
    review: ReviewMode = Field(
        default="none", description="none: outputs are sent at once; required: held until a person approves them")
    reviewers: tuple[Reviewer, ...] = Field(
        default=(), description="web admin user names or e-mail addresses told that a job waits for review")

    @field_validator("reviewers")
    @classmethod
    def _each_reviewer_once(cls, reviewers: tuple[str, ...]) -> tuple[str, ...]:
        twice = sorted({r for r in reviewers if reviewers.count(r) > 1})
        if twice:
            raise problem(f"{', '.join(twice)} named more than once")
        return reviewers


@dataclass(frozen=True, config=TABLE)
class RoutingSection:
    """[routing]: the rules, evaluated in order; every matching rule makes a job (fallback rules: only if none)."""

    rules: tuple[RoutingRule, ...] = Field(default=(), description="the [[routing.rules]] tables")
