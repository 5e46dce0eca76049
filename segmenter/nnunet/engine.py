"""Run nnU-Net v2 trained-model folders natively: one model = one or more parts (nnU-Net models).

Per part: preprocess (``nnunet_preprocess``; on CUDA ``nnunet_preprocess_device``, the same steps
in torch on the GPU), sliding window over every fold at once (``sliding_window``), chunked
resampling + argmax back to the input grid (``nnunet_export``). Parts merge by the manifest's rule
(``manifest``). Checkpoints are read with ``torch.load(weights_only=True)``: no code from the
folder ever runs. nnU-Net checkpoints also hold
training logs with numpy scalars, so the few numpy *data* reconstructors (scalar, dtype) are allowed;
nothing else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from segmenter.core.errors import ModelError
from segmenter.models.manifest import Manifest, NnUNetPart, verify_weights
from segmenter.nnunet.arch import UNet
from segmenter.nnunet.export import (
    DEFAULT_CHUNK_BYTES,
    ExportGeometry,
    SlabLabels,
    place_labels,
)
from segmenter.nnunet.model_steps import (
    PartMaps,
    apply_post,
    apply_pre,
    crop_region,
    restore,
)
from segmenter.nnunet.plans import (
    Configuration,
    DatasetInfo,
    Plans,
    network_for,
    parse_dataset,
    parse_plans,
    read_json,
)
from segmenter.nnunet.preprocess import Preprocessed, preprocess
from segmenter.nnunet.preprocess_device import preprocess_on_device
from segmenter.nnunet.sliding_window import (
    WindowSettings,
    sliding_window_logits,
    sliding_window_slabs,
)

if TYPE_CHECKING:  # SimpleITK stays out of the import path of headless GPU workers
    from segmenter.core.result import LabelledStructure, SegmentationResult
    from segmenter.core.volume import Volume

log = logging.getLogger(__name__)


def _numpy_safe_globals() -> list[Any]:
    out: list[Any] = [np.dtype]
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]  # the same name, numpy 1's path
    out.append(scalar)
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType", "Float16DType"):
        cls = getattr(np.dtypes, name, None)
        if cls is not None:
            out.append(cls)
    return out


@dataclass(frozen=True)
class Checkpoint:
    weights: dict[str, torch.Tensor]
    mirror_axes: tuple[int, ...] | None
    configuration: str | None


def load_checkpoint(path: Path) -> Checkpoint:
    """An nnU-Net checkpoint (or a bare state dict), loaded with weights_only=True."""
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"checkpoint {path} is missing") from None
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError/... for refused files
        raise ModelError(f"cannot load {path} with weights_only=True (refusing to execute code from "
                         f"a model file): {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: expected a checkpoint dictionary")
    weights = raw.get("network_weights", raw)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ModelError(f"{path}: no network weights found")
    axes = raw.get("inference_allowed_mirroring_axes")
    init_args = raw.get("init_args")
    config = init_args.get("configuration") if isinstance(init_args, dict) else None
    return Checkpoint(
        weights={str(k).removeprefix("_orig_mod."): v for k, v in weights.items()},
        mirror_axes=tuple(int(a) for a in axes) if axes is not None else None,
        configuration=str(config) if config is not None else None,
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ModelError(f"unknown device {name!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {name!r} asked for but CUDA is not available")
    return device


STREAM_ABOVE_BYTES = 2 * 1024**3  # whole-image float16 accumulator above which the export is streamed


@dataclass(frozen=True)
class EngineOptions:
    device: str = "auto"
    threads: int | None = None  # torch CPU threads
    batch_size: int = 1  # tiles per network call (halved on CUDA out-of-memory)
    export_chunk_bytes: int = DEFAULT_CHUNK_BYTES
    verify_checksums: bool = True
    tile_step: float | None = None  # override every part's
    mirroring: bool | None = None  # override every part's
    accumulate_dtype: torch.dtype = torch.float16
    # host memory the run may use; the whole-image logits accumulator may take a quarter of it,
    # above that the export runs slab by slab (STREAM_ABOVE_BYTES is that quarter of the default)
    memory_budget_bytes: int = 4 * STREAM_ABOVE_BYTES
    preprocess_on_device: bool | None = None  # None: with torch on CUDA, with numpy on the CPU


@dataclass
class NnUNetPartModel:
    """One nnU-Net model folder with its folds loaded, ready to predict."""

    plans: Plans
    config: Configuration
    dataset: DatasetInfo
    networks: list[nn.Module]
    settings: WindowSettings
    timings: dict[str, float] = field(default_factory=dict)
    channels_last: bool | None = None  # None: on the CPU only
    # export slab by slab as the sliding window finishes them (sliding_window_slabs): None = only when
    # the whole-image accumulator would exceed STREAM_ABOVE_BYTES. Streaming keeps the accumulator one
    # tile deep; since SlabLabels._pick its export is as fast as the whole-image one (117 classes,
    # 200 slices, 2-core VM: 22.2 against 22.1 s, peak RSS 4.6 against 5.8 GiB). The rule stays
    # because the published figures of smaller models were taken on the whole-image path
    stream: bool | None = None
    stream_above_bytes: int = STREAM_ABOVE_BYTES
    # crop, normalise and resample with torch on the prediction device (None: on CUDA only; the CPU
    # keeps the numpy path, which is bit-identical to nnU-Net's scipy resampling)
    preprocess_on_device: bool | None = None

    @classmethod
    def load(cls, folder: Path, configuration: str | None, folds: Sequence[str],
             checkpoint: str = "checkpoint_final.pth", tile_step: float = 0.5, mirroring: bool = True,
             batch_size: int = 1, accumulate_dtype: torch.dtype = torch.float16) -> NnUNetPartModel:
        plans = parse_plans(read_json(folder / "plans.json"))
        dataset = parse_dataset(read_json(folder / "dataset.json"))
        ckpts = [load_checkpoint(folder / f"fold_{f}" / checkpoint) for f in folds]
        if not ckpts:
            raise ModelError(f"{folder}: no folds given")
        name = configuration or ckpts[0].configuration or folder.name.rsplit("__", 1)[-1]
        config = plans.configuration(name)
        networks = []
        for f, ck in zip(folds, ckpts, strict=True):
            net = network_for(plans, config, dataset)
            try:
                net.load_state_dict(ck.weights, strict=True)
            except RuntimeError as exc:
                raise ModelError(f"{folder}/fold_{f}: weights do not fit the plans' network: {exc}") from exc
            networks.append(net.eval())
        axes = ckpts[0].mirror_axes if mirroring else None
        settings = WindowSettings(tile_step=tile_step, mirror_axes=axes or None, batch_size=batch_size,
                                  accumulate_dtype=accumulate_dtype)
        log.info("loaded nnU-Net part %s (%s, %d fold(s), %d classes)", folder.name, name, len(networks),
                 dataset.num_heads)
        return cls(plans, config, dataset, networks, settings)

    def to(self, device: torch.device) -> NnUNetPartModel:
        self.networks = [n.to(device) for n in self.networks]
        for net in self.networks:
            if isinstance(net, UNet):
                # oneDNN convolves channels-last about twice as fast; on CUDA the tested NCDHW path stays
                net.set_channels_last(device.type == "cpu" if self.channels_last is None else self.channels_last)
        return self

    def _labels(self, pre: Preprocessed, device: torch.device, chunk_bytes: int) -> tuple[np.ndarray, float]:
        """Cropped label map and the seconds spent exporting; sliding window and export together so
        that, streamed, the full logits never exist. CUDA out of memory: fewer tiles per batch,
        then the CPU, each time from the start."""
        settings = self.settings
        heads = self.dataset.num_heads
        while True:
            writer = SlabLabels(heads, pre.data.shape[1:], pre.shape_after_cropping,  # type: ignore[arg-type]
                                self.config.resampling_probabilities, pre.target_spacing, pre.original_spacing,
                                chunk_bytes)
            # the whole-image path holds one fold's accumulator and the running sum of the folds
            copies = 2 if len(self.networks) > 1 else 1
            whole_bytes = copies * heads * int(np.prod(pre.data.shape[1:])) * settings.accumulate_dtype.itemsize
            wanted = whole_bytes > self.stream_above_bytes if self.stream is None else self.stream
            stream = wanted and writer.chunk_axis == 0
            export_s = 0.0
            try:
                self.to(device)
                x = torch.as_tensor(pre.data).to(device)
                if stream:
                    for _, slab in sliding_window_slabs(self.networks, x, self.config.patch_size, heads, settings):
                        t0 = time.perf_counter()
                        writer.feed(slab)
                        export_s += time.perf_counter() - t0
                else:
                    logits = sliding_window_logits(self.networks, x, self.config.patch_size, heads, settings)
                    if logits.device.type == "cuda":
                        torch.cuda.synchronize(logits.device)
                    t0 = time.perf_counter()
                    writer.feed(logits)
                    del logits
                    export_s += time.perf_counter() - t0
                return writer.result(), export_s
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if settings.batch_size > 1:
                    settings = replace(settings, batch_size=settings.batch_size // 2)
                    log.warning("CUDA out of memory: retrying with %d tiles per batch", settings.batch_size)
                else:
                    log.warning("CUDA out of memory with one tile per batch: falling back to the CPU")
                    device = torch.device("cpu")

    def _preprocess(self, channels: np.ndarray, spacing_zyx: tuple[float, float, float],
                    device: torch.device) -> Preprocessed:
        on_device = device.type == "cuda" if self.preprocess_on_device is None else self.preprocess_on_device
        if not on_device:
            return preprocess(channels, spacing_zyx, self.plans, self.config)
        try:
            pre = preprocess_on_device(channels, spacing_zyx, self.plans, self.config, device)
            if device.type == "cuda":  # the stage's time is its own, not the sliding window's
                torch.cuda.synchronize(device)
            return pre
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            log.warning("CUDA out of memory while preprocessing: preprocessing on the CPU instead")
            return preprocess(channels, spacing_zyx, self.plans, self.config)

    def predict(self, image: np.ndarray, spacing_zyx: tuple[float, float, float], device: torch.device,
                chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> np.ndarray:
        """Label map (dataset label ids) of a (z, y, x) image or (c, z, y, x) channels."""
        channels = image[None] if image.ndim == 3 else image
        t0 = time.perf_counter()
        pre = self._preprocess(channels, spacing_zyx, device)
        t1 = time.perf_counter()
        cropped, export_s = self._labels(pre, device, chunk_bytes)
        t2 = time.perf_counter()
        geometry = ExportGeometry(pre.shape_after_cropping, pre.shape_before_cropping, pre.bbox,
                                  pre.target_spacing, pre.original_spacing, self.plans.transpose_backward)
        labels = place_labels(cropped, geometry)
        t3 = time.perf_counter()
        # streamed, the export runs between slabs of the sliding window: its share is split out
        self.timings = {"preprocess": t1 - t0, "predict": t2 - t1 - export_s, "export": export_s + t3 - t2}
        log.info("part %s: preprocess %.1fs, predict %.1fs, export %.1fs", self.dataset.labels.get(1, "?"),
                 *self.timings.values())
        return labels


def merge_parts(maps: Sequence[tuple[np.ndarray, dict[int, str | None]]], rule: str,
                ) -> tuple[np.ndarray, tuple[LabelledStructure, ...]]:
    """One label map from several parts' maps (each with its label id -> structure name map).

    Structures get new ids 1..n in order of first appearance; ``last_wins``: a later part's
    foreground overwrites; ``first_wins``: a later part fills only background voxels.
    """
    from segmenter.core.result import LabelledStructure

    ids: dict[str, int] = {}
    for _, names in maps:
        for _, name in sorted(names.items()):
            if name is not None and name not in ids:
                ids[name] = len(ids) + 1
    if not maps:
        raise ModelError("nothing to merge")
    dtype = np.uint8 if len(ids) <= 255 else np.uint16
    out = np.zeros(maps[0][0].shape, dtype=dtype)
    for labels, names in maps:
        lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=dtype)
        for label, name in names.items():
            if name is not None and label < lut.size:
                lut[label] = ids[name]
        mapped = lut[labels]
        write = mapped > 0 if rule == "last_wins" else (mapped > 0) & (out == 0)
        out[write] = mapped[write]
    return out, tuple(LabelledStructure(i, n) for n, i in ids.items())


class NnUNetEngine:
    """A registered nnU-Net v2 model (one or more parts), kept loaded between calls."""

    def __init__(self, manifest: Manifest, options: EngineOptions | None = None) -> None:
        if manifest.kind != "nnunet_v2":
            raise ModelError(f"model {manifest.id!r} is of kind {manifest.kind!r}, not nnunet_v2")
        self.manifest = manifest
        self.options = options or EngineOptions()
        self.device = resolve_device(self.options.device)
        self.parts: list[NnUNetPartModel] = []
        self.timings: dict[str, float] = {}  # the last segment(): seconds per part ("part NAME") and "merge"
        for part in manifest.parts:
            if self.options.verify_checksums:
                verify_weights(manifest, part)
            self.parts.append(self._load(part))

    @property
    def model_id(self) -> str:
        return self.manifest.id

    @property
    def version(self) -> str:
        return self.manifest.version

    def _load(self, part: NnUNetPart) -> NnUNetPartModel:
        opts = self.options
        model = NnUNetPartModel.load(
            self.manifest.folder(part), part.configuration, part.folds, part.checkpoint,
            tile_step=opts.tile_step if opts.tile_step is not None else part.tile_step,
            mirroring=opts.mirroring if opts.mirroring is not None else part.mirroring,
            batch_size=opts.batch_size, accumulate_dtype=opts.accumulate_dtype,
        ).to(self.device)
        model.stream_above_bytes = opts.memory_budget_bytes // 4
        model.preprocess_on_device = opts.preprocess_on_device
        return model

    def _run_part(self, model_part: NnUNetPartModel, part: NnUNetPart, work: Volume, maps: PartMaps) -> np.ndarray:
        """One part's label map on the working grid; a part with a crop runs inside its box only
        (or everywhere, cleared outside, with ``run_on: full``), or not at all when what the crop
        depends on is absent."""
        spacing_zyx = (work.spacing[2], work.spacing[1], work.spacing[0])
        chunk = self.options.export_chunk_bytes
        box = crop_region(part.crop, maps, work) if part.crop is not None else None
        if part.crop is None:
            return model_part.predict(work.array, spacing_zyx, self.device, chunk)
        labels = np.zeros(work.shape, dtype=np.uint8 if self._max_label(model_part) <= 255 else np.uint16)
        if box is None:
            return labels
        if part.crop.run_on == "full":
            full = model_part.predict(work.array, spacing_zyx, self.device, chunk)
            labels[box] = full[box]
        else:
            labels[box] = model_part.predict(np.ascontiguousarray(work.array[box]), spacing_zyx, self.device, chunk)
        return labels

    @staticmethod
    def _max_label(model_part: NnUNetPartModel) -> int:
        return max(model_part.dataset.labels, default=0)

    def segment(self, volume: Volume) -> SegmentationResult:
        from segmenter.core.result import SegmentationResult

        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        work, undos = apply_pre(volume, self.manifest.pre)
        if self.manifest.pre:
            log.info("model %s: working grid %s at %s mm (input %s at %s mm)", self.manifest.id, work.shape,
                     work.spacing, volume.shape, volume.spacing)
        maps: PartMaps = {}
        timings: dict[str, float] = {}
        for i, (model_part, part) in enumerate(zip(self.parts, self.manifest.parts, strict=True), start=1):
            t0 = time.perf_counter()
            maps[part.name] = (self._run_part(model_part, part, work, maps), part.labels)
            timings[f"part {part.name}"] = time.perf_counter() - t0
            log.info("model %s: part %s (%d/%d) took %.2f s", self.manifest.id, part.name, i, len(self.parts),
                     timings[f"part {part.name}"])
        t0 = time.perf_counter()
        merged, structures = merge_parts(list(maps.values()), self.manifest.merge)
        timings["merge"] = time.perf_counter() - t0
        log.info("model %s: merge of %d part(s) took %.2f s", self.manifest.id, len(maps), timings["merge"])
        self.timings = timings
        merged = apply_post(merged, structures, self.manifest.post, work.spacing)
        merged = restore(merged, undos)
        log.info("model %s %s on %s: %d structures", self.manifest.id, self.manifest.version, self.device,
                 len(structures))
        return SegmentationResult(labels=volume.with_array(merged), structures=structures,
                                  model_id=self.manifest.id, model_version=self.manifest.version)
