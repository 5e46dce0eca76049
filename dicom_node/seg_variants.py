"""Which SEG variant each destination gets: the rule's (or template's) type, LABELMAP falling back. Pure.

The Label Map Segmentation Storage class (1.2.840.10008.5.1.4.1.1.66.7) is new; dcmtk, dciodvfy and
dcmqi do not know it yet. A destination configured without ``accepts_labelmap_seg`` gets a BINARY SEG
of the same structures instead. Routing makes this choice once, when a series is complete
(``dicom_node.routing``), and the job stores it; the worker writes :func:`variants_to_write`
and gives each destination only its own objects (:func:`objects_for_variant`): the SEG of its variant
and the SR that refers to it (one SR is written per SEG variant); other kinds go to every destination.
It lives apart from ``dicom_node.outputs`` so that the listener, which routes, loads no writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from dicom_node.errors import OutputError
from dicom_node.settings import SEG_TYPES, RoutingRule, Template


def resolve_seg_type(rule: RoutingRule, template: Template | None) -> str:
    """The template's SEG type when it names one, else the rule's."""
    seg_type = (template.seg_type if template is not None and template.seg_type else rule.seg_type).upper()
    if seg_type not in SEG_TYPES:
        raise OutputError(f"rule {rule.name!r}: SEG type {seg_type!r} is not one of {', '.join(SEG_TYPES)}")
    return seg_type


def seg_type_for(seg_type: str, accepts_labelmap: bool) -> str:
    """The SEG type a destination receives: LABELMAP only where it accepts it, else BINARY."""
    return "BINARY" if seg_type == "LABELMAP" and not accepts_labelmap else seg_type


def variants_to_write(seg_type: str, variants: Sequence[str]) -> tuple[str, ...]:
    """Every SEG variant the destinations get, the requested one first (it alone if none is listed)."""
    return tuple(sorted(set(variants) or {seg_type}, key=lambda t: (t != seg_type, t)))


class _Written(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def seg_type(self) -> str: ...


W = TypeVar("W", bound=_Written)


def objects_for_variant(objects: Sequence[W], variant: str) -> list[W]:
    """The written objects a destination receiving the ``variant`` SEG gets: the SEG instances of that
    type and the SR referring to them, and every object tied to no SEG variant (RTSTRUCT, PREVIEW,
    an SR on the CT alone)."""
    chosen = [o for o in objects if o.seg_type in ("", variant)]
    for kind in ("SEG", "SR"):
        tied = sorted({o.seg_type for o in objects if o.kind == kind and o.seg_type})
        if tied and not any(o.kind == kind and o.seg_type == variant for o in chosen):
            raise OutputError(f"no {variant} {kind} was written for a destination that needs it (written: {tied})")
    return chosen
