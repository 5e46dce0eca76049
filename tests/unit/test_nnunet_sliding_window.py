"""Sliding-window maths against values printed by nnunetv2 2.8.1 (compute_steps_for_sliding_window,
compute_gaussian(tile, 1/8, 10, float16))."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segmenter.core.errors import ModelError
from segmenter.nnunet.sliding_window import (
    WindowSettings,
    compute_steps,
    gaussian_importance_map,
    pad_to_patch,
    sliding_window_logits,
    tile_slicers,
)


@pytest.mark.parametrize(("image", "tile", "step", "expected"), [
    ((110,), (64,), 0.5, [[0, 23, 46]]),
    ((300, 273, 273), (128, 128, 128), 0.8, [[0, 86, 172], [0, 72, 145], [0, 72, 145]]),
    ((40, 50, 46), (16, 32, 32), 0.5, [[0, 8, 16, 24], [0, 9, 18], [0, 14]]),
    ((128,), (128,), 0.5, [[0]]),
    ((129,), (128,), 0.5, [[0, 1]]),
])
def test_steps_match_nnunet(image: tuple[int, ...], tile: tuple[int, ...], step: float,
                            expected: list[list[int]]) -> None:
    assert compute_steps(image, tile, step) == expected


@pytest.mark.parametrize(("tile", "total", "minimum"), [
    ((16, 32, 32), 5038.61512362957, 5.960464477539063e-08),
    ((32, 32), 1005.1642851233482, 1.1324882507324219e-06),
    ((128, 128, 128), 644986.1604437828, 5.960464477539063e-08),
])
def test_gaussian_matches_nnunet(tile: tuple[int, ...], total: float, minimum: float) -> None:
    g = gaussian_importance_map(tile)
    assert g.dtype == torch.float16 and tuple(g.shape) == tile
    assert float(g.double().sum()) == pytest.approx(total, rel=1e-9)
    assert float(g.min()) == minimum and float(g.max()) == 10.0


def test_image_smaller_than_tile_is_an_error() -> None:
    with pytest.raises(ModelError, match="smaller than the tile"):
        compute_steps((10,), (16,), 0.5)


@pytest.mark.parametrize("kwargs", [{"tile_step": 0.0}, {"tile_step": 1.5}, {"batch_size": 0}])
def test_settings_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ModelError):
        WindowSettings(**kwargs)  # type: ignore[arg-type]


def test_padding_is_centred_and_undone() -> None:
    data = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(1, 2, 5, 7)
    padded, undo = pad_to_patch(data, (8, 8))
    assert tuple(padded.shape) == (1, 2, 8, 8)
    assert undo == (slice(1, 6), slice(0, 7))
    assert torch.equal(padded[(slice(None), slice(None), *undo)], data)


def test_2d_tiles_run_slice_by_slice() -> None:
    slicers = tile_slicers((3, 40, 32), (32, 32), 0.5)
    assert [s[0] for s in slicers] == [0, 0, 1, 1, 2, 2]


class _Echo(nn.Module):
    """A 'network' whose logits are a fixed function of the input: class 1 = x, class 0 = -x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x, x], 1)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("mirror", [None, (0, 1, 2)])
