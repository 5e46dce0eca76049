"""Output templates: which structures a destination gets, under which names, merged how, as which objects. Pure.

A template (``[[templates]]`` in the config, referenced by a routing rule's ``template = "name"``) is
applied between segmentation and writing:

0. **map**: ``{ Femur_L = "Femur_Head_L", Prostate = "Prostate_Dept" }`` gives a model's structure the
   site's structure (a catalogue or ``[[structures]]`` entry: its codes and colour are used). The config
   check makes sure the sources are what models produce and the targets are known structures;
   ``dicom-node check-config`` also checks each rule's model produces the sources.
1. **merge**: ``Lung_L = ["Lung_LUL", "Lung_LLL"]`` unites source structures into one catalogue
   structure (its codes and colour are used); the sources disappear.
2. **include**: only these structures (after merging) go out; absent means all.
3. **rename**: ``{ SpinalCord = "Cord" }`` sets the ROI Name / Segment Label a site expects; codes
   stay those of the catalogue structure, so the meaning is never lost.
4. **outputs**: the object kinds (SEG, RTSTRUCT, SR, PREVIEW) replace the rule's when given.

Structures a template names but the model did not produce are skipped with a log line (a template
may serve several models); a template that leaves nothing is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from dicom_node.errors import OutputError
from dicom_node.settings import Template
from segmenter.core.catalogue import Catalogue
from segmenter.core.result import LabelledStructure, SegmentationResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputNaming:
    """How the writers name structures: catalogue name -> site name, the template that did it, and the
    catalogue the names resolve in (the node's, with its department structures; None: the built-in one)."""

    template_name: str = ""
    display_names: dict[str, str] = field(default_factory=dict)
    catalogue: Catalogue | None = None

    def display(self, name: str) -> str:
        return self.display_names.get(name, name)


@dataclass(frozen=True)
class TemplatedResult:
    result: SegmentationResult
    naming: OutputNaming
    outputs: tuple[str, ...]


def _mapped(result: SegmentationResult, template: Template) -> SegmentationResult:
    """``result`` with the template's map applied: each source structure renamed to its target."""
    if not template.map:
        return result
    produced = set(result.names)
    for source in sorted(set(template.map) - produced):
        log.info("template %s: map %s: not produced by %s", template.name, source, result.model_id)
    clashes = sorted(t for s, t in template.map.items() if s in produced and t in produced and t not in template.map)
    if clashes:
        raise OutputError(f"template {template.name!r}: map target(s) {', '.join(clashes)} are also produced by model "
                          f"{result.model_id!r}: the output would hold two structures of one name")
    structures = tuple(LabelledStructure(s.label, template.map.get(s.name, s.name)) for s in result.structures)
    extra = {template.map.get(name, name): mask for name, mask in result.extra_masks.items()}
    return SegmentationResult(result.labels, structures, result.model_id, result.model_version, extra)


def apply_template(result: SegmentationResult, template: Template | None,
                   default_outputs: tuple[str, ...], catalogue: Catalogue | None = None) -> TemplatedResult:
    """``result`` with the template's map, merges, selection and names applied (a new result; input untouched).

    ``catalogue``: the node's (built-in + department structures), handed to the writers in the naming."""
    if template is None:
        return TemplatedResult(result, OutputNaming(catalogue=catalogue), default_outputs)
    result = _mapped(result, template)
    labels = result.labels.array
    produced = set(result.names)
    structures: list[LabelledStructure] = []
    extra: dict[str, np.ndarray] = {}
    top = int(labels.max()) if labels.size else 0
    described = {s.label for s in result.structures}
    undescribed = sorted(set(np.flatnonzero(np.bincount(labels.ravel())).tolist()) - described - {0}) if top else []
    if undescribed:
        raise OutputError(f"label map: value(s) {undescribed} have no structure in SegmentationResult.structures")
    lut = np.arange(max([top, *described]) + 1, dtype=np.int64)
    merged_sources: set[str] = set()
    next_label = int(lut.size)
    for target, sources in template.merge.items():
        present = [s for s in sources if s in produced]
        missing = [s for s in sources if s not in produced]
        if missing:
            log.info("template %s: merge into %s: %s not produced by %s", template.name, target,
                     ", ".join(missing), result.model_id)
        if not present:
            continue
        merged_sources.update(present)
        from_map = [s for s in result.structures if s.name in present]
        from_masks = [name for name in present if name in result.extra_masks]
        if from_masks:  # containing structures stay masks: the union is a mask too
            mask = np.zeros(labels.shape, dtype=bool)
            for name in present:
                mask |= result.mask(name)
            extra[target] = mask
            continue
        for s in from_map:
            lut[s.label] = next_label
        structures.append(LabelledStructure(next_label, target))
        next_label += 1
    for s in result.structures:
        if s.name not in merged_sources:
            structures.append(s)
    for name, mask in result.extra_masks.items():
        if name not in merged_sources:
            extra[name] = mask
    if template.include:
        keep = set(template.include)
        for name in sorted(keep - {s.name for s in structures} - set(extra)):
            log.info("template %s: %s not produced by %s: skipped", template.name, name, result.model_id)
        structures = [s for s in structures if s.name in keep]
        extra = {name: mask for name, mask in extra.items() if name in keep}
    if not structures and not extra:
        raise OutputError(f"template {template.name!r}: no structure of model {result.model_id!r} is left to write")
    kept_labels = {s.label for s in structures}
    dtype = np.uint8 if next_label <= 256 else np.uint16
    final = np.array([v if v in kept_labels else 0 for v in lut.tolist()], dtype=dtype)
    new_labels = final[labels]
    new_result = SegmentationResult(result.labels.with_array(new_labels),
                                    tuple(sorted(structures, key=lambda s: s.label)),
                                    result.model_id, result.model_version, extra)
    naming = OutputNaming(template.name, {k: v for k, v in template.rename.items()
                                          if k in {s.name for s in structures} | set(extra)}, catalogue)
    return TemplatedResult(new_result, naming, template.outputs or default_outputs)
