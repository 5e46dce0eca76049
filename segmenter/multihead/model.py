"""CL-Net-style multi-head models: one general encoder, named decoder heads, one merged label map.

Storage: ``manifest.json`` (:mod:`segmenter.multihead.spec`) + ``weights.safetensors`` whose SHA-256
the manifest records and loading checks. Safetensors holds tensors only: no code runs on load.

Inference (:func:`predict` / :class:`MultiHeadEngine`): the image is clipped and normalised,
resampled to the model's spacing, and tiled with the sliding window of
:mod:`segmenter.nnunet.sliding_window` (Gaussian weights, float32 accumulator). For each tile the encoder
runs once and feeds every enabled whole-image head; the heads' logits are accumulated side by side.
Softmax heads give class probabilities, SALT heads tree-marginal probabilities
(:mod:`segmenter.multihead.salt`); both are resampled back to the input grid. ``small`` heads with a crop run
afterwards on crops placed from their anchor's prediction (:mod:`segmenter.multihead.cascade`). Heads with a
body-part range run only on the slab of slices around their landmark (:mod:`segmenter.multihead.body_range`).
Per-head results merge into one label map by the manifest's rule (priority, then probability; see
:mod:`segmenter.multihead.spec`). Heads can be switched off per call (``heads=``) or in the manifest
(``enabled: false``); a switched-off head costs nothing unless an enabled head needs it as a
supporter (it then runs inside the tiles without appearing in the result). A head with an adapter
reads the encoder's features through it (:class:`segmenter.multihead.net.Adapter`); the features
every other head reads are the encoder's own. Label values are numbered over all heads in
manifest order, so adding a head never renumbers the old structures.

How this differs from CL-Net (clNet): see "What is implemented of CL-Net" in ``benchmarks/README.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from segmenter.core.errors import ModelError
from segmenter.models.manifest import sha256_file
from segmenter.multihead import body_range, cascade
from segmenter.multihead.net import HeadSubset, MultiHeadNet
from segmenter.multihead.salt import LabelTree
from segmenter.multihead.spec import (
    WEIGHTS_NAME,
    HeadSpec,
    ModelSpec,
    check_spec,
    read_spec,
)
from segmenter.nnunet.sliding_window import WindowSettings, sliding_window_logits

if TYPE_CHECKING:  # SimpleITK stays out of the import path of headless GPU workers (as nnunet_engine)
    from segmenter.core.result import SegmentationResult
    from segmenter.core.volume import Volume

log = logging.getLogger(__name__)


@dataclass
class MultiHeadModel:
    spec: ModelSpec
    net: MultiHeadNet

    @classmethod
    def build(cls, spec: ModelSpec, seed: int | None = None) -> MultiHeadModel:
        """A freshly initialised network for ``spec``."""
        check_spec(spec)
        if seed is not None:
            torch.manual_seed(seed)
        net = MultiHeadNet(spec.in_channels, spec.encoder_features)
        for h in spec.heads:
            net.add_head(h.name, h.out_channels, h.widths, supports=h.supports, adapter=h.adapter)
        return cls(spec, net)


def save_model(model: MultiHeadModel, directory: Path) -> ModelSpec:
    """Write weights + manifest into ``directory`` (atomically per file); returns the spec as written."""
    cfg = model.net.config()
    widths = {name: w for name, w, _ in cfg.heads}
    heads = tuple(replace(h, widths=widths[h.name]) for h in model.spec.heads)
    if set(widths) != {h.name for h in heads}:
        raise ModelError(f"network heads {sorted(widths)} differ from the manifest's {[h.name for h in heads]}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (WEIGHTS_NAME + ".tmp")
        state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
        save_file(state, str(tmp))
        tmp.replace(directory / WEIGHTS_NAME)
        spec = replace(model.spec, heads=heads, sha256=sha256_file(directory / WEIGHTS_NAME))
        check_spec(spec)
        path = directory / "manifest.json"
        tmp_m = directory / "manifest.json.tmp"
        tmp_m.write_text(json.dumps(spec.to_json(), indent=1) + "\n", encoding="utf-8")
        tmp_m.replace(path)
    except OSError as exc:
        raise ModelError(f"cannot write model to {directory}: {exc}") from exc
    model.spec = spec
    log.info("saved model %s version %s (%d heads) to %s", spec.id, spec.version, len(heads), directory)
    return spec


def load_model(directory: Path) -> MultiHeadModel:
    """Read, checksum and load a multi-head model folder."""
    spec = read_spec(directory)
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise ModelError(f"model {spec.id!r}: weight file {path} is missing")
    if spec.sha256 and sha256_file(path) != spec.sha256:
        raise ModelError(f"model {spec.id!r}: checksum mismatch for {path} (file changed since it was saved)")
    model = MultiHeadModel.build(spec)
    try:
        state = load_file(str(path))
        model.net.load_state_dict(state, strict=True)
    except (RuntimeError, OSError) as exc:
        raise ModelError(f"model {spec.id!r}: weights do not fit the manifest: {exc}") from exc
    model.net.eval()
    return model


def normalise(image: np.ndarray | torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Clip to the model's window and z-score with its stored statistics (float32)."""
    x = torch.as_tensor(np.asarray(image, dtype=np.float32) if isinstance(image, np.ndarray) else image).float()
    lo, hi = spec.intensity.clip
    return (x.clamp(lo, hi) - spec.intensity.mean) / spec.intensity.std


