"""The written objects each destination gets, by the SEG variant its routed action names.

Which variant a destination gets is decided once, when the series is routed
(:mod:`dicom_node.seg_variants`), and stored with the job. The worker writes every variant the job's
destinations need and gives each destination only its own (:func:`objects_for_variant`), with the SR
that refers to that variant (one SR is written per SEG variant, ``pipeline.write_stage``); other
object kinds go to every destination unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, TypeVar

from dicom_node.errors import OutputError

log = logging.getLogger(__name__)


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
