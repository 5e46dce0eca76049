"""The manifest of a multi-head model: encoder, heads, preprocessing, merge rule, history.

A multi-head model is a folder ``<dir>/manifest.json`` + ``<dir>/weights.safetensors``. The manifest
is the registry's (:mod:`segmenter.models.manifest`: ``id``, ``version``, ``kind: "multihead"``) with the
engine's own part under ``"multihead"``::

    {"id": "clnet-demo", "version": "2", "kind": "multihead", "description": "...",
     "multihead": {
       "weights": "weights.safetensors", "sha256": "...",
       "in_channels": 1, "encoder_features": [8, 16, 32],
       "spacing": [2.0, 2.0, 2.0],            # (z, y, x) mm the network sees; null = input grid
       "intensity": {"clip": [-1000, 1000], "mean": 0.0, "std": 500.0},
       "patch": [32, 32, 32], "tile_step": 0.5, "merge_rule": "priority",
       "heads": [{"name": "abdomen", "kind": "softmax", "structures": ["Liver", "Spleen"],
                  "widths": [[16, 16, 16], [8, 8, 8]], "priority": 0, "enabled": true,
                  "group": "anchor", "tree": null, "crop": null, "supports": [], "range": null,
                  "adapter": null}],
       "history": [{"version": "1", "action": "train", "heads": ["abdomen"], "dataset": "..."}]}}

Spacings, offsets and sizes are given along the array axes (z, y, x) in mm.

``range`` ({"landmark": "Liver", "margin_mm": [40, 40]}) restricts a head to the slices around a
landmark structure predicted by an earlier head (CL-Net's body-part ranges; outside: background).

``supports`` lists earlier heads whose logits the head fuses with its own (CL-Net's feature-level
supporting, :mod:`segmenter.multihead.net`); running the head runs its supporters too, switched
off or not. Crop heads neither support nor are supported: they work on another grid.

``adapter`` ([2, 4, 8], one bottleneck width per encoder stage, 0 = none there) gives the head its own
residual adapter over the frozen encoder's features (:class:`segmenter.multihead.net.Adapter`,
weights ``adapters.<head>.*``); null = the head reads the encoder's features as they are.

Merge rule (``merge_rule``), applied where several heads claim a voxel as foreground:
``priority`` (default) - the head with the higher ``priority`` wins; among equal priorities the
higher probability of the head's winning class wins; on an exact tie the earlier head wins.
``probability`` - the higher winning-class probability wins, priorities ignored (earlier head on ties).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from segmenter.core.catalogue import load_catalogue
from segmenter.core.errors import ModelError
from segmenter.multihead.net import Widths
from segmenter.multihead.salt import LabelTree

log = logging.getLogger(__name__)

HEAD_KINDS = ("softmax", "salt")
GROUPS = ("anchor", "mid", "small")
MERGE_RULES = ("priority", "probability")
WEIGHTS_NAME = "weights.safetensors"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class CropSpec:
    """SOARS small & hard placement: crop centred at the anchor's centroid + ``offset_mm``."""

    anchor: str  # catalogue name of the anchor structure
    offset_mm: tuple[float, float, float]
    size_mm: tuple[float, float, float]
    spacing: tuple[float, float, float]  # the crop's (finer) grid

    def to_json(self) -> dict[str, Any]:
        return {"anchor": self.anchor, "offset_mm": list(self.offset_mm), "size_mm": list(self.size_mm),
                "spacing": list(self.spacing)}


@dataclass(frozen=True)
class RangeSpec:
    """CL-Net body-part range: the head runs only on the slices (array axis z) from the landmark's
    first slice - ``margin_mm[0]`` to its last slice + ``margin_mm[1]`` (see :mod:`segmenter.multihead.body_range`)."""

    landmark: str  # catalogue name of a structure an earlier whole-image head produces
    margin_mm: tuple[float, float]  # towards lower, towards higher slice indices

    def to_json(self) -> dict[str, Any]:
        return {"landmark": self.landmark, "margin_mm": list(self.margin_mm)}