def net_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float] | None) -> tuple[int, int, int]:
    if target is None:
        return (int(shape[0]), int(shape[1]), int(shape[2]))
    s = [max(1, round(n * sp / t)) for n, sp, t in zip(shape, spacing, target, strict=True)]
    return (s[0], s[1], s[2])


def head_probabilities(head: HeadSpec, logits: torch.Tensor) -> torch.Tensor:
    """(C, ...) logits of one head -> probabilities (softmax, or SALT marginals)."""
    if head.kind == "salt":
        return LabelTree(head.tree or ()).probs(logits.unsqueeze(0))[0]
    return torch.softmax(logits, dim=0)


def _windowed(model: MultiHeadModel, heads: Sequence[HeadSpec], data: torch.Tensor) -> dict[str, torch.Tensor]:
    settings = WindowSettings(tile_step=model.spec.tile_step, accumulate_dtype=torch.float32, mixed_precision=False)
    subset = HeadSubset(model.net, [h.name for h in heads]).eval()
    total = sum(h.out_channels for h in heads)
    logits = sliding_window_logits([subset], data, model.spec.patch, total, settings)
    out: dict[str, torch.Tensor] = {}
    start = 0
    for h in heads:
        out[h.name] = logits[start:start + h.out_channels]
        start += h.out_channels
    return out


def _selected(spec: ModelSpec, heads: Sequence[str] | None) -> list[HeadSpec]:
    if heads is None:
        return [h for h in spec.heads if h.enabled]
    return [spec.head(n) for n in heads]


