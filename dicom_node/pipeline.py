"""The one-screen flow of a job: load series -> volume -> segment -> write SEG, RTSTRUCT, SR, PREVIEW.

Each stage is a named function with a typed input and output; the worker records progress
between them. Nothing here touches the network or the job table.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from dicom_node.errors import OutputError
from dicom_node.outputs.common import write_dataset
from dicom_node.outputs.preview import build_preview
from dicom_node.outputs.revision import Revision, mark_revision
from dicom_node.outputs.rtstruct.approval import Approval
from dicom_node.outputs.rtstruct.builder import build_rtstruct
from dicom_node.outputs.seg import build_seg_instances
from dicom_node.outputs.sr import build_sr
from dicom_node.private_files import PRIVATE_FILE_MODE, make_private_dirs, write_private_bytes
from dicom_node.series_io import CtSeries, load_series
from dicom_node.settings import OUTPUT_KINDS, IdentitySettings, Template
from dicom_node.templates import OutputNaming, TemplatedResult, apply_template
from segmenter.core.catalogue import Catalogue
from segmenter.core.result import SegmentationResult
from segmenter.core.volume import Volume
from segmenter.registry import Engine

log = logging.getLogger(__name__)

Saver = Callable[[Dataset, str, Path], None]  # saves one object of a kind (marking a revision first)
PREVIEW_PNG = "preview.png"  # the QA picture kept beside the objects (the PREVIEW kind sends it as SC)
# the label map kept beside a job's objects (keep_label_map); the review reads it back (dicom_node.review.labels)
LABELS_FILE = "labels.nii.gz"
STRUCTURES_FILE = "structures.json"


def mask_file(name: str) -> str:
    """The file of a containing structure's mask (one that is not in the label map)."""
    return f"mask_{name}.nii.gz"


@dataclass(frozen=True)
class JobInput:
    job_id: int
    paths: tuple[Path, ...]
    outputs: tuple[str, ...]  # SEG, RTSTRUCT, SR, PREVIEW
    out_dir: Path
    template: Template | None = None  # the routed action's output template (None: all, catalogue names)
    seg_types: tuple[str, ...] = ("BINARY",)  # SEG variants to write (routing.RoutedAction.seg_types)
    seg_max_segments: int = 0  # > 0: SEG instances of at most this many segments
    revision: Revision | None = None  # a new version of delivered outputs: what each object replaces
    catalogue: Catalogue | None = None  # the routed department structures with the built-in ones (None: built-in)


@dataclass(frozen=True)
class WrittenObject:
    kind: str
    path: Path
    sop_uid: str
    sop_class_uid: str
    seg_type: str = ""  # BINARY, LABELMAP or FRACTIONAL: of a SEG, or of the SEG an SR refers to


@dataclass
class PipelineOutput:
    objects: list[WrittenObject]
    result: SegmentationResult
    timings: dict[str, float] = field(default_factory=dict)


def load_stage(paths: Sequence[Path]) -> CtSeries:
    return load_series(list(paths))


def segment_stage(series: CtSeries, engine: Engine) -> SegmentationResult:
    return engine.segment(series.volume)


def template_stage(result: SegmentationResult, template: Template | None,
                   outputs: tuple[str, ...], catalogue: Catalogue | None = None) -> TemplatedResult:
    return apply_template(result, template, outputs, catalogue)


def write_stage(series: CtSeries, result: SegmentationResult, kinds: Sequence[str],
                identity: IdentitySettings, out_dir: Path, naming: OutputNaming | None = None,
                seg_types: Sequence[str] = ("BINARY",), seg_max_segments: int = 0,
                revision: Revision | None = None, approval: Approval | None = None) -> list[WrittenObject]:
    """Build and save each kind: the one writer of the objects, for jobs and ``dicom-node write``
    (seg.dcm, rtstruct.dcm, sr.dcm, preview.dcm and preview.png beside it).

    With SEG and SR, one SR is written per SEG variant (sr.dcm for the BINARY SEG, sr-labelmap.dcm
    for the LABELMAP one, ...), each referring to its own variant's instances: a TID 1411 group
    references one segment, and a destination receives one variant only
    (``seg_variants.objects_for_variant``), so every SR it gets resolves to a SEG it also gets.
    ``approval``: the RTSTRUCT is APPROVED by that reviewer (a reviewed job's objects written again)."""
    unknown = sorted(set(kinds) - set(OUTPUT_KINDS))
    if unknown:
        raise OutputError(f"output kinds must be some of {', '.join(OUTPUT_KINDS)}, got {list(kinds)}")
    segs: dict[str, list[Dataset]] = {}  # SEG type -> the instances written, for the SRs to refer to

    def save(ds: Dataset, kind: str, path: Path) -> None:
        if revision is not None:
            mark_revision(ds, kind, revision)
        write_dataset(ds, path)

    builders: dict[str, Callable[[], Dataset]] = {
        "RTSTRUCT": lambda: build_rtstruct(series, result, identity, naming=naming, approval=approval),
        "PREVIEW": lambda: build_preview(series, result, identity, naming=naming).save_png(out_dir / PREVIEW_PNG),
    }
    written = []
    make_private_dirs(out_dir)
    for kind in sorted(kinds, key=lambda k: k == "SR"):  # SR last: it refers to the SEG
        if kind == "SEG":
            written += _write_segs(series, result, identity, out_dir, naming, seg_types, seg_max_segments, segs,
                                   save)
        elif kind == "SR":
            written += _write_srs(series, result, identity, out_dir, naming, segs, save)
        else:
            ds = builders[kind]()
            path = out_dir / f"{kind.lower()}.dcm"
            save(ds, kind, path)
            written.append(WrittenObject(kind, path, str(ds.SOPInstanceUID), str(ds.SOPClassUID)))
    return written