@dataclass(frozen=True)
class HeadSpec:
    name: str
    structures: tuple[str, ...]  # softmax: class i+1; salt: exported catalogue nodes
    widths: Widths
    kind: str = "softmax"
    priority: int = 0
    enabled: bool = True
    group: str = "anchor"
    tree: tuple[str, ...] | None = None  # SALT label-tree paths
    crop: CropSpec | None = None
    supports: tuple[str, ...] = ()  # earlier heads whose logits this head fuses (FL-supporting)
    range: RangeSpec | None = None  # body-part range: runs only on the slices around a landmark
    adapter: tuple[int, ...] | None = None  # bottleneck width per encoder stage of the head's own adapter

    @property
    def out_channels(self) -> int:
        if self.kind == "salt":
            from segmenter.multihead.salt import LabelTree
            return len(LabelTree(self.tree or ()))
        return len(self.structures) + 1

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "structures": list(self.structures),
                "widths": [list(w) for w in self.widths], "priority": self.priority, "enabled": self.enabled,
                "group": self.group, "tree": None if self.tree is None else list(self.tree),
                "crop": None if self.crop is None else self.crop.to_json(), "supports": list(self.supports),
                "range": None if self.range is None else self.range.to_json(),
                "adapter": None if self.adapter is None else list(self.adapter)}


@dataclass(frozen=True)
class Intensity:
    clip: tuple[float, float] = (-1000.0, 1000.0)
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    id: str
    version: str
    encoder_features: tuple[int, ...]
    heads: tuple[HeadSpec, ...]
    patch: tuple[int, int, int]
    in_channels: int = 1
    spacing: tuple[float, float, float] | None = None
    intensity: Intensity = Intensity()
    tile_step: float = 0.5
    merge_rule: str = "priority"
    description: str = ""
    sha256: str = ""
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def head(self, name: str) -> HeadSpec:
        for h in self.heads:
            if h.name == name:
                return h
        raise ModelError(f"model {self.id!r} has no head {name!r}; heads: {[h.name for h in self.heads]}")

    def label_ids(self) -> dict[str, int]:
        """Catalogue name -> label value, numbered over all heads in manifest order (stable across
        versions that append heads)."""
        out: dict[str, int] = {}
        for h in self.heads:
            for s in h.structures:
                out.setdefault(s, len(out) + 1)
        return out

    def with_heads(self, heads: tuple[HeadSpec, ...]) -> ModelSpec:
        return replace(self, heads=heads)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "kind": "multihead", "description": self.description,
                "multihead": {
                    "weights": WEIGHTS_NAME, "sha256": self.sha256, "in_channels": self.in_channels,
                    "encoder_features": list(self.encoder_features),
                    "spacing": None if self.spacing is None else list(self.spacing),
                    "intensity": {"clip": list(self.intensity.clip), "mean": self.intensity.mean,
                                  "std": self.intensity.std},
                    "patch": list(self.patch), "tile_step": self.tile_step, "merge_rule": self.merge_rule,
                    "heads": [h.to_json() for h in self.heads], "history": list(self.history)}}


def _triple(raw: Any, where: str, kind: type = float) -> tuple[Any, Any, Any]:
    if not (isinstance(raw, list) and len(raw) == 3):
        raise ModelError(f"{where}: expected three numbers (z, y, x), got {raw!r}")
    try:
        return (kind(raw[0]), kind(raw[1]), kind(raw[2]))
    except (TypeError, ValueError):
        raise ModelError(f"{where}: expected three numbers (z, y, x), got {raw!r}") from None


