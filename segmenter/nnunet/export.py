"""Map network-resolution logits back to the input grid as a label map, in bounded memory.

nnU-Net resamples the full float logits of every class to the input's shape with scipy, then
takes the argmax: for 117 classes on a 512x512x300 CT that is ~37 GB of float32 (nnU-Net #2912,
#2540). We do the same maths with torch — linear interpolation on the half-pixel grid with edge
clamping, which equals skimage's ``resize(order=1, mode='edge')``; for anisotropic data
(nnU-Net's separate-z rule) linear in-plane and nearest along the low-resolution axis — but a
chunk of output slices at a time, taking the argmax of each chunk before the next. Fed slab by slab
from ``sliding_window_slabs`` (``SlabLabels``), not even the network-resolution logits exist whole:
the largest arrays are the sliding window's tile-deep float16 accumulator and the label map.
As in nnU-Net, the resampled logits are rounded to the logits' dtype (float16) before the argmax.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from segmenter.core.errors import ModelError
from segmenter.nnunet.plans import Resampling
from segmenter.nnunet.preprocess import nearest_indices, separate_z_axis

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class ExportGeometry:
    shape_after_cropping: tuple[int, int, int]
    shape_before_cropping: tuple[int, int, int]
    bbox: tuple[tuple[int, int], ...]
    current_spacing: tuple[float, float, float]  # spacing of the logits
    original_spacing: tuple[float, float, float]
    transpose_backward: tuple[int, int, int]


def _linear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of linear interpolation on the half-pixel grid, clamped at the edges."""
    scale = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.clip(src, 0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def chunk_slices(n_classes: int, out_plane: tuple[int, int], in_plane: tuple[int, int], budget_bytes: int) -> int:
    """Output slices per chunk such that the float32 working arrays stay within ``budget_bytes``."""
    per_slice = 4 * n_classes * (2 * in_plane[0] * in_plane[1] + out_plane[0] * out_plane[1])
    return max(1, int(budget_bytes // max(per_slice, 1)))


def _argmax_dtype(n_classes: int) -> np.dtype:
    return np.dtype(np.uint8) if n_classes <= 255 else np.dtype(np.uint16)


def argmax_classes(slab: torch.Tensor) -> torch.Tensor:
    """``slab.argmax(1)`` of (n, classes, ...) as uint8 (int16 beyond 255 classes), by a running
    maximum over the classes.

    torch's argmax over the class axis of NCHW data reduces along a strided axis and was 72 % of
    the export; class-by-class comparisons are contiguous elementwise passes, about 4x faster. A
    class replaces the running winner only when strictly greater, so ties go to the lowest class,
    as with argmax."""
    n_classes = int(slab.shape[1])
    best = slab[:, 0].clone()
    index = torch.zeros(best.shape, dtype=torch.uint8 if n_classes <= 256 else torch.int16, device=slab.device)
    higher = torch.empty(best.shape, dtype=torch.bool, device=slab.device)
    for c in range(1, n_classes):
        value = slab[:, c]
        torch.gt(value, best, out=higher)
        index.masked_fill_(higher, c)
        torch.maximum(best, value, out=best)
    return index


class SlabLabels:
    """argmax of logits (C, a, b, c) resampled to ``out_shape``, fed as consecutive slabs along the
    chunked axis (the separate axis of nnU-Net's rule, else the first), so the whole logits never
    need to exist (``sliding_window_slabs``); fed whole, it is ``logits_to_labels``.

    Each output slice interpolates between two input slices along that axis: it is computed as
    soon as both have arrived, the last input slice of a slab being kept for the next one."""

    def __init__(self, n_classes: int, in_shape: tuple[int, int, int], out_shape: tuple[int, int, int],
                 resampling: Resampling, current_spacing: tuple[float, ...], new_spacing: tuple[float, ...],
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        if resampling.order not in (0, 1) and tuple(in_shape) != tuple(out_shape):
            raise ModelError(f"probability resampling of order {resampling.order} is not supported (0 or 1)")
        axis = separate_z_axis(resampling, current_spacing, new_spacing)
        self.chunk_axis = 0 if axis is None else axis
        self.perm = [self.chunk_axis] + [i for i in range(3) if i != self.chunk_axis]
        out_p = tuple(out_shape[p] for p in self.perm)
        self.n_in = int(in_shape[self.chunk_axis])
        self.in_plane = tuple(int(in_shape[p]) for p in self.perm[1:])
        self.out_plane = (out_p[1], out_p[2])
        if axis is None and resampling.order == 1:
            self.i0, self.i1, self.w = _linear_weights(self.n_in, out_p[0])
        else:  # separate axis (order_z 0) or order 0 everywhere: nearest along the chunk axis
            if axis is not None and resampling.order_z != 0:
                raise ModelError(f"order_z={resampling.order_z} is not supported (nnU-Net's default is 0)")
            self.i0 = nearest_indices(self.n_in, out_p[0])
            self.i1, self.w = self.i0, np.zeros(out_p[0], dtype=np.float32)
        self.mode = "bilinear" if resampling.order == 1 else "nearest-exact"
        self.labels = np.empty(out_p, dtype=_argmax_dtype(n_classes))
        self.step = chunk_slices(n_classes, self.out_plane, self.in_plane, chunk_bytes)  # type: ignore[arg-type]
        self.done = 0  # output slices written
        self.received = 0  # input slices fed
        self.kept: torch.Tensor | None = None  # the last input slice fed, (C, 1, ...)

    @staticmethod
    def _pick(slab: torch.Tensor, rel: np.ndarray) -> torch.Tensor:
        """Slices ``rel`` of the slab as float32. A streamed slab is a window of the sliding window's
        accumulator, so its class axis is strided: an index_select straight from it took 7x as long
        on the CPU (0.54 against 0.08 s for 4 slices of 117 classes at 273x273), and made the
        streamed export 1.7x slower than the whole one. The range the slices span is cast in one
        strided copy instead (0.04 s), then picked from, where it is not already the answer."""
        lo, hi = int(rel.min()), int(rel.max()) + 1
        if hi - lo > 2 * len(rel):  # sparse picks (a strong downsampling): do not copy the gaps
            return slab.index_select(1, torch.from_numpy(rel).to(slab.device)).float()
        block = slab[:, lo:hi].float()
        if bool(np.all(np.diff(rel) == 1)):  # consecutive: the block is the answer
            return block
        return block.index_select(1, torch.from_numpy(rel - lo).to(slab.device))

    def _gather(self, slab: torch.Tensor, first: int, index: np.ndarray) -> torch.Tensor:
        """Input slices ``index`` (absolute) from the slab starting at ``first`` or the kept one."""
        if self.kept is None or int(index.min()) >= first:
            return self._pick(slab, index - first)
        out = torch.empty((slab.shape[0], len(index), *slab.shape[2:]), dtype=torch.float32, device=slab.device)
        old_np, new_np = np.nonzero(index < first)[0], np.nonzero(index >= first)[0]
        old = torch.from_numpy(old_np).to(slab.device)
        out.index_copy_(1, old, self.kept.float().expand(-1, len(old), -1, -1))
        if len(new_np):
            out.index_copy_(1, torch.from_numpy(new_np).to(slab.device), self._pick(slab, index[new_np] - first))
        return out

    @torch.inference_mode()
    def feed(self, slab: torch.Tensor) -> None:
        """The next input slices, (C, n, ...) in the model's axis order."""
        src = slab.permute(0, *[p + 1 for p in self.perm])
        if self.chunk_axis != 0 and (self.received or int(src.shape[1]) != self.n_in):
            raise ModelError("internal: slabs along the first axis cannot feed an export chunked along "
                             f"axis {self.chunk_axis}; feed the whole logits")
        first, stop_in = self.received, self.received + int(src.shape[1])
        if stop_in > self.n_in:
            raise ModelError(f"internal: {stop_in} input slices fed, the logits have {self.n_in}")
        ready = int(np.searchsorted(self.i1, stop_in, side="left"))  # outputs whose inputs have all arrived
        for start in range(self.done, ready, self.step):
            stop = min(ready, start + self.step)
            wt = torch.from_numpy(self.w[start:stop]).to(src.device).view(1, -1, 1, 1)
            lo = self._gather(src, first, self.i0[start:stop])
            if bool((wt != 0).any()):
                hi = self._gather(src, first, self.i1[start:stop])
                lo = torch.lerp(lo, hi, wt)  # lo + w * (hi - lo)
                del hi
            interpolated = bool((wt != 0).any()) or self.in_plane != self.out_plane
            part = lo.permute(1, 0, 2, 3)  # (slices, classes, y, x)
            if self.in_plane != self.out_plane:
                kwargs = {"align_corners": False} if self.mode == "bilinear" else {}
                part = F.interpolate(part, size=self.out_plane, mode=self.mode, **kwargs)
            if interpolated and slab.dtype != part.dtype:
                # nnU-Net stores the resampled logits in the logits' own dtype (float16) before the
                # argmax: that rounding makes ties, which go to the lowest class
                part = part.to(slab.dtype)
            self.labels[start:stop] = argmax_classes(part).cpu().numpy().astype(self.labels.dtype, copy=False)
            del lo, part
        self.done = max(self.done, ready)
        self.received = stop_in
        self.kept = src[:, -1:].clone()

    def result(self) -> np.ndarray:
        if self.done != self.labels.shape[0] or self.received != self.n_in:
            raise ModelError(f"internal: {self.received} of {self.n_in} input slices fed, "
                             f"{self.done} of {self.labels.shape[0]} output slices written")
        return np.ascontiguousarray(self.labels.transpose(*np.argsort(self.perm)))


@torch.inference_mode()
def logits_to_labels(logits: torch.Tensor, out_shape: tuple[int, int, int], resampling: Resampling,
                     current_spacing: tuple[float, ...], new_spacing: tuple[float, ...],
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> np.ndarray:
    """argmax over classes of ``logits`` (C, a, b, c) resampled to ``out_shape``, chunk by chunk."""
    if logits.ndim != 4:
        raise ModelError(f"logits must be (classes, z, y, x), got {tuple(logits.shape)}")
    writer = SlabLabels(int(logits.shape[0]), tuple(int(s) for s in logits.shape[1:]),  # type: ignore[arg-type]
                        out_shape, resampling, current_spacing, new_spacing, chunk_bytes)
    writer.feed(logits)
    return writer.result()


def place_labels(cropped: np.ndarray, geometry: ExportGeometry) -> np.ndarray:
    """The cropped label map put back into the uncropped, untransposed grid."""
    full = np.zeros(geometry.shape_before_cropping, dtype=cropped.dtype)
    full[tuple(slice(a, b) for a, b in geometry.bbox)] = cropped
    return np.ascontiguousarray(full.transpose(*geometry.transpose_backward))