@torch.inference_mode()
def predict(model: MultiHeadModel, image: np.ndarray, spacing: Sequence[float],
            heads: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Per-head probabilities (C, *image.shape) on the input grid; ``spacing`` is (z, y, x) mm.

    Heads with a body-part range run after the heads giving their landmarks (which run even when
    not asked for, and are then left out of the result), on the slab around the landmark only."""
    model.net.eval()
    device = next(model.net.parameters()).device
    chosen = _selected(model.spec, heads)
    run = _with_landmarks(model.spec, chosen)
    whole = [h for h in run if h.crop is None and h.range is None]
    ranged = [h for h in run if h.range is not None]
    crops = [h for h in run if h.crop is not None]
    x = normalise(image, model.spec).to(device).unsqueeze(0)
    shape = tuple(int(n) for n in image.shape)
    probs: dict[str, torch.Tensor] = {}
    if whole or ranged:
        grid = net_shape(shape, spacing, model.spec.spacing)
        data = cascade.resample_shape(x, grid)
        if whole:
            for name, logits in _windowed(model, whole, data).items():
                probs[name] = cascade.resample_shape(head_probabilities(model.spec.head(name), logits), shape)
        if ranged:
            _predict_ranged(model, ranged, data, shape, spacing, probs)
    for h in crops:
        probs[h.name] = _predict_crop(model, h, x, spacing, probs)
    wanted = {h.name for h in chosen}
    return {name: p for name, p in probs.items() if name in wanted}


def _with_landmarks(spec: ModelSpec, chosen: Sequence[HeadSpec]) -> list[HeadSpec]:
    """``chosen`` plus the heads producing their range landmarks, in manifest order."""
    names = {h.name for h in chosen}
    todo = [h for h in chosen if h.range is not None]
    while todo:
        h = todo.pop()
        if h.range is None:
            continue
        owner = next(o for o in spec.heads if h.range.landmark in o.structures)
        if owner.name not in names:
            names.add(owner.name)
            todo.append(owner)
    return [h for h in spec.heads if h.name in names]


def empty_probs(head: HeadSpec, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """Probabilities saying "background" everywhere (SALT: the tree's background node)."""
    out = torch.zeros((head.out_channels, *shape), device=device)
    out[LabelTree(head.tree or ()).index("background") if head.kind == "salt" else 0] = 1.0
    return out


def _predict_ranged(model: MultiHeadModel, ranged: Sequence[HeadSpec], data: torch.Tensor, shape: Sequence[int],
                    spacing: Sequence[float], probs: dict[str, torch.Tensor]) -> None:
    """Run each ranged head on the network-grid slab covering its slices; heads sharing a range share
    the slab's tiles (one encoder pass). Outside the range: background."""
    pending = list(ranged)
    while pending:
        groups: dict[tuple[int, int] | None, list[HeadSpec]] = {}
        for h in pending:
            if h.range is None:
                raise ModelError(f"head {h.name!r} has no range")
            mask = _anchor_mask(model.spec, h.range.landmark, probs)
            if mask is not None:  # its landmark is known (a ranged landmark head may still be pending)
                groups.setdefault(body_range.slice_range(mask, spacing[0], h.range), []).append(h)
        if not groups:
            raise ModelError(f"heads {[h.name for h in pending]}: range landmarks not produced by any head that ran")
        for rng, heads in groups.items():
            pending = [h for h in pending if h not in heads]
            if rng is None:
                for h in heads:
                    log.warning("head %s: landmark %s not found; its structures stay empty", h.name,
                                h.range.landmark if h.range else "?")
                    probs[h.name] = empty_probs(h, shape, data.device)
                continue
            lo, hi = body_range.net_range(rng[0], rng[1], shape[0], int(data.shape[1]), model.spec.patch[0])
            log.debug("heads %s: slices %d-%d of %d (network grid %d-%d)", [h.name for h in heads], rng[0], rng[1],
                      shape[0], lo, hi)
            for name, logits in _windowed(model, heads, data[:, lo:hi]).items():
                head = model.spec.head(name)
                full = empty_probs(head, data.shape[1:], data.device)
                full[:, lo:hi] = head_probabilities(head, logits)
                out = cascade.resample_shape(full, shape)
                background = empty_probs(head, (1,), data.device).view(-1, 1, 1, 1)
                out[:, :rng[0]] = background
                out[:, rng[1]:] = background
                probs[name] = out


def _anchor_mask(spec: ModelSpec, anchor: str, probs: dict[str, torch.Tensor]) -> torch.Tensor | None:
    for h in spec.heads:
        if anchor in h.structures and h.name in probs:
            if h.kind == "salt":
                tree = LabelTree(h.tree or ())
                return tree.node_mask(torch.argmax(probs[h.name][list(tree.leaves)], 0), tree.index(anchor))
            return torch.argmax(probs[h.name], 0) == h.structures.index(anchor) + 1
    return None


def _predict_crop(model: MultiHeadModel, head: HeadSpec, x: torch.Tensor, spacing: Sequence[float],
                  probs: dict[str, torch.Tensor]) -> torch.Tensor:
    if head.crop is None:
        raise ModelError(f"head {head.name!r} has no crop")
    shape = tuple(x.shape[1:])
    empty = torch.zeros((head.out_channels, *shape), device=x.device)
    empty[0] = 1.0
    mask = _anchor_mask(model.spec, head.crop.anchor, probs)
    if mask is None:
        raise ModelError(f"head {head.name!r} needs its anchor {head.crop.anchor!r}; enable the head producing it")
    centre = cascade.centroid_mm(mask, spacing)
    if centre is None:
        log.warning("head %s: anchor %s not found; its structures stay empty", head.name, head.crop.anchor)
        return empty
    box = cascade.crop_box(head.crop, centre, model.net.divisor)
    crop = cascade.sample_box(x, spacing, box)
    logits = _windowed(model, [head], crop)[head.name]
    return cascade.paste_probs(head_probabilities(head, logits), box, shape, spacing)


def head_labels(head: HeadSpec, probs: torch.Tensor, label_ids: dict[str, int]
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(label map in model numbering, winning probability, containing-structure masks) of one head."""
    if head.kind == "salt":
        tree = LabelTree(head.tree or ())
        leaves = list(tree.leaves)
        best = torch.argmax(probs[leaves], 0)
        node = torch.tensor(leaves, device=probs.device)[best]
        conf = torch.gather(probs[leaves], 0, best.unsqueeze(0))[0]
        lut = torch.zeros(len(tree), dtype=torch.long)
        extra: dict[str, torch.Tensor] = {}
        for i in range(len(tree)):
            name = tree.short(i)
            if name in head.structures:
                if tree.children[i]:
                    extra[name] = tree.node_mask(node, i)
                else:
                    lut[i] = label_ids[name]
        return lut.to(node.device)[node], conf, extra
    best = torch.argmax(probs, 0)
    conf = torch.gather(probs, 0, best.unsqueeze(0))[0]
    lut = torch.tensor([0] + [label_ids[s] for s in head.structures], dtype=torch.long, device=probs.device)
    return lut[best], conf, {}


def merge_heads(spec: ModelSpec, probs: dict[str, torch.Tensor]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One label map from per-head probabilities by the spec's merge rule (see multihead_spec)."""
    ids = spec.label_ids()
    labels: torch.Tensor | None = None
    score: torch.Tensor | None = None
    extras: dict[str, np.ndarray] = {}
    for h in spec.heads:
        if h.name not in probs:
            continue
        lab, conf, extra = head_labels(h, probs[h.name], ids)
        key = conf.double() + (2.0 * h.priority if spec.merge_rule == "priority" else 0.0)
        if labels is None or score is None:
            labels = torch.zeros_like(lab)
            score = torch.full_like(key, -np.inf)
        take = (lab > 0) & (key > score)
        labels = torch.where(take, lab, labels)
        score = torch.where(take, key, score)
        extras.update({k: v.cpu().numpy() for k, v in extra.items()})
    if labels is None:
        raise ModelError("no head ran; enable at least one")
    dtype = np.uint8 if len(ids) < 256 else np.uint16
    return labels.cpu().numpy().astype(dtype), extras


class MultiHeadEngine:
    """A registry engine for a multi-head model folder; ``heads`` switches heads on/off."""

    def __init__(self, model: MultiHeadModel, heads: Sequence[str] | None = None) -> None:
        self.model = model
        self.heads = None if heads is None else tuple(heads)
        self.model_id = model.spec.id
        self.version = model.spec.version

    @property
    def device(self) -> str:
        """Where the network runs (recorded with each job by the node's worker)."""
        return str(next(self.model.net.parameters()).device)

    @classmethod
    def from_dir(cls, directory: Path, device: str = "cpu") -> MultiHeadEngine:
        """Load a model folder onto ``device`` (``auto``: CUDA when available)."""
        model = load_model(directory)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            model.net.to(torch.device(device))
        except (RuntimeError, AssertionError) as exc:
            raise ModelError(f"model {model.spec.id!r}: cannot use device {device!r}: {exc}") from exc
        return cls(model)

    def with_heads(self, heads: Sequence[str]) -> MultiHeadEngine:
        for n in heads:
            self.model.spec.head(n)
        return MultiHeadEngine(self.model, heads)

    def segment(self, volume: Volume) -> SegmentationResult:
        from segmenter.core.result import LabelledStructure, SegmentationResult

        spacing = (volume.spacing[2], volume.spacing[1], volume.spacing[0])
        probs = predict(self.model, volume.array, spacing, self.heads)
        labels, extras = merge_heads(self.model.spec, probs)
        ids = self.model.spec.label_ids()
        ran = [self.model.spec.head(n) for n in probs]
        structures = tuple(LabelledStructure(ids[s], s) for h in ran for s in h.structures
                           if s not in extras)
        return SegmentationResult(volume.with_array(labels), structures, self.model_id, self.version,
                                  extra_masks=extras)