def test_overlapping_tiles_average_back_to_the_function(batch: int, mirror: tuple[int, ...] | None) -> None:
    data = torch.randn(1, 20, 37, 30)
    settings = WindowSettings(tile_step=0.5, mirror_axes=mirror, batch_size=batch,
                              accumulate_dtype=torch.float32)
    logits = sliding_window_logits([_Echo(), _Echo()], data, (8, 16, 16), 2, settings)
    assert tuple(logits.shape) == (2, 20, 37, 30)
    torch.testing.assert_close(logits[1], data[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("shape", [(41, 37, 30), (16, 20, 20), (9, 20, 20)])
def test_streamed_slabs_equal_the_whole_image_logits(batch: int, shape: tuple[int, ...]) -> None:
    """Slab by slab (the accumulator one tile deep, moved along) = the whole-image accumulator, to
    the bit, float16 included; images as deep as or thinner than the tile come as one slab."""
    from segmenter.nnunet.sliding_window import sliding_window_slabs

    torch.manual_seed(0)
    folds = [_net(3), _net(3)]
    data = torch.randn(1, *shape)
    settings = WindowSettings(tile_step=0.5, batch_size=batch)
    whole = sliding_window_logits(folds, data, (16, 16, 16), 3, settings)
    firsts, slabs = [], []
    for first, slab in sliding_window_slabs(folds, data, (16, 16, 16), 3, settings):
        firsts.append(first)
        slabs.append(slab.clone())  # a slab is only valid until the next one
    assert firsts == sorted(firsts) and firsts[0] == 0
    if shape[0] > 16:
        assert len(slabs) > 2
    assert torch.equal(torch.cat(slabs, 1), whole)


def _net(classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.LeakyReLU(), nn.Conv3d(4, classes, 3, padding=1)).eval()


@torch.inference_mode()
def _nnunet_predictor_logits(folds: list[nn.Module], data: torch.Tensor, patch: tuple[int, ...],
                             classes: int, step: float, mirror_axes: tuple[int, ...] | None) -> torch.Tensor:
    """nnunetv2 2.8.1's nnUNetPredictor on the CPU, step for step (predict_logits_from_preprocessed_data,
    predict_sliding_window_return_logits, _internal_predict_sliding_window_return_logits,
    _internal_maybe_mirror_and_predict): each fold's own float16 accumulator divided by the float16
    weights, the folds' results added in float16 and divided by their number."""
    import itertools

    padded, undo = pad_to_patch(data, patch)
    gaussian = gaussian_importance_map(patch)
    prediction: torch.Tensor | None = None
    for net in folds:
        logits = torch.zeros((classes, *padded.shape[1:]), dtype=torch.half)
        n_predictions = torch.zeros(padded.shape[1:], dtype=torch.half)
        for sl in tile_slicers(tuple(padded.shape[1:]), patch, step):
            x = padded[(slice(None), *sl)][None]
            pred = net(x)
            if mirror_axes is not None:
                axes = [m + 2 for m in mirror_axes]
                combos = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
                for flip in combos:
                    pred += torch.flip(net(torch.flip(x, flip)), flip)
                pred /= len(combos) + 1
            pred = pred[0]
            pred *= gaussian
            logits[(slice(None), *sl)] += pred
            n_predictions[sl] += gaussian
        torch.div(logits, n_predictions, out=logits)
        logits = logits[(slice(None), *undo)]
        prediction = logits if prediction is None else prediction + logits
    assert prediction is not None
    if len(folds) > 1:
        prediction /= len(folds)
    return prediction


@pytest.mark.parametrize("mirror", [None, (0, 1, 2)])
@pytest.mark.parametrize(("shape", "step"), [((19, 37, 30), 0.5), ((13, 12, 40), 0.8)])
def test_folds_are_combined_like_nnunets_predictor(shape: tuple[int, ...], step: float,
                                                   mirror: tuple[int, ...] | None) -> None:
    """Bit for bit, both paths, at the volume's edges too: there only tiles' rims reach, whose float16
    weights are subnormal, and one accumulator for all folds rounded differently (2 % of the first
    slice's labels changed on a 2-fold model). The second shape is thinner than the tile in y."""
    from segmenter.nnunet.sliding_window import sliding_window_slabs

    torch.manual_seed(1)
    folds = [_net(4), _net(4), _net(4)]
    data = torch.randn(1, *shape) * 3
    patch = (8, 16, 16)
    expected = _nnunet_predictor_logits(folds, data, patch, 4, step, mirror)
    settings = WindowSettings(tile_step=step, mirror_axes=mirror)
    assert torch.equal(sliding_window_logits(folds, data, patch, 4, settings), expected)
    slabs = [slab.clone() for _, slab in sliding_window_slabs(folds, data, patch, 4, settings)]
    assert torch.equal(torch.cat(slabs, 1), expected)