def check_head(head: HeadSpec, n_levels: int) -> None:
    where = f"head {head.name!r}"
    if not _NAME.match(head.name):
        raise ModelError(f"{where}: names are a letter then letters, digits, '_' or '-' (max 64)")
    if head.kind not in HEAD_KINDS:
        raise ModelError(f"{where}: unknown kind {head.kind!r} (known: {', '.join(HEAD_KINDS)})")
    if head.group not in GROUPS:
        raise ModelError(f"{where}: unknown group {head.group!r} (known: {', '.join(GROUPS)})")
    if head.kind == "salt" and not head.tree:
        raise ModelError(f"{where}: a salt head needs a label tree")
    if not head.structures:
        raise ModelError(f"{where}: no structures")
    catalogue = load_catalogue()
    unknown = [s for s in head.structures if s not in catalogue]
    if unknown:
        raise ModelError(f"{where}: not catalogue structures: {', '.join(unknown)}")
    if len(set(head.structures)) != len(head.structures):
        raise ModelError(f"{where}: repeated structures")
    if len(head.widths) != n_levels or any(len(w) != 3 or min(w) < 1 for w in head.widths):
        raise ModelError(f"{where}: widths must be {n_levels} triples of positive integers")
    if head.adapter is not None and (len(head.adapter) != n_levels + 1 or min(head.adapter) < 0
                                     or not any(head.adapter)):
        raise ModelError(f"{where}: adapter must give {n_levels + 1} bottleneck widths (one per encoder stage, "
                         f">= 0, at least one > 0), got {list(head.adapter)}")
    if head.crop is not None and head.crop.anchor not in catalogue:
        raise ModelError(f"{where}: crop anchor {head.crop.anchor!r} is not a catalogue structure")


def _check_supports(spec: ModelSpec, head: HeadSpec, earlier: dict[str, HeadSpec]) -> None:
    where = f"model {spec.id!r} head {head.name!r}"
    if len(set(head.supports)) != len(head.supports):
        raise ModelError(f"{where}: repeated supporting heads {list(head.supports)}")
    for name in head.supports:
        if name == head.name:
            raise ModelError(f"{where}: a head cannot support itself")
        if name not in earlier:
            # declared order is the run order; this also rules out cycles
            raise ModelError(f"{where}: supporting head {name!r} must be declared before it")
        if earlier[name].crop is not None:
            raise ModelError(f"{where}: crop head {name!r} cannot support (its crop grid differs)")
    if head.supports and head.crop is not None:
        raise ModelError(f"{where}: a crop head cannot be supported (its crop grid differs from its supporters')")
    if head.range is not None:
        if head.crop is not None:
            raise ModelError(f"{where}: a crop head cannot have a body-part range (its crop places it already)")
        if sum(head.range.margin_mm) < 0:
            raise ModelError(f"{where}: range margins {list(head.range.margin_mm)} leave no slices")
        owner = [h for h in earlier.values() if head.range.landmark in h.structures]
        if not owner:
            # declared order is the run order: the landmark must be known before the head runs
            raise ModelError(f"{where}: range landmark {head.range.landmark!r} is not produced by a head declared "
                             "before it")
        if owner[0].crop is not None:
            raise ModelError(f"{where}: range landmark {head.range.landmark!r} comes from crop head "
                             f"{owner[0].name!r}; use a whole-image head's structure")
        if head.kind == "salt" and "background" not in LabelTree(head.tree or ()).nodes:
            raise ModelError(f"{where}: a salt head with a range needs a 'background' node for the slices it skips")


