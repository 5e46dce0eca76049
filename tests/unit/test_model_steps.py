"""Model-level steps (CADS's pre/post processing) declared in a manifest: validation at load, and
what each step does on synthetic volumes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from segmenter.core.result import LabelledStructure
from segmenter.core.volume import Volume
from segmenter.models.manifest import parse_manifest
from segmenter.models.steps import (
    ManifestError,
    RemoveFragments,
    Reorient,
    Resample,
    parse_crop,
)
from segmenter.nnunet.model_steps import (
    apply_post,
    apply_pre,
    closest_axes,
    crop_region,
    restore,
)
from segmenter.nnunet.preprocess import zoom_separable

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _manifest(**extra: Any) -> dict[str, Any]:
    part = {"folder": "f", "configuration": "3d_fullres", "folds": ["0"], "labels": {"1": "Liver", "2": "Brain"}}
    head = {"name": "head", "folder": "g", "configuration": "3d_fullres", "folds": ["0"],
            "labels": {"1": "Brainstem"}}
    raw: dict[str, Any] = {"id": "cads", "kind": "nnunet_v2", "parts": [{**part, "name": "cns"}, head]}
    raw.update(extra)
    return raw


CADS_LIKE = _manifest(
    pre=[{"step": "reorient", "to": "RAS"}, {"step": "resample", "spacing_mm": 1.5, "integer": True}],
    post=[{"step": "remove_fragments", "min_voxels": {"Liver": 2200, "*": 100}},
          {"step": "keep_largest_component", "structures": ["Brain"]}])
CADS_LIKE["parts"][1]["crop"] = {"part": "cns", "structure": "Brain", "min_voxels": 2000,
                                 "half_size_mm": [150, 150, 200]}


def test_cads_like_manifest_loads_and_round_trips() -> None:
    manifest = parse_manifest(CADS_LIKE)
    assert manifest.pre == (Reorient("RAS"), Resample((1.5, 1.5, 1.5), 3, True))
    assert isinstance(manifest.post[0], RemoveFragments) and manifest.post[0].threshold("Brain") == 100
    crop = manifest.parts[1].crop
    assert crop is not None and crop.part == "cns" and crop.run_on == "crop"
    assert parse_manifest(manifest.to_json()).to_json() == manifest.to_json()


@pytest.mark.parametrize(("change", "match"), [
    ({"pre": [{"step": "cads_reorient"}]}, "unknown pre step 'cads_reorient'"),
    ({"pre": ["reorient"]}, "must be an object"),
    ({"pre": [{"step": "reorient", "to": "RAX"}]}, "three of L/R"),
    ({"pre": [{"step": "reorient", "to": "RRS"}]}, "each of the three world axes once"),
    ({"pre": [{"step": "resample", "spacing": 1.5}]}, r"unknown key\(s\) \['spacing'\]"),
    ({"pre": [{"step": "resample", "spacing_mm": [1.5, 0]}]}, "three numbers"),
    ({"pre": [{"step": "resample", "spacing_mm": -1}]}, "positive"),
    ({"post": [{"step": "fill_holes"}]}, "unknown post step 'fill_holes'"),
    ({"post": [{"step": "remove_fragments", "min_voxels": 1, "min_mm3": 1}]}, "exactly one of"),
    ({"post": [{"step": "remove_fragments", "min_voxels": {"Nope": 1}}]}, "'Nope' is not a catalogue structure"),
    ({"post": [{"step": "keep_largest_component", "structures": ["Spleen"]}]}, r"does not produce \['Spleen'\]"),
    ({"post": [{"step": "keep_largest_component", "connectivity": 8}]}, "connectivity must be one of"),
    ({"post": {"step": "remove_fragments"}}, "'post' must be a list"),
])
def test_bad_steps_are_clear_value_errors_at_load(change: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        parse_manifest(_manifest(**change))
    assert isinstance(info.value, ManifestError)


@pytest.mark.parametrize(("crop", "match"), [
    ({"part": "head", "structure": "Brain", "half_size_mm": 100}, "'head' is not an earlier part"),
    ({"part": "cns", "structure": "Spleen", "half_size_mm": 100}, r"does not produce \['Spleen'\]"),
    ({"part": "cns", "half_size_mm": 100}, "exactly one of 'structure'"),
    ({"part": "cns", "label": 2}, "'half_size_mm' is missing"),
    ({"part": "cns", "label": 2, "half_size_mm": 100, "run_on": "box"}, "run_on must be one of"),
    ({"part": "cns", "label": 2, "half_size_mm": 100, "margin": 3}, r"unknown key\(s\) \['margin'\]"),
])
def test_bad_crops_are_refused(crop: dict[str, Any], match: str) -> None:
    raw = _manifest()
    raw["parts"][1]["crop"] = crop
    with pytest.raises(ManifestError, match=match):
        parse_manifest(raw)


def _oblique(angle_deg: float) -> tuple[float, ...]:
    """Rotated about the patient's z axis, i and j axes swapped and i flipped: far from identity."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    return tuple(float(v) for v in rot.ravel())


