"""Deep supervision: weights, the auxiliary terms in the loss, training-only classifiers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from segmenter.multihead.model import MultiHeadModel, save_model
from segmenter.multihead.net import default_widths
from segmenter.multihead.spec import HeadSpec, ModelSpec
from segmenter.training.data import RawDataset, TrainingError
from segmenter.training.dataset import (
    AuxClassifiers,
    deep_supervision_loss,
    downsample_labels,
    ds_weights,
)
from segmenter.training.train import TrainConfig, fit, softmax_partial_loss
from tests.multihead_phantoms import (
    ABDOMEN,
    deterministic_torch,
    seed_everything,
    write_dataset,
)


@pytest.fixture(scope="module", autouse=True)
def _deterministic() -> Iterator[None]:
    yield from deterministic_torch()


F = (4, 8, 16, 32)  # three decoder levels: scales 1/4, 1/2, 1
PATCH = (16, 32, 32)


def _spec() -> ModelSpec:
    return ModelSpec(id="ds", version="1", encoder_features=F, patch=PATCH,
                     heads=(HeadSpec("abdomen", ("Liver", "Spleen"), default_widths(F)),))


def test_weights_halve_per_scale_and_sum_to_one() -> None:
    assert ds_weights(0) == [1.0]
    assert ds_weights(2) == pytest.approx([4 / 7, 2 / 7, 1 / 7])


def test_labels_are_subsampled_keeping_ignored_voxels() -> None:
    y = torch.arange(4 * 4 * 4).view(1, 4, 4, 4)
    y[0, 2, 0, 2] = -1
    down = downsample_labels(y, 2)
    assert down.shape == (1, 2, 2, 2) and int(down[0, 1, 0, 1]) == -1 and int(down[0, 0, 1, 1]) == y[0, 0, 2, 2]


def test_loss_is_the_weighted_sum_over_scales_with_the_auxiliary_terms() -> None:
    seed_everything(0)
    model = MultiHeadModel.build(_spec(), seed=0)
    net, head = model.net, model.spec.heads[0]
    aux = AuxClassifiers(net, ["abdomen"], 2)
    x = torch.randn(2, 1, *PATCH)
    y = torch.randint(-1, 3, (2, *PATCH))
    levels: list[torch.Tensor] = []
    logits = net.head_logits("abdomen", net.encoder(x), collect=levels)
    aux_logits = aux("abdomen", levels)
    assert [tuple(a.shape[2:]) for a in aux_logits] == [(8, 16, 16), (4, 8, 8)]

    def loss(lg: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return softmax_partial_loss(lg, t, head, head.structures)

    total = deep_supervision_loss(loss, logits, aux_logits, y)
    by_hand = (4 * loss(logits, y) + 2 * loss(aux_logits[0], y[:, ::2, ::2, ::2])
               + loss(aux_logits[1], y[:, ::4, ::4, ::4])) / 7
    assert torch.allclose(total, by_hand)
    assert not torch.allclose(total, loss(logits, y))  # the auxiliary terms are in it
    total.backward()  # type: ignore[no-untyped-call]
    for clf in aux.per_head["abdomen"]:  # type: ignore[union-attr]
        assert clf.weight.grad is not None and bool(clf.weight.grad.abs().sum() > 0)


def test_too_many_scales_are_refused() -> None:
    model = MultiHeadModel.build(_spec(), seed=0)
    with pytest.raises(TrainingError, match="1 to 2 lower scales"):
        AuxClassifiers(model.net, ["abdomen"], 3)


def test_fit_with_deep_supervision_trains_differently_and_saves_a_plain_model(tmp_path: Path) -> None:
    seed_everything(0)
    data = RawDataset.read(write_dataset(tmp_path / "A", 2, ABDOMEN, ("Liver", "Spleen"), seed=1,
                                         shape=(16, 32, 32)))
    cfg = TrainConfig(iterations=3, checkpoint_every=3, log_every=3, batch_size=1)
    plain = MultiHeadModel.build(_spec(), seed=0)
    fit(plain, plain.spec.heads, [data], cfg, tmp_path / "plain", train_encoder=True)
    ds = MultiHeadModel.build(_spec(), seed=0)
    fit(ds, ds.spec.heads, [data], TrainConfig(**{**cfg.__dict__, "deep_supervision": 2}), tmp_path / "ds",
        train_encoder=True)
    ckpt = torch.load(tmp_path / "ds/checkpoint.pt", weights_only=True)
    assert sorted(ckpt["aux"]) == ["per_head.abdomen.0.bias", "per_head.abdomen.0.weight",
                                   "per_head.abdomen.1.bias", "per_head.abdomen.1.weight"]
    # the deepest decoder level gets a different gradient through its auxiliary classifier
    key = "heads.abdomen.levels.0.conv2.conv.weight"
    assert not torch.equal(plain.net.state_dict()[key], ds.net.state_dict()[key])
    save_model(ds, tmp_path / "model")
    assert set(load_file(str(tmp_path / "model/weights.safetensors"))) == set(plain.net.state_dict())
    with pytest.raises(TrainingError, match="without deep supervision"):
        fit(MultiHeadModel.build(_spec(), seed=0), plain.spec.heads, [data],
            TrainConfig(**{**cfg.__dict__, "deep_supervision": 1, "iterations": 6}), tmp_path / "plain",
            train_encoder=True, resume=True)