def _stem(kind: str, seg_type: str) -> str:
    """seg / sr for BINARY (or no SEG), seg-labelmap / sr-labelmap ... for the other variants."""
    return kind if seg_type in ("", "BINARY") else f"{kind}-{seg_type.lower()}"


def _write_segs(series: CtSeries, result: SegmentationResult, identity: IdentitySettings, out_dir: Path,
                naming: OutputNaming | None, seg_types: Sequence[str], max_segments: int,
                segs: dict[str, list[Dataset]], save: Saver) -> list[WrittenObject]:
    """seg.dcm (BINARY), seg-labelmap.dcm, seg-fractional.dcm; further instances of a series -2, -3...

    The instances of every variant are put in ``segs`` under its type (what the SRs refer to)."""
    written = []
    for seg_type in seg_types:
        instances = build_seg_instances(series, result, identity, naming, seg_type, max_segments)
        segs[seg_type] = instances
        for number, ds in enumerate(instances, start=1):
            stem = _stem("seg", seg_type)
            path = out_dir / (f"{stem}.dcm" if number == 1 else f"{stem}-{number}.dcm")
            save(ds, "SEG", path)
            written.append(WrittenObject("SEG", path, str(ds.SOPInstanceUID), str(ds.SOPClassUID), seg_type))
    return written


def _write_srs(series: CtSeries, result: SegmentationResult, identity: IdentitySettings, out_dir: Path,
               naming: OutputNaming | None, segs: dict[str, list[Dataset]], save: Saver) -> list[WrittenObject]:
    """One SR per SEG variant written (see :func:`write_stage`), or one SR on the CT alone."""
    written = []
    for seg_type, instances in (segs or {"": []}).items():
        ds = build_sr(series, result, identity, naming=naming, seg=instances or None)
        path = out_dir / f"{_stem('sr', seg_type)}.dcm"
        save(ds, "SR", path)
        written.append(WrittenObject("SR", path, str(ds.SOPInstanceUID), str(ds.SOPClassUID), seg_type))
    return written


def keep_label_map(result: SegmentationResult, out_dir: Path) -> None:
    """Keep a job's label map beside its objects: QA and tests compare the objects against it."""
    make_private_dirs(out_dir)
    structures = {str(s.label): s.name for s in result.structures}
    try:
        _write_private_image(result.labels, out_dir / LABELS_FILE)
        for name, mask in result.extra_masks.items():
            _write_private_image(result.labels.with_array(mask.astype("uint8")), out_dir / mask_file(name))
        write_private_bytes(out_dir / STRUCTURES_FILE, json.dumps(
            {"model_id": result.model_id, "model_version": result.model_version, "labels": structures,
             "extra_masks": sorted(result.extra_masks)}, indent=2).encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write the label map files in {out_dir}: {exc.strerror or exc}") from exc


def _write_private_image(image: Volume, path: Path) -> None:
    image.write(path)
    # the image writer creates the file with the umask's mode; the folder is 0700 already, so no
    # other user could reach the file in between
    os.chmod(path, PRIVATE_FILE_MODE)


def run(job: JobInput, engine: Engine, identity: IdentitySettings,
        on_stage: Callable[[str], None] = lambda _stage: None) -> PipelineOutput:
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], object]) -> object:
        on_stage(name)
        start = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - start
        log.info("job %d: %s took %.2f s", job.job_id, name, timings[name])
        return value

    series: CtSeries = timed("load", lambda: load_stage(job.paths))  # type: ignore[assignment]
    result: SegmentationResult = timed("segment", lambda: segment_stage(series, engine))  # type: ignore[assignment]
    templated = template_stage(result, job.template, job.outputs, job.catalogue)

    def write() -> list[WrittenObject]:
        keep_label_map(templated.result, job.out_dir)
        return write_stage(series, templated.result, templated.outputs, identity, job.out_dir, templated.naming,
                           job.seg_types, job.seg_max_segments, job.revision)

    objects: list[WrittenObject] = timed("write", write)  # type: ignore[assignment]
    return PipelineOutput(objects=objects, result=result, timings=timings)
