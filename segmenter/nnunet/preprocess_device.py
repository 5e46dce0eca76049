"""nnU-Net v2 preprocessing in torch, on the device the network runs on.

The same steps and maths as ``nnunet_preprocess`` (transpose, crop to non-zero, normalise, separable
order-3 resampling with the separate-z rule), so that on a GPU the CT crosses the bus once, in its
stored integer type, and never comes back: cropping, normalisation and resampling run where the
sliding window will read the result. The resampling matrices are the same scipy-derived ones
(``zoom_matrix``), applied in float64 as on the CPU path; only the summation order of the products
differs, so results agree with the CPU path to float32 rounding (tested), not bit for bit.

The crop box is taken without filling the mask's holes, as on the CPU path (``nonzero_bbox`` says
why that gives nnU-Net's box).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from segmenter.core.errors import ModelError
from segmenter.nnunet.plans import Configuration, Plans, Resampling
from segmenter.nnunet.preprocess import (
    Preprocessed,
    crop_geometry,
    nearest_indices,
    normalisation_steps,
    separate_z_axis,
    zoom_matrix,
)

log = logging.getLogger(__name__)

# dtypes torch takes from numpy as they are: no widening copy on the host before the upload
_UPLOAD_AS_IS = {np.dtype(t) for t in ("int8", "uint8", "int16", "uint16", "int32", "int64", "float16",
                                        "float32", "float64")}


def upload(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """``image`` on ``device`` as float32; integer CTs travel in their own (smaller) type."""
    host = np.ascontiguousarray(image)
    if host.dtype not in _UPLOAD_AS_IS:
        host = host.astype(np.float32)
    return torch.from_numpy(host).to(device).to(torch.float32)


def nonzero_bbox_t(data: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """nnU-Net's crop_to_nonzero box of a (c, *spatial) tensor (see the module docstring)."""
    mask = (data != 0).any(dim=0)
    if not bool(mask.any()):
        return tuple((0, 0) for _ in mask.shape)
    box = []
    for ax in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != ax)
        hit = torch.nonzero(mask.any(dim=other)).flatten()
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def normalise_t(data: torch.Tensor, plans: Plans, config: Configuration) -> torch.Tensor:
    """``nnunet_preprocess.normalise`` on a float32 tensor, in place on a copy."""
    out = data.clone()
    for c, scheme, props in normalisation_steps(plans, config):
        img = out[c]
        if scheme == "CTNormalization" and props is not None:
            img.clamp_(props.percentile_00_5, props.percentile_99_5)
            img.sub_(props.mean).div_(max(props.std, 1e-8))
        elif scheme == "ZScoreNormalization":
            # float64 statistics, as numpy's pairwise float32 sums are closer to exact than torch's
            mean, std = float(img.double().mean()), float(img.double().std(correction=0))
            img.sub_(mean).div_(max(std, 1e-8))
        elif scheme == "RescaleTo01Normalization":
            lo = float(img.min())
            img.sub_(lo)
            img.div_(max(float(img.max()), 1e-8))
    return out


def zoom_separable_t(x: torch.Tensor, shape: tuple[int, ...], order: int) -> torch.Tensor:
    """``nnunet_preprocess.zoom_separable`` in torch (float64 in and out)."""
    axes = sorted((ax for ax in range(x.ndim) if x.shape[ax] != shape[ax]), key=lambda ax: shape[ax] / x.shape[ax])
    for ax in axes:
        # the cached matrix is read-only; torch wants its own copy
        matrix = torch.from_numpy(zoom_matrix(int(x.shape[ax]), int(shape[ax]), order).copy()).to(x.device)
        before, n, after = int(np.prod(x.shape[:ax])), int(x.shape[ax]), int(np.prod(x.shape[ax + 1:]))
        new_shape = (*x.shape[:ax], int(shape[ax]), *x.shape[ax + 1:])
        if after == 1:
            x = (x.reshape(before, n) @ matrix.T).reshape(new_shape)
        else:
            x = torch.matmul(matrix, x.reshape(before, n, after)).reshape(new_shape)
    return x.contiguous()


def resample_image_t(data: torch.Tensor, new_shape: tuple[int, ...], current: tuple[float, ...],
                     new: tuple[float, ...], resampling: Resampling) -> torch.Tensor:
    """``nnunet_preprocess.resample_image`` on a (c, z, y, x) float32 tensor."""
    if tuple(data.shape[1:]) == tuple(new_shape):
        return data
    axis = separate_z_axis(resampling, current, new)
    out = torch.empty((data.shape[0], *new_shape), dtype=torch.float32, device=data.device)
    for c in range(data.shape[0]):
        img = data[c].double()
        if axis is None:
            res = zoom_separable_t(img, new_shape, resampling.order)
            if resampling.order > 0:
                res.clamp_(float(img.min()), float(img.max()))
            out[c] = res
            continue
        # every slice across the low-resolution axis resized in-plane, clipped to its own range
        moved = img.movedim(axis, 0)
        plane = tuple(s for i, s in enumerate(new_shape) if i != axis)
        stack = zoom_separable_t(moved, (moved.shape[0], *plane), resampling.order)
        if resampling.order > 0:
            lo = moved.amin(dim=(1, 2), keepdim=True)
            hi = moved.amax(dim=(1, 2), keepdim=True)
            stack = torch.maximum(torch.minimum(stack, hi), lo)
        if stack.shape[0] != new_shape[axis]:
            if resampling.order_z != 0:
                raise ModelError(f"order_z={resampling.order_z} is not supported (nnU-Net's default is 0)")
            pick = torch.from_numpy(nearest_indices(stack.shape[0], new_shape[axis])).to(data.device)
            stack = stack.index_select(0, pick)
        out[c] = stack.movedim(0, axis)
    return out


def preprocess_on_device(image: np.ndarray, spacing_zyx: tuple[float, float, float], plans: Plans,
                         config: Configuration, device: torch.device) -> Preprocessed:
    """``nnunet_preprocess.preprocess`` with the data on ``device``: ``Preprocessed.data`` is a
    float32 tensor there."""
    if image.ndim != 4:
        raise ModelError(f"expected (channels, z, y, x), got shape {image.shape}")
    tf = plans.transpose_forward
    data = upload(image, device).permute(0, *[t + 1 for t in tf])
    bbox = nonzero_bbox_t(data)
    geo = crop_geometry(tuple(int(s) for s in data.shape[1:]), bbox,
                        tuple(float(spacing_zyx[t]) for t in tf), config)
    data = data[(slice(None), *[slice(a, b) for a, b in bbox])]
    data = normalise_t(data, plans, config)
    data = resample_image_t(data, geo.new_shape, geo.original_spacing, geo.target_spacing, config.resampling_data)
    log.debug("preprocessed on %s: %s -> crop %s -> %s", device, geo.shape_before_cropping,
              geo.shape_after_cropping, geo.new_shape)
    return geo.with_data(data.contiguous())
