"""Model manifests: what a registered model is, where its weights lie and what their checksums are.

A manifest is ``<models_dir>/<id>/manifest.json``::

    {"id": "total", "version": "2.0.0", "kind": "nnunet_v2", "description": "...",
     "merge": "last_wins",
     "parts": [{"folder": "/models/Dataset291_.../nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres",
                "configuration": "3d_fullres", "folds": ["0"], "checkpoint": "checkpoint_final.pth",
                "tile_step": 0.8, "mirroring": false,
                "labels": {"1": "Spleen", "2": "Kidney_R", "7": null},
                "sha256": {"fold_0/checkpoint_final.pth": "9f86d0..."}}]}

``labels`` maps the part's own label ids (dataset.json) to catalogue structure names; ``null`` marks a
label the node does not export. A model with several parts (TotalSegmentator's ``total`` is five
nnU-Net models) is one model for routing: the parts run in order and their label maps merge by
``merge``: ``last_wins`` (default; TotalSegmentator's own rule: a later part's foreground overwrites
an earlier one's) or ``first_wins`` (a later part only fills voxels still background).
A relative ``folder`` is relative to the manifest's directory.

Model-level steps (CADS's reorientation, 1.5 mm resampling, fragment clean-up, head tasks cropped
around the brain another part found) are declared as ``"pre"``/``"post"`` lists and a part's
``"crop"``, and parts may carry a ``"name"`` (default: their index) for crops to refer to; see
``model_steps`` for the keys. Everything is validated here, at load: an unknown step or key is a
``ManifestError`` (a ``ValueError``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from segmenter.core.catalogue import load_catalogue
from segmenter.core.errors import ModelError
from segmenter.models.steps import (
    Crop,
    ManifestError,
    PostStep,
    PreStep,
    check_references,
    parse_crop,
    parse_post_step,
    parse_pre_step,
)

log = logging.getLogger(__name__)

# salt_torchscript: see segmenter.multihead.salt_torchscript
KINDS = ("builtin", "nnunet_v2", "multihead", "salt_torchscript")
MERGE_RULES = ("last_wins", "first_wins")
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class NnUNetPart:
    folder: str
    configuration: str
    folds: tuple[str, ...]
    checkpoint: str = "checkpoint_final.pth"
    labels: dict[int, str | None] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)  # path relative to folder -> hex digest
    tile_step: float = 0.5
    mirroring: bool = True  # use the checkpoint's allowed mirroring axes
    name: str = ""  # for crops of later parts to refer to; the part's index when not given
    crop: Crop | None = None  # run only around a structure an earlier part found

    def weight_files(self) -> list[str]:
        return [f"fold_{f}/{self.checkpoint}" for f in self.folds]


@dataclass(frozen=True)
class Manifest:
    id: str
    version: str
    kind: str
    parts: tuple[NnUNetPart, ...] = ()
    merge: str = "last_wins"
    description: str = ""
    pre: tuple[PreStep, ...] = ()  # model-level steps (model_steps)
    post: tuple[PostStep, ...] = ()
    base_dir: Path | None = None  # where the manifest was read from

    def __post_init__(self) -> None:
        # a part built without a name (nnunet_import) is named by its index, as when parsed
        named = tuple(p if p.name else replace(p, name=str(i)) for i, p in enumerate(self.parts))
        object.__setattr__(self, "parts", named)

    def folder(self, part: NnUNetPart) -> Path:
        path = Path(part.folder)
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        return path

    def structures(self) -> list[str]:
        """Catalogue names this model can produce, in merge order, without repeats."""
        seen: list[str] = []
        for part in self.parts:
            for _, name in sorted(part.labels.items()):
                if name is not None and name not in seen:
                    seen.append(name)
        return seen

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "version": self.version, "kind": self.kind, "description": self.description,
            "merge": self.merge, "pre": [s.to_json() for s in self.pre], "post": [s.to_json() for s in self.post],
            "parts": [{
                "name": p.name, "folder": p.folder, "configuration": p.configuration, "folds": list(p.folds),
                "checkpoint": p.checkpoint, "tile_step": p.tile_step, "mirroring": p.mirroring,
                "labels": {str(k): v for k, v in sorted(p.labels.items())},
                "sha256": dict(sorted(p.sha256.items())),
                **({"crop": p.crop.to_json()} if p.crop is not None else {}),
            } for p in self.parts],
        }

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path


def _require(raw: dict[str, Any], key: str, where: str) -> Any:
    if key not in raw:
        raise ManifestError(f"{where}: '{key}' is missing")
    return raw[key]


def _parse_part(raw: Any, where: str, index: int) -> NnUNetPart:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: must be a mapping")
    labels_raw = raw.get("labels") or {}
    if not isinstance(labels_raw, dict):
        raise ManifestError(f"{where}: 'labels' must map label ids to structure names")
    catalogue = load_catalogue()
    labels: dict[int, str | None] = {}
    for key, name in labels_raw.items():
        try:
            label = int(key)
        except ValueError:
            raise ManifestError(f"{where}: label {key!r} is not an integer") from None
        if label <= 0:
            raise ManifestError(f"{where}: label {label} must be positive (0 is background)")
        if name is not None and name not in catalogue:
            raise ManifestError(f"{where}: label {label}: {name!r} is not a catalogue structure")
        labels[label] = name
    step = raw.get("tile_step", 0.5)
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 1:
        raise ManifestError(f"{where}: tile_step must be a number in (0, 1] (a fraction of the patch; "
                            f"nnU-Net's default 0.5, TotalSegmentator's 0.8), got {step!r}")
    mirroring = raw.get("mirroring", True)
    if not isinstance(mirroring, bool):
        raise ManifestError(f"{where}: mirroring must be true or false, got {mirroring!r}")
    folds = raw.get("folds")
    if not isinstance(folds, list) or not folds:
        raise ManifestError(f"{where}: 'folds' must be a non-empty list")
    sha = raw.get("sha256") or {}
    if not isinstance(sha, dict):
        raise ManifestError(f"{where}: 'sha256' must map weight files to hex digests")
    name = raw.get("name", str(index))
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    return NnUNetPart(
        name=name,
        crop=parse_crop(raw["crop"], where) if raw.get("crop") is not None else None,
        folder=str(_require(raw, "folder", where)),
        configuration=str(_require(raw, "configuration", where)),
        folds=tuple(str(f) for f in folds),
        checkpoint=str(raw.get("checkpoint", "checkpoint_final.pth")),
        labels=labels,
        sha256={str(k): str(v).lower() for k, v in sha.items()},
        tile_step=float(step),
        mirroring=mirroring,
    )


def parse_manifest(raw: Any, base_dir: Path | None = None) -> Manifest:
    if not isinstance(raw, dict):
        raise ManifestError("manifest: must be a JSON object")
    mid = str(_require(raw, "id", "manifest"))
    where = f"manifest {mid!r}"
    kind = str(_require(raw, "kind", where))
    if kind not in KINDS:
        raise ManifestError(f"{where}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    merge = str(raw.get("merge", "last_wins"))
    if merge not in MERGE_RULES:
        raise ManifestError(f"{where}: unknown merge rule {merge!r} (known: {', '.join(MERGE_RULES)})")
    parts = tuple(_parse_part(p, f"{where} part {i}", i) for i, p in enumerate(raw.get("parts") or []))
    if kind == "nnunet_v2" and not parts:
        raise ManifestError(f"{where}: an nnunet_v2 model needs at least one part")
    pre = tuple(parse_pre_step(s, f"{where} pre[{i}]") for i, s in enumerate(_steps(raw, "pre", where)))
    post = tuple(parse_post_step(s, f"{where} post[{i}]") for i, s in enumerate(_steps(raw, "post", where)))
    if (pre or post or any(p.crop for p in parts)) and kind != "nnunet_v2":
        raise ManifestError(f"{where}: model-level steps are supported for nnunet_v2 models only, not {kind!r}")
    check_references([p.name for p in parts], [{n for n in p.labels.values() if n} for p in parts],
                     [p.crop for p in parts], post, where)
    return Manifest(id=mid, version=str(raw.get("version", "0")), kind=kind, parts=parts, merge=merge,
                    description=str(raw.get("description", "")), pre=pre, post=post, base_dir=base_dir)


def _steps(raw: dict[str, Any], key: str, where: str) -> list[Any]:
    steps = raw.get(key) or []
    if not isinstance(steps, list):
        raise ManifestError(f"{where}: '{key}' must be a list of steps")
    return steps


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"no {MANIFEST_NAME} in {directory}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    return parse_manifest(raw, directory)


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(block):
                digest.update(chunk)
    except OSError as exc:
        raise ModelError(f"cannot read weight file {path}: {exc}") from exc
    return digest.hexdigest()


def verify_weights(manifest: Manifest, part: NnUNetPart) -> None:
    """Every weight file exists and matches its recorded SHA-256; else ModelError naming the file."""
    folder = manifest.folder(part)
    for rel in part.weight_files():
        expected = part.sha256.get(rel)
        if expected is None:
            raise ModelError(f"model {manifest.id!r}: no SHA-256 recorded for {rel}; re-import the model")
        path = folder / rel
        if not path.is_file():
            raise ModelError(f"model {manifest.id!r}: weight file {path} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelError(f"model {manifest.id!r}: checksum mismatch for {path}: expected {expected}, "
                             f"got {actual} (file changed or corrupted since import)")
        log.debug("checksum ok: %s", rel)
