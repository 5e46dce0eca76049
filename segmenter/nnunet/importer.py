"""``segmenter models import NNUNET_FOLDER --id ID``: write a manifest from an nnU-Net folder's own files.

The folder is a trained-model folder (``dataset.json``, ``plans.json``, ``fold_*/``) or a folder
holding several of them (one part each, in name order, e.g. TotalSegmentator's five ``total``
parts). Label names come from ``dataset.json`` and are mapped to catalogue structures: an explicit
mapping file first, then the ``source`` names of the built-in mappings (TotalSegmentator, SOARS),
then an exact or case-insensitive catalogue name; anything else is recorded as ``null`` (not
exported) and reported by ``models check``. Checksums are computed here and verified at every load.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

from segmenter.core.catalogue import load_catalogue
from segmenter.core.errors import ModelError
from segmenter.models.manifest import Manifest, NnUNetPart, sha256_file
from segmenter.nnunet.plans import parse_dataset, parse_plans, read_json

log = logging.getLogger(__name__)

BUILTIN_MAPPINGS = ("totalsegmentator_total", "soars_hn42", "cads")


def _source_aliases() -> dict[str, str]:
    """dataset label name (lower case) -> catalogue name, from the built-in mappings' ``source``."""
    out: dict[str, str] = {}
    for name in BUILTIN_MAPPINGS:
        res = resources.files("segmenter").joinpath(f"data/{name}.json")
        if not res.is_file():
            continue
        labels = json.loads(res.read_text(encoding="utf-8")).get("labels", {})
        for value in labels.values():
            if isinstance(value, dict) and value.get("source") and value.get("structure"):
                out.setdefault(str(value["source"]).lower(), str(value["structure"]))
    return out


def map_label_names(names: dict[int, str], explicit: dict[int, str] | None = None) -> dict[int, str | None]:
    catalogue = load_catalogue()
    lower = {n.lower(): n for n in catalogue}
    aliases = _source_aliases()
    out: dict[int, str | None] = {}
    for label, name in sorted(names.items()):
        if label == 0:
            continue
        if explicit and label in explicit:
            out[label] = explicit[label]
        elif name in catalogue:
            out[label] = name
        elif name.lower() in aliases:
            out[label] = aliases[name.lower()]
        elif name.lower() in lower:
            out[label] = lower[name.lower()]
        else:
            log.warning("label %d (%s) has no catalogue structure; it will not be exported", label, name)
            out[label] = None
    return out


def find_model_folders(folder: Path) -> list[Path]:
    if (folder / "plans.json").is_file():
        return [folder]
    found = sorted(p.parent for p in folder.glob("**/plans.json") if any(p.parent.glob("fold_*")))
    if not found:
        raise ModelError(f"{folder} holds no nnU-Net trained-model folder (plans.json + fold_*)")
    return found


def describe_part(folder: Path, configuration: str | None, checkpoint: str, tile_step: float, mirroring: bool,
                  explicit: dict[int, str] | None, folds: list[str] | None) -> NnUNetPart:
    plans = parse_plans(read_json(folder / "plans.json"))
    dataset = parse_dataset(read_json(folder / "dataset.json"))
    name = configuration or folder.name.rsplit("__", 1)[-1]
    plans.configuration(name)  # refuse what we cannot run, now rather than at the first job
    fold_names = folds or sorted(p.name.removeprefix("fold_") for p in folder.glob("fold_*")
                                 if (p / checkpoint).is_file())
    if not fold_names:
        raise ModelError(f"{folder}: no fold_*/{checkpoint}")
    rel = [f"fold_{f}/{checkpoint}" for f in fold_names]
    return NnUNetPart(
        folder=str(folder.resolve()), configuration=name, folds=tuple(fold_names), checkpoint=checkpoint,
        labels=map_label_names(dataset.labels, explicit),
        sha256={r: sha256_file(folder / r) for r in rel}, tile_step=tile_step, mirroring=mirroring,
    )


def import_nnunet(folder: Path, model_id: str, models_dir: Path, *, version: str = "1",
                  configuration: str | None = None, checkpoint: str = "checkpoint_final.pth", tile_step: float = 0.5,
                  mirroring: bool = True, labels: dict[int, str] | None = None, folds: list[str] | None = None,
                  merge: str = "last_wins", description: str = "") -> Manifest:
    if not model_id or "/" in model_id or model_id.startswith("."):
        raise ModelError(f"invalid model id {model_id!r}")
    parts = tuple(describe_part(f, configuration, checkpoint, tile_step, mirroring, labels, folds)
                  for f in find_model_folders(folder))
    manifest = Manifest(id=model_id, version=version, kind="nnunet_v2", parts=parts, merge=merge,
                        description=description or f"nnU-Net v2 model imported from {folder.name}",
                        base_dir=models_dir / model_id)
    manifest.write(models_dir / model_id)
    log.info("imported %s as %r: %d part(s), %d structures", folder, model_id, len(parts), len(manifest.structures()))
    return manifest