def _world(volume: Volume, ijk: np.ndarray) -> np.ndarray:
    d = np.asarray(volume.direction).reshape(3, 3)
    return np.asarray(volume.origin) + d @ (np.asarray(volume.spacing) * ijk)


def test_reorient_permutes_and_flips_without_moving_any_voxel() -> None:
    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(size=(5, 6, 7)).astype(np.float32), (0.7, 0.9, 2.5), (10.0, -4.0, 3.0), _oblique(15))
    work, undos = apply_pre(vol, [Reorient("RAS")])
    d = np.asarray(work.direction).reshape(3, 3)
    world, sign = closest_axes(d)
    assert world == [0, 1, 2] and sign == [-1, -1, 1]  # i towards R (-x in LPS), j towards A, k towards S
    assert work.shape == (5, 7, 6)  # i and j swapped
    for kji in [(0, 0, 0), (4, 6, 5), (2, 3, 1)]:  # every voxel keeps its value and its place in the patient
        value = work.array[kji]
        old = np.argwhere(vol.array == value)[0]
        np.testing.assert_allclose(_world(work, np.array(kji[::-1], float)), _world(vol, old[::-1].astype(float)),
                                   atol=1e-9)
    assert np.array_equal(restore(work.array.copy(), undos), vol.array)


def test_oblique_scan_comes_back_on_its_own_grid() -> None:
    """Reorient + 1.5 mm resampling of a rotated, anisotropic scan; a mask made on the working grid
    is restored onto the input's grid, where it must cover the same object."""
    shape = (24, 50, 44)
    kk, jj, ii = np.indices(shape)
    ball = (((ii - 20) * 0.8) ** 2 + ((jj - 27) * 0.8) ** 2 + ((kk - 11) * 2.5) ** 2) < 14 ** 2
    vol = Volume(np.where(ball, 200, -800).astype(np.int16), (0.8, 0.8, 2.5), (0.0, 0.0, 0.0), _oblique(25))
    work, undos = apply_pre(vol, [Reorient("RAS"), Resample((1.5, 1.5, 1.5), 3, True)])
    assert work.spacing == (1.5, 1.5, 1.5)
    assert np.allclose(np.asarray(work.direction).reshape(3, 3), np.diag([-1.0, -1.0, 1.0]))  # rotation removed
    assert np.array_equal(work.array, np.trunc(work.array))  # integer intensities, as CADS's int32 file
    mask = (work.array > -300).astype(np.uint8)
    back = restore(mask, undos)
    assert back.shape == vol.shape
    dice = 2 * np.sum(back.astype(bool) & ball) / (back.astype(bool).sum() + ball.sum())
    assert dice > 0.95, dice


def test_resampling_is_scipy_zoom_as_cads_calls_it() -> None:
    rng = np.random.default_rng(1)
    img = rng.normal(size=(9, 14, 11)) * 100
    ref = ndimage.zoom(img, (13 / 9, 7 / 14, 11 / 11), order=3)  # mode='constant', grid_mode=False
    np.testing.assert_allclose(zoom_separable(img, (13, 7, 11), 3, mode="constant", grid_mode=False), ref,
                               atol=1e-9)


