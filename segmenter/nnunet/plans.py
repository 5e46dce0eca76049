"""Read an nnU-Net v2 trained-model folder's ``plans.json`` and ``dataset.json`` into typed values.

Only what inference needs is kept: the configuration's patch size, spacing, normalisation,
resampling settings and network architecture; the transpose; the CT intensity properties; the
label names. Anything we cannot reproduce faithfully (region-based labels, other normalisations or
resampling functions) is refused with a ModelError naming the entry, never silently approximated.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from segmenter.core.errors import ModelError
from segmenter.nnunet.arch import build_network

log = logging.getLogger(__name__)

SUPPORTED_NORMALISATIONS = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization")
SUPPORTED_RESAMPLING = ("resample_data_or_seg_to_shape",)
ANISOTROPY_THRESHOLD = 3.0  # nnunetv2.configuration.ANISO_THRESHOLD


@dataclass(frozen=True)
class Resampling:
    """Arguments of nnU-Net's ``resample_data_or_seg_to_shape``."""

    order: int
    order_z: int
    force_separate_z: bool | None


@dataclass(frozen=True)
class IntensityProperties:
    mean: float
    std: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass(frozen=True)
class Configuration:
    name: str
    patch_size: tuple[int, ...]  # 2 entries for 2d, 3 for 3d, in transposed axis order
    spacing: tuple[float, ...]
    normalization_schemes: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    resampling_data: Resampling
    resampling_probabilities: Resampling
    network_class: str
    arch_kwargs: dict[str, Any]


@dataclass(frozen=True)
class Plans:
    dataset_name: str
    plans_name: str
    transpose_forward: tuple[int, int, int]
    transpose_backward: tuple[int, int, int]
    intensity: tuple[IntensityProperties | None, ...]  # per input channel
    configurations: dict[str, dict[str, Any]]

    def configuration(self, name: str) -> Configuration:
        return _parse_configuration(self.configurations, name)


@dataclass(frozen=True)
class DatasetInfo:
    channel_names: tuple[str, ...]
    labels: dict[int, str]  # label id -> dataset label name, background included
    num_heads: int  # network output channels (labels without the ignore label)

    @property
    def foreground(self) -> dict[int, str]:
        return {k: v for k, v in self.labels.items() if k != 0}


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path.name} is missing in {path.parent}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} must hold a JSON object")
    return data


def _resampling(cfg: dict[str, Any], key: str, name: str) -> Resampling:
    fn = cfg.get(key.replace("_kwargs", ""))
    if fn not in SUPPORTED_RESAMPLING:
        raise ModelError(f"configuration {name!r}: resampling function {fn!r} is not supported "
                         f"(supported: {', '.join(SUPPORTED_RESAMPLING)})")
    kw = cfg.get(key) or {}
    if kw.get("is_seg"):
        raise ModelError(f"configuration {name!r}: {key} has is_seg=true for image data")
    force = kw.get("force_separate_z")
    return Resampling(order=int(kw.get("order", 3)), order_z=int(kw.get("order_z", 0)),
                      force_separate_z=None if force is None else bool(force))


def _parse_configuration(configurations: dict[str, dict[str, Any]], name: str) -> Configuration:
    if name not in configurations:
        raise ModelError(f"configuration {name!r} not in plans (has {sorted(configurations)})")
    # resolve `inherits_from` chains (e.g. 3d_cascade_fullres -> 3d_fullres)
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    current: str | None = name
    while current is not None:
        if current in seen or current not in configurations:
            raise ModelError(f"configuration {name!r}: broken inherits_from chain at {current!r}")
        seen.add(current)
        chain.append(configurations[current])
        parent = configurations[current].get("inherits_from")
        current = str(parent) if parent is not None else None
    cfg: dict[str, Any] = {}
    for part in reversed(chain):
        cfg.update(part)
    try:
        arch = cfg["architecture"]
        norms = tuple(str(n) for n in cfg["normalization_schemes"])
        for n in norms:
            if n not in SUPPORTED_NORMALISATIONS:
                raise ModelError(f"configuration {name!r}: normalisation {n!r} is not supported")
        conf = Configuration(
            name=name,
            patch_size=tuple(int(p) for p in cfg["patch_size"]),
            spacing=tuple(float(s) for s in cfg["spacing"]),
            normalization_schemes=norms,
            use_mask_for_norm=tuple(bool(u) for u in cfg.get("use_mask_for_norm", [False] * len(norms))),
            resampling_data=_resampling(cfg, "resampling_fn_data_kwargs", name),
            resampling_probabilities=_resampling(cfg, "resampling_fn_probabilities_kwargs", name),
            network_class=str(arch["network_class_name"]),
            arch_kwargs=dict(arch["arch_kwargs"]),
        )
    except KeyError as exc:
        raise ModelError(f"configuration {name!r} lacks {exc}; only nnU-Net v2 plans with an "
                         "'architecture' entry are supported") from None
    if len(conf.patch_size) not in (2, 3) or len(conf.spacing) != len(conf.patch_size):
        raise ModelError(f"configuration {name!r}: patch_size and spacing must both have 2 or 3 entries")
    return conf


def parse_plans(data: dict[str, Any]) -> Plans:
    try:
        tf = tuple(int(v) for v in data.get("transpose_forward", [0, 1, 2]))
        tb = tuple(int(v) for v in data.get("transpose_backward", [0, 1, 2]))
        props = data.get("foreground_intensity_properties_per_channel") or {}
        intensity: list[IntensityProperties | None] = []
        for key in sorted(props, key=int):
            p = props[key]
            intensity.append(IntensityProperties(float(p["mean"]), float(p["std"]),
                                                 float(p["percentile_00_5"]), float(p["percentile_99_5"])))
        configurations = data["configurations"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"plans.json is malformed: {exc}") from exc
    if sorted(tf) != [0, 1, 2] or sorted(tb) != [0, 1, 2]:
        raise ModelError(f"plans.json: transpose_forward/backward must permute (0, 1, 2), got {tf}, {tb}")
    return Plans(
        dataset_name=str(data.get("dataset_name", "")),
        plans_name=str(data.get("plans_name", "")),
        transpose_forward=tf,  # type: ignore[arg-type]
        transpose_backward=tb,  # type: ignore[arg-type]
        intensity=tuple(intensity),
        configurations=dict(configurations),
    )


def parse_dataset(data: dict[str, Any]) -> DatasetInfo:
    channels = data.get("channel_names", data.get("modality"))
    labels = data.get("labels")
    if not isinstance(channels, dict) or not isinstance(labels, dict) or not labels:
        raise ModelError("dataset.json needs 'channel_names' and 'labels'")
    out: dict[int, str] = {}
    ignore = False
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise ModelError(f"dataset.json: label {name!r} is a region {value!r}; region-based models are "
                             "not supported")
        if name == "ignore":
            ignore = True
            continue
        out[int(value)] = str(name)
    if sorted(out) != list(range(len(out))) or 0 not in out:
        raise ModelError(f"dataset.json: labels must be consecutive from 0 (background), got {sorted(out)}")
    del ignore  # the ignore label is never predicted; it only adds no output channel
    return DatasetInfo(
        channel_names=tuple(str(channels[k]) for k in sorted(channels, key=int)),
        labels=out,
        num_heads=len(out),
    )


def network_for(plans: Plans, config: Configuration, dataset: DatasetInfo) -> nn.Module:
    return build_network(config.network_class, config.arch_kwargs, len(dataset.channel_names), dataset.num_heads)
