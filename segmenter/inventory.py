"""What a registered model is made of, file by file: ``segmenter models check`` and ``models list``.

Every model kind records the SHA-256 of its weight files in its manifest, and :func:`weight_files`
names them all:

- ``nnunet_v2``: every fold's checkpoint of every part (``parts[].sha256``);
- ``multihead``: ``weights.safetensors`` (``multihead.sha256``), which holds the encoder and every
  head's decoder, fusion and adapter;
- ``salt_torchscript``: the TorchScript file (``salt_torchscript.sha256``).

``add-head`` and ``prune`` keep the previous versions of a model under ``versions/<version>/``;
:func:`check_model` verifies their files too, so a rollback target is known to be intact.
A file without a recorded checksum is a failure, not a file skipped.

:func:`describe` gives the size on disk and the parameters per part (nnU-Net: per fold network,
built from the plans on torch's meta device, so no checkpoint is read) or per head (multi-head: the encoder and each
head, read from the safetensors header without loading the tensors). A TorchScript file is loaded
to count its parameters, and only after its checksum matched (it contains code).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from segmenter.core.errors import ModelError, SegmenterError
from segmenter.models.manifest import MANIFEST_NAME, Manifest, read_manifest, sha256_file

log = logging.getLogger(__name__)

VERSIONS = "versions"


@dataclass(frozen=True)
class WeightFile:
    path: Path
    sha256: str | None  # None: the manifest records none
    what: str  # "part 0 fold 1", "weights (encoder + 2 heads)", "TorchScript"


@dataclass(frozen=True)
class CheckReport:
    manifest: Manifest
    files: tuple[WeightFile, ...]  # current version first, then the archived versions'
    archived: tuple[str, ...]  # archived versions checked


@dataclass(frozen=True)
class Part:
    """One part (nnU-Net) or head (multi-head) of a model, or the multi-head encoder."""

    name: str
    parameters: int
    bytes: int  # of its tensors as stored
    folds: int = 1  # nnU-Net: networks of this size run one after another


@dataclass(frozen=True)
class ModelInfo:
    size_bytes: int  # manifest + weight files (+ plans/dataset of nnU-Net parts) of the current version
    archived_bytes: int  # everything under versions/
    parts: tuple[Part, ...] = field(default_factory=tuple)

    @property
    def parameters(self) -> int:
        return sum(p.parameters * p.folds for p in self.parts)

    def to_json(self) -> dict[str, Any]:
        return {"size_bytes": self.size_bytes, "archived_bytes": self.archived_bytes, "parameters": self.parameters,
                "parts": [{"name": p.name, "parameters": p.parameters, "bytes": p.bytes, "folds": p.folds}
                          for p in self.parts]}


def _raw(folder: Path) -> dict[str, Any]:
    try:
        raw = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {folder / MANIFEST_NAME}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelError(f"{folder / MANIFEST_NAME}: not a JSON object")
    return raw


def weight_files(manifest: Manifest) -> list[WeightFile]:
    """Every weight file the manifest's model loads, with its recorded SHA-256."""
    folder = manifest.base_dir
    if folder is None:
        raise ModelError(f"model {manifest.id!r}: manifest not read from a folder")
    if manifest.kind == "multihead":
        from segmenter.multihead.spec import WEIGHTS_NAME, read_spec

        spec = read_spec(folder)
        return [WeightFile(folder / WEIGHTS_NAME, spec.sha256.lower() or None,
                           f"weights (encoder + {len(spec.heads)} head(s))")]
    if manifest.kind == "salt_torchscript":
        from segmenter.multihead.salt_torchscript import parse_salt_spec

        salt = parse_salt_spec(_raw(folder))
        return [WeightFile(folder / salt.file, salt.sha256, "TorchScript")]
    files = []
    for part in manifest.parts:
        for fold, rel in zip(part.folds, part.weight_files(), strict=True):
            files.append(WeightFile(manifest.folder(part) / rel, part.sha256.get(rel), f"part {part.name} fold {fold}"))
    return files


def _verify(wf: WeightFile) -> str | None:
    """None if the file matches its checksum, else why not."""
    if wf.sha256 is None:
        return f"{wf.path}: no SHA-256 recorded in the manifest"
    if not wf.path.is_file():
        return f"{wf.path}: missing"
    try:
        actual = sha256_file(wf.path)
    except ModelError as exc:
        return str(exc)
    if actual != wf.sha256:
        return f"{wf.path}: checksum mismatch (changed or corrupted since it was written)"
    log.info("%s verified (%s)", wf.path, wf.what)
    return None


