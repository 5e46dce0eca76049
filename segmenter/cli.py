"""Command line: ``segmenter run INPUT --out DIR [--model builtin]``, and
``segmenter models import NNUNET_FOLDER --id ID | list [--json] | check ID`` (models in ``--models-dir``;
what ``list`` and ``check`` read of each model: :mod:`segmenter.inventory`).

INPUT is a NIfTI/NRRD/MHA file or a folder holding one DICOM series. The output folder gets
``labels.nii.gz`` (the label map on the input grid), ``masks/<name>.nii.gz`` for containing
structures such as External, and ``structures.json`` (label id -> catalogue name with colour,
codes and RT ROI type, readable by :func:`segmenter.core.catalogue.load_label_mapping`).
Progress goes to stderr through logging; errors end in one line and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from segmenter import __version__
from segmenter.core.catalogue import StructureInfo, lookup
from segmenter.core.errors import SegmenterError
from segmenter.core.result import SegmentationResult
from segmenter.core.volume import Volume
from segmenter.models.manifest import MANIFEST_NAME, Manifest
from segmenter.registry import get_engine
from segmenter.training.cli import add_training_commands

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
DEFAULT_MODELS_DIR = Path("var/models")


def _describe(info: StructureInfo) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "structure": info.name,
        "colour": list(info.colour),
        "rt_type": info.rt_type,
        "category": [info.category.value, info.category.scheme, info.category.meaning],
        "type": [info.type.value, info.type.scheme, info.type.meaning],
    }
    if info.modifier is not None:
        entry["modifier"] = [info.modifier.value, info.modifier.scheme, info.modifier.meaning]
    return entry


def write_result(result: SegmentationResult, out: Path, source: str, seconds: float) -> None:
    """Write the label map, the extra masks and structures.json into ``out``."""
    try:
        (out / "masks").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SegmenterError(f"cannot create output folder {out}: {exc}") from exc
    result.labels.write(out / "labels.nii.gz")
    labels: dict[str, Any] = {}
    for structure in result.structures:
        labels[str(structure.label)] = {**_describe(lookup(structure.name)),
                                        "voxels": int(np.count_nonzero(result.labels.array == structure.label))}
    masks: dict[str, Any] = {}
    for name, mask in result.extra_masks.items():
        relative = f"masks/{name}.nii.gz"
        result.labels.with_array(mask.astype(np.uint8)).write(out / relative)
        masks[name] = {**_describe(lookup(name)), "file": relative, "voxels": int(np.count_nonzero(mask))}
    document = {
        "model_id": result.model_id,
        "model_version": result.model_version,
        "input": source,
        "seconds": round(seconds, 2),
        "label_map": "labels.nii.gz",
        "labels": labels,
        "extra_masks": masks,
    }
    try:
        (out / "structures.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise SegmenterError(f"cannot write {out / 'structures.json'}: {exc}") from exc


def one_line(exc: BaseException) -> str:
    """A one-line message: SimpleITK errors carry a C++ source location first and the reason last."""
    text = str(exc) or type(exc).__name__
    if "sitk::ERROR:" in text:
        head = text.split(":", 1)[0] if text.startswith("cannot read ") else ""
        reason = text.rsplit("sitk::ERROR:", 1)[1].strip()
        return f"{head}: {reason}" if head else reason
    return " ".join(text.split())


def _run(args: argparse.Namespace) -> int:
    if args.threads < 0 or args.memory_budget_gb <= 0:
        raise SegmenterError("--threads must be >= 0 and --memory-budget-gb > 0")
    engine = get_engine(args.model, Path(args.models_dir), args.device, threads=args.threads,
                        memory_budget_bytes=int(args.memory_budget_gb * 1024**3))
    source = Path(args.input)
    if not source.exists():
        raise SegmenterError(f"input {source} does not exist")
    logger.info("reading %s", source)
    volume = Volume.read(source)
    logger.info("volume %s, spacing %s mm; running %s %s", "x".join(map(str, volume.shape)),
                tuple(round(s, 3) for s in volume.spacing), engine.model_id, engine.version)
    started = time.perf_counter()
    result = engine.segment(volume)
    seconds = time.perf_counter() - started
    out = Path(args.out)
    write_result(result, out, str(source), seconds)
    logger.info("wrote %s (%s) in %.1f s", out, ", ".join(result.names), seconds)
    return EXIT_OK


def _models_import(args: argparse.Namespace) -> int:
    from segmenter.core.catalogue import load_label_mapping
    from segmenter.nnunet.importer import import_nnunet

    labels = load_label_mapping(Path(args.labels)) if args.labels else None
    manifest = import_nnunet(Path(args.folder), args.id, Path(args.models_dir), version=args.model_version,
                             configuration=args.configuration, tile_step=args.tile_step,
                             mirroring=not args.no_mirroring, labels=labels,
                             folds=args.folds.split(",") if args.folds else None, merge=args.merge)
    unmapped = sum(1 for p in manifest.parts for v in p.labels.values() if v is None)
    print(f"{manifest.id} {manifest.version}: {len(manifest.parts)} part(s), {len(manifest.structures())} "
          f"structures, {unmapped} unmapped label(s) -> {Path(args.models_dir) / manifest.id}")
    return EXIT_OK


def _models_list(args: argparse.Namespace) -> int:
    from segmenter.inventory import describe, human_bytes, human_count
    from segmenter.registry import manifests

    rows: list[dict[str, Any]] = [{"id": "builtin", "kind": "builtin", "description": "built-in classical segmenter",
                                   "size_bytes": 0, "parameters": 0, "parts": []}]
    if not args.json:
        print("builtin\tbuilt-in classical segmenter")
    for m in manifests(Path(args.models_dir)):
        row: dict[str, Any] = {"id": m.id, "version": m.version, "kind": m.kind}
        try:  # one bad model must not hide the others
            contents = _contents(m)
            info = describe(m)
            row.update(contents=contents.replace("\t", ", "), **info.to_json())
            label = "part " if m.kind == "nnunet_v2" else ""
            parts = ", ".join(f"{label}{p.name} {human_count(p.parameters)}"
                              + (f" x {p.folds} folds" if p.folds > 1 else "") for p in info.parts)
            text = (f"{contents}\t{human_bytes(info.size_bytes)}"
                    + (f" (+{human_bytes(info.archived_bytes)} in versions/)" if info.archived_bytes else "")
                    + f"\t{human_count(info.parameters)} parameters ({parts})")
        except (SegmenterError, OSError, ValueError) as exc:
            row["error"] = one_line(exc)
            text = f"cannot be described: {exc}"
        rows.append(row)
        if not args.json:
            print(f"{m.id}\t{m.version}\t{m.kind}\t{text}")
    if args.json:
        print(json.dumps(rows, indent=1))
    return EXIT_OK


def _contents(manifest: Manifest) -> str:
    """What a model is made of, by kind: nnU-Net parts, heads, or the nodes of a SALT tree."""
    folder = manifest.base_dir
    if manifest.kind == "multihead" and folder is not None:
        from segmenter.multihead.spec import read_spec

        spec = read_spec(folder)
        names = {name for head in spec.heads for name in head.structures}
        return f"{len(spec.heads)} head(s): {', '.join(h.name for h in spec.heads)}\t{len(names)} structures"
    if manifest.kind == "salt_torchscript" and folder is not None:
        from segmenter.multihead.salt_torchscript import parse_salt_spec

        salt = parse_salt_spec(json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8")))
        return f"label tree of {len(salt.nodes)} nodes (TorchScript)\t{len(set(salt.structures.values()))} structures"
    return f"{len(manifest.parts)} part(s)\t{len(manifest.structures())} structures"


def _models_check(args: argparse.Namespace) -> int:
    from segmenter.inventory import check_model

    report = check_model(Path(args.models_dir) / args.id)
    m = report.manifest
    archived = f"; archived version(s) {', '.join(report.archived)} included" if report.archived else ""
    print(f"{m.id} {m.version}: ok ({m.kind}, {len(report.files)} weight file(s) verified by SHA-256{archived})")
    return EXIT_OK


def _model_help(models_dir: Path) -> str:
    """``run --model``'s help: the models registered in ``models_dir`` (with their heads) and the head syntax."""
    from segmenter.registry import known_ids, manifests

    names = known_ids()  # the built-in ids
    try:
        for m in manifests(models_dir):
            names.append(m.id)
            if m.kind == "multihead" and m.base_dir is not None:
                # the head names from the JSON itself: parsing the spec would import torch for every command
                raw = json.loads((m.base_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
                heads = [str(h.get("name")) for h in raw.get("multihead", {}).get("heads", [])]
                names[-1] += f" (heads: {'+'.join(heads)})"
    except (SegmenterError, OSError, ValueError, AttributeError) as exc:  # help must print with a broken model
        names.append(f"... (cannot read {models_dir}: {one_line(exc)})")
    return (f"model id (default builtin): {', '.join(names)} (built in, then registered in {models_dir}). "
            "ID:head1+head2 runs only those heads of a multi-head model. See 'segmenter models list'")


def build_parser(models_dir: Path = DEFAULT_MODELS_DIR) -> argparse.ArgumentParser:
    """The parser; ``models_dir`` is only where ``run --help`` looks for the models it lists."""
    parser = argparse.ArgumentParser(prog="segmenter", description="Segment a CT volume with a registered model.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="segment INPUT and write the results into --out")
    run.add_argument("input", help="NIfTI/NRRD/MHA file or a folder with one DICOM series")
    run.add_argument("--out", required=True, help="output folder (created if missing)")
    run.add_argument("--model", default="builtin", help=_model_help(models_dir))
    run.add_argument("--models-dir", default="var/models", help="registered models (default var/models)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (learned models)")
    run.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    run.add_argument("--memory-budget-gb", type=float, default=8.0,
                     help="host memory for the whole-image logits: above a quarter of it the export "
                          "runs slab by slab (default 8)")
    run.set_defaults(handler=_run)
    models = sub.add_parser("models", help="register and inspect models").add_subparsers(dest="action",
                                                                                          required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", default="var/models", help="registered models (default var/models)")
    imp = models.add_parser("import", parents=[common], help="register an nnU-Net v2 trained-model folder")
    imp.add_argument("folder", help="nnU-Net trained-model folder, or a folder of several (one part each)")
    imp.add_argument("--id", required=True, help="model id for routing rules")
    imp.add_argument("--model-version", default="1", help="version recorded with every result")
    imp.add_argument("--configuration", help="nnU-Net configuration (default: from the folder name)")
    imp.add_argument("--folds", help="comma-separated folds (default: all present)")
    imp.add_argument("--tile-step", type=float, default=0.5, help="sliding-window step (TotalSegmentator: 0.8)")
    imp.add_argument("--no-mirroring", action="store_true", help="no test-time mirroring")
    imp.add_argument("--labels", help="label mapping JSON (label id -> catalogue name)")
    imp.add_argument("--merge", default="last_wins", choices=["last_wins", "first_wins"])
    imp.set_defaults(handler=_models_import)
    listing = models.add_parser("list", parents=[common], help="list registered models: contents, size on disk, "
                                                                "parameters per part or head")
    listing.add_argument("--json", action="store_true", help="one JSON list instead of the table")
    listing.set_defaults(handler=_models_list)
    chk = models.add_parser("check", parents=[common], help="verify the SHA-256 of every weight file of a model "
                                                            "(and of its archived versions)")
    chk.add_argument("id")
    chk.set_defaults(handler=_models_check)
    add_training_commands(sub)  # train, add-head, prune (multi-head models)
    return parser


def _models_dir_argument(argv: Sequence[str] | None) -> Path:
    """--models-dir as given on the command line, read before the full parse (for ``run --help``)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    known, _ = early.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    return Path(known.models_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(_models_dir_argument(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help, --version and usage errors
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # ITK prints its own multi-line warnings (e.g. "No Series can be found") to stderr; the
    # errors that matter reach the user as one logged line instead.
    sitk.ProcessObject.SetGlobalWarningDisplay(args.verbose)
    try:
        return int(args.handler(args))
    except SegmenterError as exc:
        logger.error("%s", one_line(exc))
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
