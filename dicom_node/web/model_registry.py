"""The models page's view of the registry: each model's id, version, kind, parts or heads and size on disk,
and ``segmenter models check`` run for one model.

Listing reads the manifests' JSON and the files' sizes only, so rendering the page imports neither
torch nor an engine. The check verifies every weight file's SHA-256 (``segmenter.inventory``); for some
kinds that imports torch, so it runs as ``segmenter models check`` in a child process, and the web
process stays small.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from segmenter.models.manifest import MANIFEST_NAME

log = logging.getLogger(__name__)
BUILTIN = "builtin"
CHECK_TIMEOUT_SECONDS = 900  # SHA-256 of a few GB of weights
VERSIONS = "versions"


@dataclass(frozen=True)
class ModelView:
    id: str
    version: str
    kind: str
    parts: tuple[str, ...]  # nnU-Net parts ("part 0: 3d_fullres, folds 0,1") or multi-head heads
    size_bytes: int  # every file of the model's folder but archived versions (and outside part folders)
    archived: tuple[str, ...]  # versions kept under versions/
    problem: str = ""  # the manifest cannot be read


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str


def _files_size(folder: Path, skip: Path | None = None) -> int:
    total = 0
    for path in folder.rglob("*"):
        if path.is_file() and not (skip is not None and path.is_relative_to(skip)):
            total += path.stat().st_size
    return total


def _parts(raw: dict[str, object], folder: Path) -> tuple[tuple[str, ...], int]:
    """The parts or heads the manifest names, and the size of part folders outside the model's own."""
    kind = raw.get("kind")
    if kind == "multihead":
        section = raw.get("multihead")
        heads = section.get("heads", []) if isinstance(section, dict) else []
        return tuple(f"head {h.get('name', '?')}" for h in heads if isinstance(h, dict)), 0
    if kind == "salt_torchscript":
        return ("TorchScript network",), 0
    names, outside = [], 0
    parts = raw.get("parts")
    for index, part in enumerate(parts if isinstance(parts, list) else []):
        if not isinstance(part, dict):
            continue
        folds = ",".join(str(f) for f in part.get("folds", []))
        names.append(f"part {part.get('name') or index}: {part.get('configuration', '?')}, folds {folds}")
        part_dir = (folder / str(part.get("folder", ""))).resolve()
        if part_dir.is_dir() and not part_dir.is_relative_to(folder.resolve()):
            outside += _files_size(part_dir)
    return tuple(names), outside


def describe(folder: Path) -> ModelView:
    try:
        raw = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return ModelView(folder.name, "", "", (), 0, (), problem=f"cannot read {MANIFEST_NAME}: {exc}")
    parts, outside = _parts(raw, folder)
    archived = tuple(sorted(p.parent.name for p in (folder / VERSIONS).glob(f"*/{MANIFEST_NAME}")))
    return ModelView(str(raw.get("id", folder.name)), str(raw.get("version", "")), str(raw.get("kind", "")), parts,
                     _files_size(folder, skip=folder / VERSIONS) + outside, archived)


def list_models(models_dir: Path | None) -> list[ModelView]:
    """``builtin`` first (always there, no files), then every registered model by id."""
    out = [ModelView(BUILTIN, "", "classical", ("body, lungs and airway, spinal cord",), 0, ())]
    if models_dir is not None and models_dir.is_dir():
        out += [describe(p.parent) for p in sorted(models_dir.glob(f"*/{MANIFEST_NAME}"))]
    return out


def check(models_dir: Path | None, model_id: str) -> CheckResult:
    """``segmenter models check ID``: ok, with how many files it verified, or every file that is wrong."""
    if model_id == BUILTIN:
        return CheckResult(True, "builtin has no weight files")
    known = {m.id for m in list_models(models_dir)}
    if models_dir is None or model_id not in known:
        return CheckResult(False, f"no registered model {model_id!r}")
    command = [sys.executable, "-m", "segmenter.cli", "models", "check", model_id, "--models-dir", str(models_dir)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        return CheckResult(False, f"the check of {model_id} took longer than {CHECK_TIMEOUT_SECONDS} s")
    # the verdict is stdout's last line; a failure is the one ERROR line of its log (stderr)
    lines = [line for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else \
        [line.split(": ", 1)[-1] for line in done.stderr.splitlines() if " ERROR " in line]
    message = lines[-1] if lines else f"segmenter models check ended with code {done.returncode}"
    log.info("model %s checked: exit code %d", model_id, done.returncode)
    return CheckResult(done.returncode == 0, message)
