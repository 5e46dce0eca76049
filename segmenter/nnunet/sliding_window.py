"""Sliding-window inference with nnU-Net v2's tiling and Gaussian weighting.

``compute_steps`` and ``gaussian_importance_map`` reproduce nnU-Net's
``compute_steps_for_sliding_window`` and ``compute_gaussian`` (sigma = tile/8, scaled to a maximum
of 10, stored as float16, zeros replaced by the smallest non-zero value). Tiles are visited in
nnU-Net's order; logits are accumulated as ``sum(w * logits) / sum(w)`` in float16 by default (as
nnU-Net does, which halves the memory of the accumulator; float32 on request).

Folds are combined in nnU-Net's order and precision: each fold has its own float16 accumulator,
divided by the weights on its own; then the folds' averages are summed, in float16, and divided by
their number. The order matters at the volume's edges: there only a tile's rim covers a voxel, the
Gaussian's weights there are float16 subnormals (down to 6e-8), so ``w * logits`` keeps a few bits;
summing the folds before that rounding (one accumulator for all folds) changed the label of 2 % of
the first slice's voxels on a 2-fold model.

Unlike nnU-Net's predictor the whole (small) preprocessed image, the accumulators and every fold's
network live on one device: tiles are cut, batched, predicted, weighted and added there, with no
per-tile copy to the host. The whole-image path runs the folds one after another (the running sum
and one fold's accumulator: twice one accumulator, as nnU-Net); ``sliding_window_slabs`` runs every
fold on a tile before the next one and hands the averaged logits out slab by slab along the first
axis as soon as no later tile touches them, with one accumulator per fold only one tile deep. On
CUDA the network runs under autocast (float16), as nnU-Net does.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from segmenter.core.errors import ModelError
from segmenter.nnunet.arch import UNet

log = logging.getLogger(__name__)

SLAB_BYTES = 64 * 1024 * 1024  # logits of one slab of a tile, all classes, float32


@dataclass(frozen=True)
class WindowSettings:
    tile_step: float = 0.5  # fraction of the patch; TotalSegmentator uses 0.8
    mirror_axes: tuple[int, ...] | None = None  # spatial axes of the patch to mirror over (test-time augmentation)
    use_gaussian: bool = True
    batch_size: int = 1  # tiles per network call
    mixed_precision: bool = True  # autocast float16 on CUDA (never on CPU, as nnU-Net)
    accumulate_dtype: torch.dtype = torch.float16

    def __post_init__(self) -> None:
        if not 0 < self.tile_step <= 1:
            raise ModelError(f"tile step must lie in (0, 1], got {self.tile_step}")
        if self.batch_size < 1:
            raise ModelError(f"batch size must be at least 1, got {self.batch_size}")


def compute_steps(image_size: Sequence[int], tile_size: Sequence[int], tile_step: float) -> list[list[int]]:
    """Start offsets per axis (nnU-Net's compute_steps_for_sliding_window)."""
    steps = []
    for size, tile in zip(image_size, tile_size, strict=True):
        if size < tile:
            raise ModelError(f"image size {size} is smaller than the tile {tile}; pad first")
        n = int(np.ceil((size - tile) / (tile * tile_step))) + 1
        step = (size - tile) / (n - 1) if n > 1 else 99999999999
        steps.append([int(np.round(step * i)) for i in range(n)])
    return steps


@lru_cache(maxsize=4)
def _gaussian_numpy(tile_size: tuple[int, ...], sigma_scale: float, value_scale: float) -> np.ndarray:
    tmp = np.zeros(tile_size)
    tmp[tuple(t // 2 for t in tile_size)] = 1
    g: np.ndarray = gaussian_filter(tmp, [t * sigma_scale for t in tile_size], 0, mode="constant", cval=0)
    g /= np.max(g) / value_scale
    return g


def gaussian_importance_map(tile_size: Sequence[int], device: torch.device | str = "cpu",
                            dtype: torch.dtype = torch.float16, sigma_scale: float = 1.0 / 8,
                            value_scale: float = 10.0) -> torch.Tensor:
    """nnU-Net's compute_gaussian(tile_size, 1/8, 10, dtype=float16)."""
    g = torch.from_numpy(_gaussian_numpy(tuple(int(t) for t in tile_size), sigma_scale, value_scale))
    g = g.to(device=device, dtype=dtype)
    zero = g == 0
    if bool(zero.any()):
        g[zero] = torch.min(g[~zero])
    return g


def pad_to_patch(data: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the last len(patch) axes to at least the patch (nnU-Net's pad_nd_image), and the
    slices that undo it."""
    spatial = data.shape[-len(patch):]
    pads: list[tuple[int, int]] = []
    undo: list[slice] = []
    for size, p in zip(spatial, patch, strict=True):
        diff = max(0, p - size)
        lo, hi = diff // 2, diff - diff // 2
        pads.append((lo, hi))
        undo.append(slice(lo, lo + size))
    if not any(sum(p) for p in pads):
        return data, tuple(undo)
    flat = [v for pair in reversed(pads) for v in pair]
    return torch.nn.functional.pad(data, flat, mode="constant", value=0.0), tuple(undo)


def tile_slicers(image_size: Sequence[int], patch: Sequence[int], tile_step: float) -> list[tuple[slice | int, ...]]:
    """Spatial slicers in nnU-Net's order; for a 2D patch on a 3D image, slice by slice."""
    if len(patch) == len(image_size) - 1:
        steps = compute_steps(image_size[1:], patch, tile_step)
        return [(d, *[slice(s, s + t) for s, t in zip(start, patch, strict=True)])
                for d in range(image_size[0]) for start in itertools.product(*steps)]
    steps = compute_steps(image_size, patch, tile_step)
    return [tuple(slice(s, s + t) for s, t in zip(start, patch, strict=True)) for start in itertools.product(*steps)]


def _batches(slicers: list[tuple[slice | int, ...]], size: int,
             by_first_axis: bool = False) -> Iterator[list[tuple[slice | int, ...]]]:
    """Tiles in order, ``size`` at a time; with ``by_first_axis`` a batch never mixes tiles that
    start at different slices (the streamed accumulator moves on between them)."""
    if not by_first_axis:
        for i in range(0, len(slicers), size):
            yield slicers[i:i + size]
        return
    for _, group in itertools.groupby(slicers, key=lambda sl: sl[0].start if isinstance(sl[0], slice) else sl[0]):
        tiles = list(group)
        for i in range(0, len(tiles), size):
            yield tiles[i:i + size]


def _mirror_mean(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 combos: list[tuple[int, ...]]) -> torch.Tensor:
    out = fn(x)
    for flip in combos:
        out = out + torch.flip(fn(torch.flip(x, flip)), flip)
    return out / (len(combos) + 1) if combos else out


def _combos(mirror_axes: tuple[int, ...] | None, ndim: int) -> list[tuple[int, ...]]:
    if not mirror_axes:
        return []
    if max(mirror_axes) > ndim - 3:
        raise ModelError(f"mirror axes {mirror_axes} do not fit a {ndim - 2}D patch")
    axes = [a + 2 for a in mirror_axes]
    return [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]


def _slab_slicer(sl: tuple[slice | int, ...], start: int, stop: int) -> tuple[slice | int, ...]:
    """The tile slicer restricted to [start, stop) along the tile's first spatial axis."""
    out = list(sl)
    k = next(i for i, s in enumerate(out) if isinstance(s, slice))
    first = out[k]
    assert isinstance(first, slice) and first.start is not None
    out[k] = slice(first.start + start, first.start + stop)
    return tuple(out)


def _head_logits(head: nn.Conv2d | nn.Conv3d, feats: torch.Tensor) -> torch.Tensor:
    """The 1x1 head on features (1, C, *S): class-major (K, *S) logits.

    Channels-last features are a (voxels, C) matrix; one matrix product then gives the logits
    already class-major, where the convolution would return them channels-last and every later
    per-class step (weighting, accumulation, argmax) would read them strided."""
    weight, bias = head.weight, head.bias
    c = int(feats.shape[1])
    if feats.dim() > 3 and feats.shape[0] == 1 and weight.dtype == feats.dtype and feats.is_contiguous(
            memory_format=torch.channels_last_3d if feats.dim() == 5 else torch.channels_last):
        flat = feats[0].movedim(0, -1).reshape(-1, c)  # a view
        w2 = weight.reshape(weight.shape[0], c)
        out = torch.mm(w2, flat.t()) if bias is None else torch.addmm(bias[:, None], w2, flat.t())
        return out.view(weight.shape[0], *feats.shape[2:])
    logits: torch.Tensor = head(feats)[0]
    return logits


def _fold_logits(networks: Sequence[nn.Module], x: torch.Tensor,
                 mirror_axes: tuple[int, ...] | None) -> list[torch.Tensor]:
    """Each fold's (mirror-averaged) logits of a batch of tiles."""
    combos = _combos(mirror_axes, x.ndim)
    out = [_mirror_mean(net, x, combos) for net in networks]
    if not out:
        raise ModelError("no network to run")
    return out


@torch.inference_mode()
def sliding_window_logits(networks: Sequence[nn.Module], data: torch.Tensor, patch: Sequence[int],
                          num_classes: int, settings: WindowSettings) -> torch.Tensor:
    """Fold-averaged logits (num_classes, *spatial) of ``data`` (channels, *spatial), on data's device.

    ``networks`` are the folds (already on the device, in eval mode), run one after another as
    nnU-Net's predictor does: each fold's averaged logits, then their sum over the folds, in the
    accumulator's dtype, divided by the number of folds.
    """
    if not networks:
        raise ModelError("no network to run")
    total: torch.Tensor | None = None
    for net in networks:
        logits = next(_final_slabs([net], data, patch, num_classes, settings, stream=False))[1]
        if total is None:
            total = logits
        else:
            total += logits
            del logits
    assert total is not None
    if len(networks) > 1:
        total /= len(networks)
    return total


def sliding_window_slabs(networks: Sequence[nn.Module], data: torch.Tensor, patch: Sequence[int],
                         num_classes: int, settings: WindowSettings) -> Iterator[tuple[int, torch.Tensor]]:
    """The same logits as ``sliding_window_logits``, as (first slice, logits[:, first:first + n])
    slabs along the first spatial axis, in order, each yielded as soon as no later tile touches it.

    The accumulator then spans one tile's depth instead of the whole image, one per fold (117
    classes on a 300-slice CT, one fold: 2.1 instead of 4.9 GiB of float16). A yielded slab is a
    view into that accumulator, valid until the next one is asked for. Same arithmetic, voxel for
    voxel, as the whole-image path; 2D patches and images thinner than the tile come as one slab."""
    yield from _final_slabs(networks, data, patch, num_classes, settings, stream=True)


@torch.inference_mode()  # torch wraps generators: the mode is on while this runs, off between slabs
def _final_slabs(networks: Sequence[nn.Module], data: torch.Tensor, patch: Sequence[int], num_classes: int,
                 settings: WindowSettings, stream: bool) -> Iterator[tuple[int, torch.Tensor]]:
    device = data.device
    padded, undo = pad_to_patch(data, patch)
    spatial = tuple(padded.shape[1:])
    slicers = tile_slicers(spatial, patch, settings.tile_step)
    # windowed only along an axis that tiles cover as slices and is not padded
    stream = stream and len(undo) == len(spatial) and undo[0] == slice(0, spatial[0])
    depth = int(patch[0]) if stream else int(spatial[0])
    folds = len(networks)
    # one accumulator per fold: nnU-Net divides each fold's by the weights before adding the folds
    acc = torch.zeros((folds, num_classes, depth, *spatial[1:]), dtype=settings.accumulate_dtype, device=device)
    weight_sum = torch.zeros((depth, *spatial[1:]), dtype=settings.accumulate_dtype, device=device)
    gauss_h = gaussian_importance_map(patch, device) if settings.use_gaussian else torch.ones(
        tuple(patch), dtype=torch.float16, device=device)
    gauss = gauss_h.float()
    autocast = settings.mixed_precision and device.type == "cuda"
    log.debug("sliding window: %d tiles of %s over %s, step %.2f, %d fold(s), mirror %s, batch %d, window %d",
              len(slicers), tuple(patch), spatial, settings.tile_step, folds, settings.mirror_axes,
              settings.batch_size, depth)
    unets = [n for n in networks if isinstance(n, UNet)]
    if len(unets) != len(networks):  # the features-then-head path needs every fold to be one of our U-Nets
        unets = []
    combos = _combos(settings.mirror_axes, len(patch) + 2)
    plane = int(np.prod(patch[1:]))
    slab = max(1, min(int(patch[0]), SLAB_BYTES // max(1, 4 * num_classes * plane)))
    base = 0  # image slice of the accumulator's first slice

    def finish(n: int) -> torch.Tensor:
        """Average the accumulators' first n slices in place, fold by fold, then over the folds
        into the first fold's (nnU-Net's order); their logits."""
        for c in range(num_classes):  # class by class: no temporary of the accumulator's size
            for f in range(folds):
                torch.div(acc[f, c, :n], weight_sum[:n], out=acc[f, c, :n])
                if bool(torch.isinf(acc[f, c, :n]).any()):
                    raise ModelError("infinite logits after averaging; use a float32 accumulator for this model")
            for f in range(1, folds):
                acc[0, c, :n] += acc[f, c, :n]
            if folds > 1:
                acc[0, c, :n] /= folds
        out = acc[0, :, :n]
        return out[(slice(None), *undo)] if len(undo) == len(spatial) else out[(slice(None), slice(None), *undo)]

    def advance(n: int) -> None:
        """Drop the accumulators' first n slices (already yielded), zero n new ones at their end."""
        for d in range(depth - n):  # ascending: a slice is read before anything overwrites it
            acc[:, :, d].copy_(acc[:, :, d + n])
            weight_sum[d].copy_(weight_sum[d + n])
        acc[:, :, depth - n:].zero_()
        weight_sum[depth - n:].zero_()

    for batch in _batches(slicers, settings.batch_size, stream):
        first = batch[0][0]
        if stream and isinstance(first, slice) and first.start > base:  # no later tile starts lower
            n = int(first.start) - base
            yield base, finish(n)
            advance(n)
            base += n
        if stream:
            batch = [_shift(sl, base) for sl in batch]
        x = torch.stack([padded[(slice(None), *_shift(sl, -base))] for sl in batch])
        if unets:
            # mirror-combine each fold's features, then apply its 1x1 head one slab at a time: a
            # tile's logits for every class never exist at once (117 classes x 128^3 = 1 GB)
            with torch.autocast(device.type, enabled=autocast):
                feats = [(_mirror_mean(net.features, x, combos), net.head) for net in unets]
            for i, sl in enumerate(batch):
                for start in range(0, int(patch[0]), slab):
                    stop = min(int(patch[0]), start + slab)
                    for f, (fold_feats, head) in enumerate(feats):
                        with torch.autocast(device.type, enabled=autocast):
                            logits = _head_logits(head, fold_feats[i:i + 1, :, start:stop])
                        part = logits.float()
                        if settings.use_gaussian:
                            part.mul_(gauss[start:stop])
                        acc[(f, slice(None), *_slab_slicer(sl, start, stop))] += part
                weight_sum[sl] += gauss_h.to(weight_sum.dtype)
            del feats, x
            continue
        with torch.autocast(device.type, enabled=autocast):
            preds = _fold_logits(networks, x, settings.mirror_axes)
        for f, pred in enumerate(preds):
            pred = pred.float()  # in place from here on: no second copy of a tile's logits for every class
            if settings.use_gaussian:
                pred.mul_(gauss)
            for i, sl in enumerate(batch):
                acc[(f, slice(None), *sl)] += pred[i]
            del pred
        for sl in batch:
            weight_sum[sl] += gauss_h.to(weight_sum.dtype)
        del preds, x
    yield base, finish(int(spatial[0]) - base)


def _shift(sl: tuple[slice | int, ...], offset: int) -> tuple[slice | int, ...]:
    """A tile slicer moved by -offset along its first axis (image <-> accumulator window)."""
    if offset == 0:
        return sl
    first = sl[0]
    assert isinstance(first, slice)
    return (slice(first.start - offset, first.stop - offset), *sl[1:])