def test_fragments_are_removed_per_structure() -> None:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:12, 2:12, 2:12] = 1  # liver, 1000 voxels
    labels[15:17, 15:17, 15] = 1  # liver fragment, 4 voxels
    labels[15:18, 2:5, 2:5] = 2  # spleen, 27 voxels
    structures = (LabelledStructure(1, "Liver"), LabelledStructure(2, "Spleen"))
    raw = _manifest(post=[{"step": "remove_fragments", "min_voxels": {"Liver": 10, "Spleen": 30}}])
    raw["parts"][0]["labels"] = {"1": "Liver", "2": "Spleen"}
    out = apply_post(labels.copy(), structures, parse_manifest(raw).post, (1.0, 1.0, 1.0))
    assert int((out == 1).sum()) == 1000 and out[15, 15, 15] == 0
    assert not (out == 2).any()  # a structure whose every component is too small disappears (CADS)
    mm3 = _manifest(post=[{"step": "remove_fragments", "min_mm3": 20.0}])
    out = apply_post(labels.copy(), structures[:1], parse_manifest(mm3).post, (2.0, 2.0, 2.0))  # 8 mm3 voxels
    assert int((out == 1).sum()) == 1004  # the 4-voxel fragment is 32 mm3 >= 20 mm3: kept
    out = apply_post(labels.copy(), structures[:1], parse_manifest(mm3).post, (1.0, 1.0, 1.0))
    assert int((out == 1).sum()) == 1000  # at 1 mm3 voxels it is 4 mm3: removed


@pytest.mark.parametrize(("connectivity", "kept"), [(26, 2), (6, 1)])
def test_keep_largest_component_and_connectivity(connectivity: int, kept: int) -> None:
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[0, 0, 0] = labels[1, 1, 1] = 2  # touch by a corner only
    labels[4:6, 4:6, 4:6] = 2
    steps = parse_manifest(_manifest(post=[{"step": "keep_largest_component", "connectivity": connectivity,
                                            "count": 2}])).post
    out = apply_post(labels, (LabelledStructure(2, "Brain"),), steps, (1.0, 1.0, 1.0))
    assert int((out == 2).sum()) == 8 + kept


def _maps(brain_at: tuple[int, int, int] | None, shape: tuple[int, int, int]) -> dict[str, Any]:
    cns = np.zeros(shape, np.uint8)
    if brain_at is not None:
        k, j, i = brain_at
        cns[k - 3:k + 4, j - 3:j + 4, i - 3:i + 4] = 2
    spine = np.zeros(shape, np.uint8)
    spine[10:14, 20:24, 20:24] = 1
    return {"cns": (cns, {1: "Liver", 2: "Brain"}), "spine": (spine, {1: "VB_C1"})}


def test_crop_box_around_another_parts_structure() -> None:
    shape = (40, 60, 60)
    vol = Volume(np.zeros(shape, np.float32), (1.5, 1.5, 2.0), (0.0, 0.0, 0.0), IDENTITY)
    crop = parse_crop({"part": "cns", "structure": "Brain", "min_voxels": 100, "half_size_mm": [15, 30, 20]}, "t")
    box = crop_region(crop, _maps((30, 20, 50), shape), vol)
    assert box == (slice(20, 40), slice(0, 40), slice(40, 60))  # half sizes 10, 20, 10 voxels; clipped
    assert crop_region(crop, _maps(None, shape), vol) is None
    high = parse_crop({"part": "cns", "label": 2, "min_voxels": 1000, "half_size_mm": 10,
                       "else_above": {"part": "spine", "structures": ["VB_C1"]}}, "t")
    assert crop_region(high, _maps((30, 20, 50), shape), vol) == (slice(10, 40), slice(0, 60), slice(0, 60))
    flipped = Volume(vol.array, vol.spacing, vol.origin, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    assert crop_region(high, _maps(None, shape), flipped) == (slice(0, 14), slice(0, 60), slice(0, 60))
