"""Preprocessing in torch (nnunet_preprocess_device) against the numpy path, which is held to
skimage and to nnU-Net's own output elsewhere (test_nnunet_preprocess, test_nnunet_equivalence).

Run here on the CPU device; the CUDA run of the same code is in test_nnunet_equivalence."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from segmenter.core.errors import ModelError
from segmenter.nnunet.plans import Configuration, Plans, parse_plans
from segmenter.nnunet.preprocess import normalise, preprocess
from segmenter.nnunet.preprocess_device import normalise_t, preprocess_on_device, upload
from tests.nnunet_fixtures import ModelSpec, plans_for, synthetic_ct

CPU = torch.device("cpu")


def _plans(spacing: tuple[float, ...], configuration: str = "3d_fullres") -> tuple[Plans, Configuration]:
    patch = (32, 32) if configuration == "2d" else (16, 32, 32)
    spec = ModelSpec("p", configuration=configuration, spacing=spacing, patch=patch, n_classes=3)
    plans = parse_plans(plans_for(spec))
    return plans, plans.configuration(configuration)


@pytest.mark.parametrize(("plan_spacing", "image_spacing", "configuration"), [
    ((1.5, 1.5, 1.5), (1.5, 0.8, 0.8), "3d_fullres"),  # in-plane only (TotalSegmentator's case)
    ((1.5, 1.5, 1.5), (1.0, 1.2, 1.2), "3d_fullres"),  # every axis
    ((5.0, 0.8, 0.8), (2.5, 0.7, 0.7), "3d_fullres"),  # separate z: target anisotropic, fewer slices
    ((1.0, 1.0, 1.0), (5.0, 0.9, 0.9), "3d_fullres"),  # separate z: data anisotropic, nearest z up
    ((1.0, 1.0), (3.0, 0.7, 0.7), "2d"),  # 2d keeps the slice spacing
])
def test_equals_numpy_path(plan_spacing: tuple[float, ...], image_spacing: tuple[float, float, float],
                           configuration: str) -> None:
    plans, config = _plans(plan_spacing, configuration)
    image = synthetic_ct((24, 60, 52), seed=2, zero_border=3)[None]
    ref = preprocess(image, image_spacing, plans, config)
    ours = preprocess_on_device(image, image_spacing, plans, config, CPU)
    assert isinstance(ours.data, torch.Tensor) and ours.data.dtype == torch.float32
    assert (ours.bbox, ours.shape_before_cropping, ours.shape_after_cropping) == \
        (ref.bbox, ref.shape_before_cropping, ref.shape_after_cropping)
    assert (ours.original_spacing, ours.target_spacing) == (ref.original_spacing, ref.target_spacing)
    assert tuple(ours.data.shape) == ref.data.shape
    assert ref.bbox != ((0, 24), (0, 60), (0, 52)), "the zero border must have been cropped"
    # same float64 matrices, other summation order: equal to float32 rounding
    np.testing.assert_allclose(ours.data.numpy(), ref.data, rtol=0, atol=2e-6)


@pytest.mark.parametrize("scheme", ["CTNormalization", "ZScoreNormalization", "RescaleTo01Normalization"])
def test_normalisation_schemes(scheme: str) -> None:
    plans, config = _plans((1.0, 1.0, 1.0))
    config = replace(config, normalization_schemes=(scheme,))
    data = synthetic_ct((10, 30, 30), seed=5)[None].astype(np.float32)
    ref = normalise(data, plans, config)
    ours = normalise_t(torch.from_numpy(data), plans, config).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    assert np.array_equal(data, synthetic_ct((10, 30, 30), seed=5)[None]), "the input must be left alone"


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.float32, np.float64, ">i2"])
def test_upload_types(dtype: str) -> None:
    image = np.arange(24, dtype=np.int64).reshape(2, 3, 4).astype(dtype)
    out = upload(image, CPU)
    assert out.dtype == torch.float32
    assert np.array_equal(out.numpy(), image.astype(np.float32))


def test_integer_ct_gives_the_float_result() -> None:
    plans, config = _plans((1.5, 1.5, 1.5))
    image = np.round(synthetic_ct((20, 40, 40), seed=6)).astype(np.int16)[None]
    a = preprocess_on_device(image, (1.0, 0.8, 0.8), plans, config, CPU)
    b = preprocess_on_device(image.astype(np.float32), (1.0, 0.8, 0.8), plans, config, CPU)
    assert torch.equal(a.data, b.data)


def test_errors_match_the_numpy_path() -> None:
    plans, config = _plans((1.0, 1.0, 1.0))
    with pytest.raises(ModelError, match="empty"):
        preprocess_on_device(np.zeros((1, 4, 5, 6), np.float32), (1.0, 1.0, 1.0), plans, config, CPU)
    with pytest.raises(ModelError, match=r"\(channels, z, y, x\)"):
        preprocess_on_device(np.zeros((4, 5, 6), np.float32), (1.0, 1.0, 1.0), plans, config, CPU)


def test_unsupported_normalisation_is_refused_by_both_paths() -> None:
    plans, config = _plans((1.0, 1.0, 1.0))
    masked = replace(config, use_mask_for_norm=(True,))
    data = synthetic_ct((4, 8, 8))[None]
    for run in (lambda: normalise(data, plans, masked), lambda: normalise_t(torch.from_numpy(data), plans, masked)):
        with pytest.raises(ModelError, match="use_mask_for_norm"):
            run()
    no_props = replace(plans, intensity=())
    for run in (lambda: normalise(data, no_props, config),
                lambda: normalise_t(torch.from_numpy(data), no_props, config)):
        with pytest.raises(ModelError, match="intensity properties"):
            run()