def check_spec(spec: ModelSpec) -> None:
    if spec.merge_rule not in MERGE_RULES:
        raise ModelError(f"model {spec.id!r}: unknown merge rule {spec.merge_rule!r} (known: {', '.join(MERGE_RULES)})")
    names = [h.name for h in spec.heads]
    if len(set(names)) != len(names):
        raise ModelError(f"model {spec.id!r}: repeated head names {names}")
    seen: dict[str, str] = {}
    earlier: dict[str, HeadSpec] = {}
    for h in spec.heads:
        check_head(h, len(spec.encoder_features) - 1)
        _check_supports(spec, h, earlier)
        earlier[h.name] = h
        for s in h.structures:
            if s in seen:
                raise ModelError(f"model {spec.id!r}: {s!r} is produced by heads {seen[s]!r} and {h.name!r}")
            seen[s] = h.name
    div = 2 ** (len(spec.encoder_features) - 1)
    if any(p % div for p in spec.patch):
        raise ModelError(f"model {spec.id!r}: patch {spec.patch} must be a multiple of {div} on every axis")


def _parse_head(raw: Any, i: int) -> HeadSpec:
    where = f"head {i}"
    if not isinstance(raw, dict) or "name" not in raw:
        raise ModelError(f"{where}: must be a mapping with a name")
    crop = raw.get("crop")
    try:
        return HeadSpec(
            name=str(raw["name"]), kind=str(raw.get("kind", "softmax")),
            structures=tuple(str(s) for s in raw.get("structures") or ()),
            widths=tuple(tuple(int(v) for v in w) for w in raw.get("widths") or ()),  # type: ignore[misc]
            priority=int(raw.get("priority", 0)), enabled=bool(raw.get("enabled", True)),
            group=str(raw.get("group", "anchor")),
            tree=None if raw.get("tree") is None else tuple(str(p) for p in raw["tree"]),
            crop=None if crop is None else CropSpec(
                anchor=str(crop["anchor"]), offset_mm=_triple(crop["offset_mm"], f"{where} crop offset_mm"),
                size_mm=_triple(crop["size_mm"], f"{where} crop size_mm"),
                spacing=_triple(crop["spacing"], f"{where} crop spacing")),
            supports=tuple(str(n) for n in raw.get("supports") or ()),
            range=None if raw.get("range") is None else RangeSpec(
                landmark=str(raw["range"]["landmark"]),
                margin_mm=(float(raw["range"]["margin_mm"][0]), float(raw["range"]["margin_mm"][1]))),
            adapter=None if raw.get("adapter") is None else tuple(int(r) for r in raw["adapter"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{where}: {exc}") from exc


def parse_spec(raw: Any) -> ModelSpec:
    if not isinstance(raw, dict) or raw.get("kind") != "multihead" or not isinstance(raw.get("multihead"), dict):
        raise ModelError("manifest: not a multihead model (kind 'multihead' with a 'multihead' section)")
    mh = raw["multihead"]
    try:
        inten = mh.get("intensity") or {}
        spec = ModelSpec(
            id=str(raw["id"]), version=str(raw.get("version", "1")), description=str(raw.get("description", "")),
            in_channels=int(mh.get("in_channels", 1)),
            encoder_features=tuple(int(f) for f in mh["encoder_features"]),
            heads=tuple(_parse_head(h, i) for i, h in enumerate(mh.get("heads") or [])),
            patch=_triple(mh["patch"], "patch", int),
            spacing=None if mh.get("spacing") is None else _triple(mh["spacing"], "spacing"),
            intensity=Intensity(clip=(float(inten.get("clip", [-1000, 1000])[0]),
                                      float(inten.get("clip", [-1000, 1000])[1])),
                                mean=float(inten.get("mean", 0.0)), std=float(inten.get("std", 1.0))),
            tile_step=float(mh.get("tile_step", 0.5)), merge_rule=str(mh.get("merge_rule", "priority")),
            sha256=str(mh.get("sha256", "")), history=tuple(mh.get("history") or ()),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelError(f"manifest: bad multihead section: {exc}") from exc
    if not spec.heads:
        raise ModelError(f"model {spec.id!r}: no heads")
    check_spec(spec)
    return spec


def read_spec(directory: Path) -> ModelSpec:
    path = directory / "manifest.json"
    try:
        return parse_spec(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ModelError(f"no manifest.json in {directory}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
