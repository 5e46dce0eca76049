"""Preprocessing and export maths against skimage (what nnU-Net calls) and nnU-Net's rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.ndimage import map_coordinates
from skimage.transform import resize

from segmenter.nnunet.export import argmax_classes, chunk_slices, logits_to_labels
from segmenter.nnunet.plans import Resampling
from segmenter.nnunet.preprocess import (
    compute_new_shape,
    nearest_indices,
    nonzero_bbox,
    resample_image,
    separate_z_axis,
    skimage_resize,
    zoom_matrix,
)

DEFAULT = Resampling(order=3, order_z=0, force_separate_z=None)


@pytest.mark.parametrize(("current", "new", "axis"), [
    ((1.5, 1.5, 1.5), (1.0, 1.0, 1.0), None),
    ((5.0, 0.7, 0.7), (3.0, 0.8, 0.8), 0),  # the data is anisotropic
    ((1.0, 1.0, 1.0), (4.0, 1.0, 1.0), 0),  # the target is anisotropic
    ((1.0, 4.0, 4.0), (1.0, 1.0, 1.0), None),  # two low-resolution axes: no separate axis
    ((0.8, 0.8, 2.0), (0.8, 0.8, 2.0), None),
])
def test_separate_z_rule(current: tuple[float, ...], new: tuple[float, ...], axis: int | None) -> None:
    assert separate_z_axis(DEFAULT, current, new) == axis


def test_forced_separate_z() -> None:
    assert separate_z_axis(Resampling(3, 0, True), (1.0, 1.0, 2.0), (1.0, 1.0, 1.0)) == 2
    assert separate_z_axis(Resampling(3, 0, False), (5.0, 1.0, 1.0), (1.0, 1.0, 1.0)) is None


def test_new_shape_rounds_like_nnunet() -> None:
    assert compute_new_shape((300, 512, 512), (1.5, 0.8, 0.8), (1.5, 1.5, 1.5)) == (300, 273, 273)


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("shape", [(9, 17, 13), (20, 7, 31)])
def test_resize_equals_skimage(order: int, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(size=(12, 14, 15))
    ours = skimage_resize(img, shape, order)
    ref = resize(img, shape, order, mode="edge", anti_aliasing=False)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_nearest_indices_equal_map_coordinates() -> None:
    for n_in, n_out in [(12, 30), (30, 12), (7, 7), (5, 11)]:
        src = np.arange(n_in, dtype=float)
        coords = (n_in / n_out) * (np.arange(n_out) + 0.5) - 0.5
        ref = map_coordinates(src, coords[None], order=0, mode="nearest")
        assert np.array_equal(nearest_indices(n_in, n_out), ref.astype(int))


def test_separate_z_image_resampling() -> None:
    rng = np.random.default_rng(1)
    img = rng.normal(size=(1, 6, 20, 22)).astype(np.float32)
    out = resample_image(img, (10, 30, 33), (5.0, 1.0, 1.0), (3.0, 0.667, 0.667), DEFAULT)
    idx = nearest_indices(6, 10)
    for k in range(10):
        np.testing.assert_allclose(out[0, k], skimage_resize(img[0, idx[k]], (30, 33), 3), atol=1e-5)


def _filled_box(data: np.ndarray) -> tuple[tuple[int, int], ...]:
    """nnU-Net's own box: of the mask with its holes filled."""
    mask = ndimage.binary_fill_holes(np.any(data != 0, axis=0))
    if not mask.any():
        return tuple((0, 0) for _ in mask.shape)
    return tuple((int(s.start), int(s.stop)) for s in ndimage.find_objects(mask.astype(np.uint8))[0])


def _masks_with_holes() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    out = [np.zeros((2, 5, 6, 7), np.float32)]
    shell = np.zeros((1, 10, 12, 14), np.float32)
    shell[0, 2:8, 3:9, 4:10] = 1
    shell[0, 3:7, 4:8, 5:9] = 0  # a hollow box: one big hole
    shell[0, 2, 3:9, 4:10] = 0  # and a dent in its face
    out.append(shell)
    for k in range(30):  # sparse clouds, blobs and two-channel mixes
        data = (rng.random((2, 9, 11, 13)) < rng.uniform(0.002, 0.3)).astype(np.float32)
        if k % 3 == 0:
            data[1] = 0
        out.append(data)
    return out


