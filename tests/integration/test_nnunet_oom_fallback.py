"""CUDA out of memory never crashes a prediction: fewer tiles per batch, then the CPU, each with a
log line, and the same labels as a run that had memory enough.

A real out-of-memory needs a GPU (the CUDA test below squeezes the allocator); on the CPU the
error is raised by a fold that fails like a full GPU would, at the same call the real one fails."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import segmenter.nnunet.engine as engine_module
from segmenter.nnunet.engine import NnUNetPartModel
from tests.nnunet_fixtures import CASES, make_model_folder, synthetic_ct

CASE = CASES["iso3d"]


class FullGpuFold(nn.Module):
    """A fold that fails as a too-small GPU would: batches above ``fits`` tiles, or the first
    ``fail_first`` calls whatever their size, raise CUDA's out-of-memory error."""

    def __init__(self, inner: nn.Module, fits: int, fail_first: int = 0) -> None:
        super().__init__()
        self.inner, self.fits, self.fail_first = inner, fits, fail_first
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(x.shape[0]))
        if x.shape[0] > self.fits or self.fail_first > 0:
            self.fail_first -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        out: torch.Tensor = self.inner(x)
        return out


def _model(tmp_path: Path, batch_size: int) -> NnUNetPartModel:
    folder = make_model_folder(tmp_path, CASE.spec)
    return NnUNetPartModel.load(folder, None, [str(f) for f in CASE.spec.folds], tile_step=CASE.tile_step,
                                mirroring=CASE.mirroring, batch_size=batch_size)


def _predict(model: NnUNetPartModel) -> np.ndarray:
    image = synthetic_ct(CASE.image_shape, seed=1)
    return model.predict(image, CASE.image_spacing_zyx, torch.device("cpu"))


def test_halves_the_batch_until_it_fits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _model(tmp_path, batch_size=4)
    expected = _predict(model)
    fold = FullGpuFold(model.networks[0], fits=1)
    model.networks = [fold]
    with caplog.at_level(logging.WARNING, logger="segmenter.nnunet.engine"):
        labels = _predict(model)
    assert np.array_equal(labels, expected)
    assert [b for b in fold.batches if b > 1][:2] == [4, 2], "4 tiles, then 2, then 1"
    assert "retrying with 2 tiles per batch" in caplog.text
    assert "retrying with 1 tiles per batch" in caplog.text


def test_one_tile_too_many_falls_back_to_the_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _model(tmp_path, batch_size=1)
    expected = _predict(model)
    model.networks = [FullGpuFold(model.networks[0], fits=1, fail_first=1)]
    with caplog.at_level(logging.WARNING, logger="segmenter.nnunet.engine"):
        labels = _predict(model)
    assert np.array_equal(labels, expected)
    assert "falling back to the CPU" in caplog.text


def test_preprocessing_out_of_memory_falls_back_to_numpy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    model = _model(tmp_path, batch_size=1)
    expected = _predict(model)

    def full_gpu(*args: object, **kwargs: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.20 GiB")

    monkeypatch.setattr(engine_module, "preprocess_on_device", full_gpu)
    model.preprocess_on_device = True
    with caplog.at_level(logging.WARNING, logger="segmenter.nnunet.engine"):
        labels = _predict(model)
    assert np.array_equal(labels, expected)
    assert "preprocessing on the CPU instead" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_real_cuda_out_of_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The allocator capped far below one batch of tiles: the prediction still completes."""
    model = _model(tmp_path, batch_size=64)
    expected = _predict(model)  # on the CPU
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 64 * 2**20 / total), device)
    try:
        with caplog.at_level(logging.WARNING, logger="segmenter.nnunet.engine"):
            image = synthetic_ct(CASE.image_shape, seed=1)
            labels = model.predict(image, CASE.image_spacing_zyx, device)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    assert "out of memory" in caplog.text
    assert float((labels == expected).mean()) >= 0.999
