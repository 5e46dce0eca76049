"""SALT's published model format as a registry model kind: a TorchScript network + our label-tree decoding.

SALT (UMEssen/SALT) ships its trained network as a TorchScript file (``model.pt``: a traced DynUNet
followed by its tree softmax, output = one marginal probability per non-root tree node) and a
pickled config (label tree, spacing, patch). We never unpickle the config: its content is written
into our manifest instead. A TorchScript file, unlike safetensors, **contains code** (the traced
graph and any scripted functions) that runs when the model runs, so it is loaded only when the
manifest opts in explicitly with ``"allow_code": true``, and only after its SHA-256 matches the
manifest's. Treat such a file like a program from its publisher.

Manifest (``kind: "salt_torchscript"``; spatial triples in the *model's* axis order)::

    {"id": "salt", "version": "1", "kind": "salt_torchscript", "description": "SALT foobar-31",
     "salt_torchscript": {
       "file": "model.pt", "sha256": "...", "allow_code": true,
       "nodes": ["background", "body", "body,bones", ...],  # full tree paths in output-channel order
       "structures": {"body,bones,spine,lumbar_spine,vertebrae_L4": "L4"},  # node -> catalogue name
       "axes": "LPI",                 # model axis 0, 1, 2 increase towards L, P, I (MONAI's LPI, x y z)
       "spacing": [1.5, 1.5, 1.5], "patch": [192, 192, 48], "tile_step": 0.5,
       "intensity": {"clip": [-1024, 1024], "scale": [0.0, 1.0]},  # or {"clip": [...], "mean": m, "std": s}
       "output": "probabilities"}}    # or "logits" (one per node; our tree softmax is applied)

Inference: the volume is reoriented onto the model's axes by transposes and flips
(:class:`segmenter.classical.orient.Canonical`), resampled to the model spacing, clipped and
scaled, tiled with our sliding window (Gaussian weights, float32), and decoded as SALT does: argmax
over the leaves' probabilities on the model grid, node indices resampled back (nearest). A mapped
leaf becomes a label; a mapped internal node becomes an extra mask holding every voxel decoded as
one of its descendants, so the output is tree-consistent by construction.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from segmenter.core.catalogue import load_catalogue
from segmenter.core.errors import ModelError
from segmenter.models.manifest import MANIFEST_NAME, sha256_file
from segmenter.multihead.salt import LabelTree
from segmenter.nnunet.sliding_window import WindowSettings, sliding_window_logits

if TYPE_CHECKING:
    from segmenter.core.result import SegmentationResult
    from segmenter.core.volume import Volume

log = logging.getLogger(__name__)

KIND = "salt_torchscript"
# model axis -> (canonical axis it comes from, flipped): canonical = (z superior, y posterior, x left)
AXES = {"LPI": ((2, False), (1, False), (0, True)), "LPS": ((2, False), (1, False), (0, False))}
OUTPUTS = ("probabilities", "logits")


@dataclass(frozen=True)
class SaltSpec:
    id: str
    version: str
    file: str
    sha256: str
    nodes: tuple[str, ...]  # output-channel order
    structures: dict[str, str]  # node path -> catalogue name
    axes: str
    spacing: tuple[float, float, float] | None
    patch: tuple[int, int, int]
    tile_step: float
    clip: tuple[float, float]
    scale: tuple[float, float] | None
    mean: float
    std: float
    output: str

    @property
    def tree(self) -> LabelTree:
        leaves = [n for n in self.nodes if not any(o.startswith(n + ",") for o in self.nodes)]
        return LabelTree(tuple(leaves))


def _triple(raw: Any, where: str, kind: type) -> tuple[Any, Any, Any]:
    if not (isinstance(raw, list) and len(raw) == 3):
        raise ModelError(f"{where}: expected three numbers, got {raw!r}")
    return (kind(raw[0]), kind(raw[1]), kind(raw[2]))


def parse_salt_spec(raw: Any) -> SaltSpec:
    if not isinstance(raw, dict) or raw.get("kind") != KIND or not isinstance(raw.get(KIND), dict):
        raise ModelError(f"manifest: not a {KIND} model (kind {KIND!r} with a {KIND!r} section)")
    sec = raw[KIND]
    where = f"model {raw.get('id')!r}"
    if sec.get("allow_code") is not True:
        raise ModelError(f"{where}: a TorchScript file contains code; it is loaded only when the manifest "
                         "sets \"allow_code\": true")
    try:
        inten = sec.get("intensity") or {}
        scale = inten.get("scale")
        spec = SaltSpec(
            id=str(raw["id"]), version=str(raw.get("version", "1")), file=str(sec["file"]),
            sha256=str(sec["sha256"]).lower(), nodes=tuple(str(n) for n in sec["nodes"]),
            structures={str(k): str(v) for k, v in (sec.get("structures") or {}).items()},
            axes=str(sec.get("axes", "LPI")),
            spacing=None if sec.get("spacing") is None else _triple(sec["spacing"], f"{where} spacing", float),
            patch=_triple(sec["patch"], f"{where} patch", int), tile_step=float(sec.get("tile_step", 0.5)),
            clip=(float(inten.get("clip", [-1024, 1024])[0]), float(inten.get("clip", [-1024, 1024])[1])),
            scale=None if scale is None else (float(scale[0]), float(scale[1])),
            mean=float(inten.get("mean", 0.0)), std=float(inten.get("std", 1.0)),
            output=str(sec.get("output", "probabilities")))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelError(f"{where}: bad {KIND} section: {exc}") from exc
    if len(spec.sha256) != 64:
        raise ModelError(f"{where}: 'sha256' must be the file's 64-digit SHA-256")
    if spec.axes not in AXES:
        raise ModelError(f"{where}: unknown axes {spec.axes!r} (known: {', '.join(AXES)})")
    if spec.output not in OUTPUTS:
        raise ModelError(f"{where}: unknown output {spec.output!r} (known: {', '.join(OUTPUTS)})")
    if spec.std <= 0 or (spec.scale is None and spec.clip[1] <= spec.clip[0]):
        raise ModelError(f"{where}: bad intensity settings")
    tree = spec.tree
    if set(tree.nodes) != set(spec.nodes) or len(spec.nodes) != len(tree.nodes):
        raise ModelError(f"{where}: 'nodes' must list every node of the tree once (parents of the leaves included)")
    unknown = [n for n in spec.structures if n not in spec.nodes]
    if unknown:
        raise ModelError(f"{where}: structures name nodes not in the tree: {unknown}")
    catalogue = load_catalogue()
    bad = [v for v in spec.structures.values() if v not in catalogue]
    if bad:
        raise ModelError(f"{where}: not catalogue structures: {bad}")
    return spec


class TorchScriptSaltEngine:
    """A registry engine running a SALT TorchScript model."""

    def __init__(self, spec: SaltSpec, module: torch.jit.ScriptModule, device: torch.device) -> None:
        self.spec = spec
        self.module = module
        self.model_id = spec.id
        self.version = spec.version
        self._device = device
        tree = spec.tree
        self.tree = tree
        # our tree order <- the model's channel order
        self.order = torch.tensor([spec.nodes.index(n) for n in tree.nodes])

    @property
    def device(self) -> str:
        return str(self._device)

    @classmethod
    def from_dir(cls, directory: Path, device: str = "cpu") -> TorchScriptSaltEngine:
        try:
            raw = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read {directory / MANIFEST_NAME}: {exc}") from exc
        spec = parse_salt_spec(raw)
        path = directory / spec.file
        if not path.is_file():
            raise ModelError(f"model {spec.id!r}: TorchScript file {path} is missing")
        if sha256_file(path) != spec.sha256:  # checked before any of its code is loaded
            raise ModelError(f"model {spec.id!r}: checksum mismatch for {path}; not loaded")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]  # unannotated in torch
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"model {spec.id!r}: cannot load TorchScript {path}: {exc}") from exc
        module.eval()
        log.info("loaded TorchScript model %s version %s (%d tree nodes) on %s", spec.id, spec.version,
                 len(spec.nodes), device)
        return cls(spec, module, torch.device(device))

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.spec.clip
        x = x.clamp(lo, hi)
        if self.spec.scale is not None:
            a, b = self.spec.scale
            return a + (x - lo) / (hi - lo) * (b - a)
        return (x - self.spec.mean) / self.spec.std

    @torch.inference_mode()
    def decode(self, array: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
        """Node index (our tree order) per voxel of ``array`` given on the model's axes."""
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self._device)
        shape = tuple(int(n) for n in array.shape)
        if self.spec.spacing is not None:
            grid = tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, self.spec.spacing,
                                                                          strict=True))
            if grid != shape:
                x = F.interpolate(x[None, None], size=grid, mode="trilinear", align_corners=False)[0, 0]
        data = self._normalise(x).unsqueeze(0)
        settings = WindowSettings(tile_step=self.spec.tile_step, accumulate_dtype=torch.float32,
                                  mixed_precision=False)
        out = sliding_window_logits([self.module], data, self.spec.patch, len(self.spec.nodes), settings)
        out = out[self.order.to(out.device)]
        if self.spec.output == "logits":
            out = self.tree.probs(out.unsqueeze(0))[0]
        leaves = torch.tensor(self.tree.leaves, device=out.device)
        nodes = leaves[torch.argmax(out[leaves], dim=0)]
        if tuple(nodes.shape) != shape:
            nodes = F.interpolate(nodes[None, None].float(), size=shape, mode="nearest")[0, 0].long()
        result: np.ndarray = nodes.cpu().numpy()
        return result

    def segment(self, volume: Volume) -> SegmentationResult:
        from segmenter.classical.orient import Canonical
        from segmenter.core.result import LabelledStructure, SegmentationResult

        canonical = Canonical.of(volume)
        array = canonical.to_canonical(volume.array)
        axes = AXES[self.spec.axes]
        model_array = np.transpose(array, [a for a, _ in axes])
        for i, (_, flip) in enumerate(axes):
            if flip:
                model_array = np.flip(model_array, i)
        spacing = (canonical.spacing[axes[0][0]], canonical.spacing[axes[1][0]], canonical.spacing[axes[2][0]])
        nodes = self.decode(model_array, spacing)
        for i, (_, flip) in enumerate(axes):
            if flip:
                nodes = np.flip(nodes, i)
        nodes = canonical.from_canonical(np.transpose(nodes, np.argsort([a for a, _ in axes])))
        tree = self.tree
        lut = np.zeros(len(tree), dtype=np.uint16)
        structures: list[LabelledStructure] = []
        extras: dict[str, np.ndarray] = {}
        for path, name in self.spec.structures.items():
            i = tree.index(path)
            if tree.children[i]:
                extras[name] = tree.node_mask(torch.from_numpy(nodes), i).numpy()
            else:
                lut[i] = len(structures) + 1
                structures.append(LabelledStructure(len(structures) + 1, name))
        labels = lut[nodes].astype(np.uint8 if len(structures) < 256 else np.uint16)
        return SegmentationResult(volume.with_array(labels), tuple(structures), self.model_id, self.version,
                                  extra_masks=extras)