@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_nonzero_bbox_is_the_filled_masks_box(impl: str) -> None:
    from segmenter.nnunet.preprocess_device import nonzero_bbox_t

    for data in _masks_with_holes():
        box = nonzero_bbox(data) if impl == "numpy" else nonzero_bbox_t(torch.from_numpy(data))
        assert box == _filled_box(data)


@pytest.mark.parametrize(("current", "new", "out_shape"), [
    ((2.0, 2.0, 2.0), (1.0, 1.3, 1.1), (24, 20, 19)),  # trilinear
    ((3.0, 1.0, 1.0), (5.0, 0.7, 0.7), (6, 17, 15)),  # separate z: nearest along z, bilinear in-plane
])
@pytest.mark.parametrize("chunk", [1, 1 << 30])
def test_export_argmax_equals_skimage_path(current: tuple[float, ...], new: tuple[float, ...],
                                           out_shape: tuple[int, int, int], chunk: int) -> None:
    """Our torch chunked export = nnU-Net's resample_data_or_seg (order 1, order_z 0) + argmax."""
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(7, 12, 12, 11)).astype(np.float32)
    res = Resampling(order=1, order_z=0, force_separate_z=None)
    axis = separate_z_axis(res, current, new)
    ref = np.empty((7, *out_shape))
    for c in range(7):
        if axis is None:
            ref[c] = resize(logits[c].astype(float), out_shape, 1, mode="edge", anti_aliasing=False)
        else:
            idx = nearest_indices(12, out_shape[0])
            ref[c] = np.stack([resize(logits[c, i].astype(float), out_shape[1:], 1, mode="edge",
                                      anti_aliasing=False) for i in idx])
    ours = logits_to_labels(torch.from_numpy(logits), out_shape, res, current, new, chunk_bytes=chunk)
    assert (ours == ref.argmax(0)).mean() > 0.999


def test_chunk_size_respects_budget() -> None:
    n = chunk_slices(117, (512, 512), (273, 273), 512 * 2**20)
    assert n >= 1
    assert n * 4 * 117 * (2 * 273 * 273 + 512 * 512) <= 512 * 2**20


@pytest.mark.parametrize("n_classes", [2, 7, 300])
def test_running_argmax_equals_argmax_with_ties(n_classes: int) -> None:
    """Logits rounded to a coarse grid tie often; argmax's rule (first maximal class) must hold."""
    gen = torch.Generator().manual_seed(n_classes)
    slab = torch.round(torch.randn(3, n_classes, 17, 19, generator=gen) * 2) / 2
    slab[0, :, 0, 0] = 1.0  # all classes tied
    ours = argmax_classes(slab)
    assert ours.dtype == (torch.uint8 if n_classes <= 256 else torch.int16)
    assert torch.equal(ours.long(), slab.argmax(1))
    assert int(ours[0, 0, 0]) == 0


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize(("src", "dst"), [((11, 40, 37), (11, 21, 20)), ((9, 17, 13), (20, 17, 31)),
                                          ((30, 8, 12), (7, 8, 12))])
def test_separable_resize_equals_scipy_3d_zoom(order: int, src: tuple[int, ...], dst: tuple[int, ...]) -> None:
    """Axis-by-axis matrix products = one 3D zoom (what skimage runs), axes with unchanged size
    included; the clip to the input's range as skimage does."""
    rng = np.random.default_rng(order)
    img = rng.normal(size=src) * 100
    zoom = [d / s for d, s in zip(dst, src, strict=True)]
    ref = ndimage.zoom(img, zoom, order=order, mode="nearest", grid_mode=True)
    ref = np.clip(ref, img.min(), img.max()) if order else ref
    np.testing.assert_allclose(skimage_resize(img, dst, order), ref, rtol=0, atol=1e-9)


def test_zoom_matrix_is_cached_and_read_only() -> None:
    m = zoom_matrix(10, 6, 3)
    assert m.shape == (6, 10) and m is zoom_matrix(10, 6, 3)
    with pytest.raises(ValueError):
        m[0, 0] = 1.0


