"""Training checkpoints: tensors, numbers and strings only, read with ``weights_only=True``; resume."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from segmenter.multihead.model import MultiHeadModel
from segmenter.multihead.net import default_widths
from segmenter.multihead.spec import HeadSpec, ModelSpec
from segmenter.training.checkpoint import load_checkpoint
from segmenter.training.data import RawDataset, TrainingError
from segmenter.training.train import TrainConfig, fit
from tests.multihead_phantoms import ABDOMEN, deterministic_torch, seed_everything, write_dataset

F = (4, 8, 16)
PATCH = (16, 32, 32)


@pytest.fixture(scope="module", autouse=True)
def _deterministic() -> Iterator[None]:
    yield from deterministic_torch()


def _spec(*heads: HeadSpec) -> ModelSpec:
    return ModelSpec(id="ck", version="1", encoder_features=F, patch=PATCH,
                     heads=heads or (HeadSpec("abdomen", ("Liver", "Spleen"), default_widths(F)),))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> RawDataset:
    root = tmp_path_factory.mktemp("ck")
    return RawDataset.read(write_dataset(root / "A", 2, ABDOMEN, ("Liver", "Spleen"), seed=1, shape=(16, 32, 32)))


class Payload:
    """An object torch can only store by pickling it (not a tensor, number, string, list or dict)."""

    def __init__(self) -> None:
        self.value = 1


def test_resume_after_a_short_run_gives_the_uninterrupted_weights(data: RawDataset, tmp_path: Path) -> None:
    seed_everything(0)
    cfg = TrainConfig(iterations=4, checkpoint_every=2, log_every=2, batch_size=1)
    straight = MultiHeadModel.build(_spec(), seed=0)
    fit(straight, straight.spec.heads, [data], cfg, tmp_path / "straight", train_encoder=True)
    first = MultiHeadModel.build(_spec(), seed=0)
    fit(first, first.spec.heads, [data], replace(cfg, stop_after=2), tmp_path / "resumed", train_encoder=True)
    ckpt = tmp_path / "resumed/checkpoint.pt"
    # the restricted unpickler reads the whole file: nothing in it needs code to rebuild
    raw = torch.load(ckpt, weights_only=True)
    assert raw["format"] == 2 and raw["iteration"] == 2 and raw["heads"] == ["abdomen"]
    assert json.loads(raw["spec"])["id"] == "ck"
    assert load_checkpoint(ckpt).iteration == 2
    resumed = MultiHeadModel.build(_spec(), seed=0)
    fit(resumed, resumed.spec.heads, [data], cfg, tmp_path / "resumed", train_encoder=True, resume=True)
    assert load_checkpoint(ckpt).iteration == 4
    for key, value in straight.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[key]), key


def test_a_checkpoint_without_a_format_is_still_read(data: RawDataset, tmp_path: Path) -> None:
    cfg = TrainConfig(iterations=2, checkpoint_every=2, log_every=2, batch_size=1)
    model = MultiHeadModel.build(_spec(), seed=0)
    fit(model, model.spec.heads, [data], cfg, tmp_path, train_encoder=True)
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    old = {k: raw[k] for k in ("net", "optimiser", "iteration", "rng")}  # the layout before ``format``
    torch.save(old, tmp_path / "old.pt")
    state = load_checkpoint(tmp_path / "old.pt")
    assert state.iteration == 2 and state.heads is None
    assert torch.equal(state.torch_rng, raw["rng"]["torch"])


def test_a_checkpoint_holding_a_pickled_object_is_refused(data: RawDataset, tmp_path: Path) -> None:
    cfg = TrainConfig(iterations=2, checkpoint_every=2, log_every=2, batch_size=1)
    model = MultiHeadModel.build(_spec(), seed=0)
    fit(model, model.spec.heads, [data], cfg, tmp_path, train_encoder=True)
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    torch.save({**raw, "extra": Payload()}, tmp_path / "checkpoint.pt")
    with pytest.raises(TrainingError, match="cannot be loaded with weights_only=True") as caught:
        fit(MultiHeadModel.build(_spec(), seed=0), model.spec.heads, [data], replace(cfg, iterations=4), tmp_path,
            train_encoder=True, resume=True)
    assert "\n" not in str(caught.value)


def test_a_checkpoint_of_other_heads_is_refused(data: RawDataset, tmp_path: Path) -> None:
    cfg = TrainConfig(iterations=2, checkpoint_every=2, log_every=2, batch_size=1)
    model = MultiHeadModel.build(_spec(), seed=0)
    fit(model, model.spec.heads, [data], cfg, tmp_path, train_encoder=True)
    other = _spec(HeadSpec("organs", ("Liver", "Spleen"), default_widths(F)))
    with pytest.raises(TrainingError, match="trains heads"):
        fit(MultiHeadModel.build(other, seed=0), other.heads, [data], replace(cfg, iterations=4), tmp_path,
            train_encoder=True, resume=True)


@pytest.mark.parametrize("content,match", [
    ([1, 2], "expected a dictionary"),
    ({"format": 9}, "unknown format"),
    ({"net": {}, "optimiser": {}, "iteration": 1}, "no random states"),
    ({"net": {"w": 1}, "optimiser": {}, "iteration": 1,
      "rng": {"numpy": {}, "torch": torch.zeros(2, dtype=torch.uint8)}}, "not a state dict of tensors"),
])
def test_malformed_checkpoints_are_refused(tmp_path: Path, content: object, match: str) -> None:
    torch.save(content, tmp_path / "c.pt")
    with pytest.raises(TrainingError, match=match):
        load_checkpoint(tmp_path / "c.pt")


def test_a_missing_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="missing"):
        load_checkpoint(tmp_path / "none.pt")