def _check_nnunet_parts(manifest: Manifest) -> None:
    from segmenter.nnunet.plans import parse_dataset, parse_plans, read_json

    for part in manifest.parts:
        folder = manifest.folder(part)
        parse_plans(read_json(folder / "plans.json")).configuration(part.configuration)
        parse_dataset(read_json(folder / "dataset.json"))
        for label, name in sorted(part.labels.items()):
            if name is None:
                log.warning("%s: label %d is not mapped to a catalogue structure (not exported)", folder.name, label)


def check_model(folder: Path) -> CheckReport:
    """Verify every weight file of the model in ``folder`` and of its archived versions.

    Raises ModelError naming every file that is missing, unrecorded or changed (all of them, not
    only the first)."""
    manifest = read_manifest(folder)
    if manifest.kind == "nnunet_v2":
        _check_nnunet_parts(manifest)
    files = weight_files(manifest)
    archived: list[str] = []
    problems: list[str] = []
    for version_dir in sorted((folder / VERSIONS).glob(f"*/{MANIFEST_NAME}")):
        try:
            old = read_manifest(version_dir.parent)
            files += [replace(wf, what=f"version {old.version} {wf.what}") for wf in weight_files(old)]
            archived.append(old.version)
        except SegmenterError as exc:
            problems.append(f"archived {version_dir.parent.name}: {exc}")
    problems += [p for wf in files if (p := _verify(wf)) is not None]
    if problems:
        raise ModelError(f"model {manifest.id!r}: {len(problems)} problem(s) among {len(files)} weight file(s): "
                         + "; ".join(problems))
    return CheckReport(manifest, tuple(files), tuple(archived))


def _size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in dict.fromkeys(paths) if p.is_file())


def _multihead_parts(path: Path) -> list[Part]:
    """Encoder and heads from the safetensors header (shapes and dtypes; no tensor is read)."""
    from safetensors import safe_open

    counts: dict[str, list[int]] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                kind, _, rest = key.partition(".")
                owner = rest.partition(".")[0] if kind in ("heads", "supports", "adapters") else kind
                tensor = f.get_slice(key)
                numel = 1
                for n in tensor.get_shape():
                    numel *= int(n)
                size = _DTYPE_BYTES.get(str(tensor.get_dtype()), 4)
                entry = counts.setdefault(owner, [0, 0])
                entry[0] += numel
                entry[1] += numel * size
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot read the tensors of {path}: {exc}") from exc
    # the encoder first, then the heads in the order the file's keys give them
    order = sorted(counts, key=lambda k: k != "encoder")
    return [Part(k, counts[k][0], counts[k][1]) for k in order]


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1}


def _nnunet_part(manifest: Manifest, index: int) -> Part:
    """One fold's network as the plans build it, on the meta device: shapes only, nothing allocated
    and no checkpoint read (the library's shared modules are counted once, as the network holds them)."""
    import torch

    from segmenter.nnunet.plans import network_for, parse_dataset, parse_plans, read_json

    part = manifest.parts[index]
    folder = manifest.folder(part)
    plans = parse_plans(read_json(folder / "plans.json"))
    dataset = parse_dataset(read_json(folder / "dataset.json"))
    with torch.device("meta"):
        net = network_for(plans, plans.configuration(part.configuration), dataset)
    tensors = list(net.parameters())
    return Part(part.name, sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors),
                folds=len(part.folds))


def _salt_part(folder: Path) -> Part:
    from segmenter.multihead.salt_torchscript import TorchScriptSaltEngine

    module = TorchScriptSaltEngine.from_dir(folder, "cpu").module  # checksum first: the file holds code
    tensors = list(module.parameters())
    return Part("network", sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors))


def describe(manifest: Manifest) -> ModelInfo:
    """Size on disk and parameters per part or head of a registered model."""
    folder = manifest.base_dir
    if folder is None:
        raise ModelError(f"model {manifest.id!r}: manifest not read from a folder")
    files = [folder / MANIFEST_NAME, *(wf.path for wf in weight_files(manifest))]
    if manifest.kind == "nnunet_v2":
        files += [manifest.folder(p) / name for p in manifest.parts for name in ("plans.json", "dataset.json")]
    archived = sum(p.stat().st_size for p in (folder / VERSIONS).rglob("*") if p.is_file())
    if manifest.kind == "multihead":
        parts = _multihead_parts(files[1])
    elif manifest.kind == "salt_torchscript":
        parts = [_salt_part(folder)]
    else:
        parts = [_nnunet_part(manifest, i) for i in range(len(manifest.parts))]
    return ModelInfo(_size(files), archived, tuple(parts))


def human_bytes(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value = n / 1000
    for unit in ("kB", "MB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def human_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n:,}"