def test_separate_z_planes_clip_per_slice() -> None:
    """Each slice is clipped to its own range (nnU-Net resizes slice by slice), not the volume's."""
    img = np.zeros((1, 3, 8, 8), np.float32)
    img[0, 0] = np.indices((8, 8)).sum(0) % 2 * 10  # a checkerboard overshoots under cubic splines
    img[0, 1] = 100.0
    img[0, 2] = -100.0
    out = resample_image(img, (3, 13, 13), (5.0, 1.0, 1.0), (5.0, 0.6, 0.6), DEFAULT)
    assert out[0, 0].min() >= 0.0 and out[0, 0].max() <= 10.0
    for k in range(3):
        np.testing.assert_allclose(out[0, k], skimage_resize(img[0, k], (13, 13), 3), atol=1e-4)


@pytest.mark.parametrize(("current", "new", "out_shape"), [
    ((2.0, 2.0, 2.0), (1.0, 1.3, 1.1), (24, 20, 19)),  # linear along the slabs' axis
    ((3.0, 1.0, 1.0), (5.0, 0.7, 0.7), (6, 17, 15)),  # separate first axis: nearest along it
    ((1.0, 1.0, 1.0), (5.0, 1.0, 1.0), (3, 12, 11)),  # every fourth slice: sparse picks
])
@pytest.mark.parametrize("cuts", [[12], [1, 11], [5, 5, 2], [3] * 4])
def test_export_fed_slab_by_slab_equals_whole(current: tuple[float, ...], new: tuple[float, ...],
                                              out_shape: tuple[int, int, int], cuts: list[int]) -> None:
    from segmenter.nnunet.export import SlabLabels

    rng = np.random.default_rng(3)
    logits = torch.from_numpy(rng.normal(size=(5, 12, 12, 11)).astype(np.float16))
    res = Resampling(order=1, order_z=0, force_separate_z=None)
    whole = logits_to_labels(logits, out_shape, res, current, new, chunk_bytes=1)
    writer = SlabLabels(5, (12, 12, 11), out_shape, res, current, new, chunk_bytes=1 << 20)
    start = 0
    for n in cuts:
        writer.feed(logits[:, start:start + n])
        start += n
    assert np.array_equal(writer.result(), whole)


def test_export_refuses_an_incomplete_feed() -> None:
    from segmenter.core.errors import ModelError
    from segmenter.nnunet.export import SlabLabels

    writer = SlabLabels(3, (8, 4, 4), (16, 4, 4), Resampling(1, 0, None), (1.0, 1.0, 1.0), (0.5, 1.0, 1.0))
    writer.feed(torch.zeros(3, 5, 4, 4))
    with pytest.raises(ModelError, match="5 of 8 input slices"):
        writer.result()


@pytest.mark.parametrize(("current", "new", "out_shape"), [
    ((2.0, 2.0, 2.0), (1.0, 1.3, 1.1), (24, 20, 19)),  # trilinear
    ((3.0, 1.0, 1.0), (5.0, 0.7, 0.7), (6, 17, 15)),  # separate z: nearest along z, bilinear in-plane
])
def test_float16_export_rounds_before_the_argmax_like_nnunet(current: tuple[float, ...], new: tuple[float, ...],
                                                             out_shape: tuple[int, int, int]) -> None:
    """nnU-Net resamples float16 logits in float64 and stores them as float16 before the argmax, so
    near-equal classes tie and the lowest wins; the float16 export gives the same labels where the
    argmax of the unrounded values would not."""
    rng = np.random.default_rng(3)
    # classes a few float16 steps apart (about 8 near 8.0): ties after rounding are frequent
    logits = (8.0 + rng.integers(0, 3, size=(5, 12, 12, 11)) * 2.0 ** -7).astype(np.float16)
    res = Resampling(order=1, order_z=0, force_separate_z=None)
    axis = separate_z_axis(res, current, new)
    ref = np.empty((5, *out_shape))
    for c in range(5):
        if axis is None:
            ref[c] = resize(logits[c].astype(float), out_shape, 1, mode="edge", anti_aliasing=False)
        else:
            idx = nearest_indices(12, out_shape[0])
            ref[c] = np.stack([resize(logits[c, i].astype(float), out_shape[1:], 1, mode="edge",
                                      anti_aliasing=False) for i in idx])
    rounded = ref.astype(np.float16).argmax(0)
    assert (rounded != ref.argmax(0)).mean() > 0.01, "the case must make ties"
    ours = logits_to_labels(torch.from_numpy(logits), out_shape, res, current, new)
    # float32 arithmetic against nnU-Net's float64: a value on a float16 rounding boundary may still
    # round the other way (1 voxel of 9,120 here, on logits made of such boundaries)
    assert (ours == rounded).mean() > 0.999
