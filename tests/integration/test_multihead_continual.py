"""Continual learning without forgetting, its naive counterpart, pruning, resume and the CLI.

Tiny networks on synthetic abdomen phantoms (tests/multihead_phantoms.py), CPU, one thread,
deterministic. Task A labels Liver + Spleen; task B (a different dataset) labels only the kidneys.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from segmenter.cli import main
from segmenter.core.metrics import dice
from segmenter.core.volume import Volume
from segmenter.multihead.model import (
    MultiHeadEngine,
    MultiHeadModel,
    load_model,
    predict,
)
from segmenter.multihead.net import default_widths
from segmenter.multihead.spec import HeadSpec, ModelSpec
from segmenter.registry import get_engine
from segmenter.training.data import RawDataset
from segmenter.training.evaluate import evaluate
from segmenter.training.pruning import prune_head_with_report
from segmenter.training.train import TrainConfig, add_head, fit, train_model
from tests.multihead_phantoms import (
    ABDOMEN,
    deterministic_torch,
    make_case,
    seed_everything,
    write_dataset,
)


@pytest.fixture(scope="module", autouse=True)
def _deterministic() -> Iterator[None]:
    yield from deterministic_torch()


FEATURES = (8, 16, 32)
PATCH = (16, 32, 32)
A_ORGANS = ("Liver", "Spleen")
B_ORGANS = ("Kidney_L", "Kidney_R")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RawDataset]:
    root = tmp_path_factory.mktemp("phantoms")
    return {
        "A": RawDataset.read(write_dataset(root / "A", 6, ABDOMEN, A_ORGANS, seed=1)),
        "B": RawDataset.read(write_dataset(root / "B", 6, ABDOMEN, B_ORGANS, seed=2)),
        "test": RawDataset.read(write_dataset(root / "T", 3, ABDOMEN, A_ORGANS + B_ORGANS, seed=3)),
    }


@pytest.fixture(scope="module")
def model_a(data: dict[str, RawDataset], tmp_path_factory: pytest.TempPathFactory) -> tuple[MultiHeadModel, Path]:
    seed_everything(0)
    spec = ModelSpec(id="clnet", version="1", encoder_features=FEATURES, patch=PATCH,
                     heads=(HeadSpec("abdomen", A_ORGANS, default_widths(FEATURES)),))
    out = tmp_path_factory.mktemp("models") / "clnet"
    model = train_model(spec, [data["A"]], out, TrainConfig(iterations=250, lr=1e-2))
    return model, out


def test_add_head_keeps_old_predictions_bit_identical_and_learns_b(
        data: dict[str, RawDataset], model_a: tuple[MultiHeadModel, Path], tmp_path: Path) -> None:
    seed_everything(0)
    model, folder = model_a
    before = evaluate(model, data["test"], structures=A_ORGANS)
    assert min(before.values()) > 0.9
    head_b = HeadSpec("kidneys", B_ORGANS, default_widths(FEATURES))
    add_head(model, head_b, [data["B"]], tmp_path / "v2", TrainConfig(iterations=150, lr=3e-3, fg_fraction=0.8))
    new = load_model(tmp_path / "v2")  # from disk: manifest + safetensors
    assert new.spec.version == "2" and [h.name for h in new.spec.heads] == ["abdomen", "kidneys"]
    assert new.spec.head("kidneys").priority < new.spec.head("abdomen").priority
    assert [h["action"] for h in new.spec.history] == ["train", "add-head"]
    old_w, new_w = load_file(str(folder / "weights.safetensors")), load_file(str(tmp_path / "v2/weights.safetensors"))
    for key, tensor in old_w.items():
        assert torch.equal(tensor, new_w[key]), key
    for case in data["test"].cases:
        p_old = predict(model, case.image, case.spacing)["abdomen"]
        p_new = predict(new, case.image, case.spacing)  # every head, one encoder pass per tile
        assert torch.equal(p_old, p_new["abdomen"])
    after = evaluate(new, data["test"])
    for organ in A_ORGANS:
        assert abs(after[organ] - before[organ]) <= 0.01
    assert min(after[o] for o in B_ORGANS) > 0.5


@pytest.fixture(scope="module")
def model_ab(data: dict[str, RawDataset], model_a: tuple[MultiHeadModel, Path],
             tmp_path_factory: pytest.TempPathFactory) -> tuple[MultiHeadModel, Path]:
    """Version 2 of model A: a kidneys head supported by the frozen abdomen head (FL-supporting)."""
    seed_everything(0)
    out = tmp_path_factory.mktemp("models") / "v2"
    head_b = HeadSpec("kidneys", B_ORGANS, default_widths(FEATURES), supports=("abdomen",))
    add_head(model_a[0], head_b, [data["B"]], out, TrainConfig(iterations=120, lr=3e-3, fg_fraction=0.8))
    return load_model(out), out


def test_add_head_with_feature_level_supporting(
        data: dict[str, RawDataset], model_a: tuple[MultiHeadModel, Path],
        model_ab: tuple[MultiHeadModel, Path]) -> None:
    """CL-Net's FL-supporting: the new head fuses the frozen abdomen head's logits with its own."""
    model, folder = model_a
    new, new_folder = model_ab
    assert new.spec.head("kidneys").supports == ("abdomen",)
    assert json.loads((new_folder / "manifest.json").read_text())["multihead"]["heads"][1]["supports"] == ["abdomen"]
    weights = load_file(str(new_folder / "weights.safetensors"))
    assert any(k.startswith("supports.kidneys.") for k in weights)
    for key, tensor in load_file(str(folder / "weights.safetensors")).items():
        assert torch.equal(tensor, weights[key]), key
    case = data["test"].cases[0]
    p_old = predict(model, case.image, case.spacing)["abdomen"]
    p_new = predict(new, case.image, case.spacing)
    assert torch.equal(p_old, p_new["abdomen"])
    # the supporter runs for the supported head even when switched off, without appearing
    only = predict(new, case.image, case.spacing, heads=["kidneys"])
    assert set(only) == {"kidneys"} and torch.equal(only["kidneys"], p_new["kidneys"])
    # the supporter's logits really are an input of the new head at inference
    changed = copy.deepcopy(new)
    with torch.no_grad():
        changed.net.head("abdomen").seg.bias.add_(torch.tensor([3.0, -3.0, 0.0]))
    assert not torch.allclose(predict(changed, case.image, case.spacing, heads=["kidneys"])["kidneys"],
                              p_new["kidneys"], atol=1e-3)
    after = evaluate(new, data["test"])
    assert min(after[o] for o in B_ORGANS) > 0.5, after
    assert min(after[o] for o in A_ORGANS) > 0.9, after


def test_add_head_with_an_adapter_keeps_old_heads_and_learns_b(
        data: dict[str, RawDataset], model_a: tuple[MultiHeadModel, Path], tmp_path: Path) -> None:
    """The new head reads the frozen features through its own zero-initialised residual adapter."""
    from segmenter.multihead.info import add_head_report
    from segmenter.multihead.net import adapter_ranks, count_parameters
    seed_everything(0)
    model, folder = model_a
    ranks = adapter_ranks(FEATURES, 4)
    head_b = HeadSpec("kidneys", B_ORGANS, default_widths(FEATURES), adapter=ranks)
    add_head(model, head_b, [data["B"]], tmp_path / "v2", TrainConfig(iterations=120, lr=3e-3, fg_fraction=0.8))
    new = load_model(tmp_path / "v2")
    assert json.loads((tmp_path / "v2/manifest.json").read_text())["multihead"]["heads"][1]["adapter"] == list(ranks)
    old_w, new_w = load_file(str(folder / "weights.safetensors")), load_file(str(tmp_path / "v2/weights.safetensors"))
    for key, tensor in old_w.items():
        assert torch.equal(tensor, new_w[key]), key
    ups = [v for k, v in new_w.items() if k.startswith("adapters.kidneys.up.") and k.endswith(".weight")]
    assert len(ups) == len(FEATURES) and all(bool(u.abs().sum() > 0) for u in ups)  # trained away from zero
    expected = sum(2 * c * r + r + c for c, r in zip(FEATURES, ranks, strict=True))
    report = add_head_report(new, "kidneys")
    assert report["trained"]["adapter"] == expected == count_parameters(new.net.adapters["kidneys"])
    assert report["trained"]["total"] == report["trained"]["decoder"] + expected
    zeroed = copy.deepcopy(new)  # the same model without the adapter's residual
    with torch.no_grad():
        for up in zeroed.net.adapters["kidneys"].up:  # type: ignore[union-attr]
            up.weight.zero_()
            up.bias.zero_()
    for case in data["test"].cases:
        p_old = predict(model, case.image, case.spacing)["abdomen"]
        p_new = predict(new, case.image, case.spacing)
        assert torch.equal(p_old, p_new["abdomen"])
    p_zeroed = predict(zeroed, case.image, case.spacing)
    assert torch.equal(p_zeroed["abdomen"], p_old)
    assert not torch.allclose(p_zeroed["kidneys"], p_new["kidneys"], atol=1e-3)  # used at inference
    after = evaluate(new, data["test"])
    assert min(after[o] for o in B_ORGANS) > 0.5, after
    assert min(after[o] for o in A_ORGANS) > 0.9, after


def test_body_part_range_runs_a_head_only_around_its_landmark(
        data: dict[str, RawDataset], model_ab: tuple[MultiHeadModel, Path], tmp_path: Path) -> None:
    """CL-Net's per-head body-part range, here relative to the liver the abdomen head finds: on a long
    scan the kidneys head runs on a fraction of the tiles, and is background outside its range."""
    from segmenter.multihead.body_range import learn_range_spec
    from segmenter.multihead.model import merge_heads, save_model
    seed_everything(0)
    new, _ = model_ab
    test = data["test"]
    rng = learn_range_spec([(c.labels, test.labels["Liver"], [test.labels[o] for o in B_ORGANS]) for c in test.cases],
                           test.cases[0].spacing[0], "Liver")
    heads = (new.spec.heads[0], replace(new.spec.heads[1], range=rng))
    ranged = MultiHeadModel(replace(new.spec, heads=heads), new.net)
    save_model(ranged, tmp_path / "ranged")
    ranged = load_model(tmp_path / "ranged")
    assert ranged.spec.head("kidneys").range == rng
    image, masks = make_case(np.random.default_rng(7), ABDOMEN, (64, 48, 48), (2.0, 1.5, 1.5))  # 128 mm long
    spacing = (2.0, 1.5, 1.5)
    tiles: list[int] = []
    for m in (new, ranged):
        m.net.head("kidneys").register_forward_hook(lambda *_: tiles.append(1))
    full = predict(new, image, spacing, heads=["kidneys"])["kidneys"]
    n_full = len(tiles)
    tiles.clear()
    probs = predict(ranged, image, spacing)
    n_ranged = len(tiles)
    assert n_ranged <= n_full / 2, (n_ranged, n_full)
    liver = np.nonzero(masks["Liver"].any((1, 2)))[0]
    labels, _ = merge_heads(ranged.spec, probs)
    inside = np.zeros(64, dtype=bool)
    inside[max(0, liver.min() - int(rng.margin_mm[0] / 2) - 1):liver.max() + int(rng.margin_mm[1] / 2) + 2] = True
    assert bool((probs["kidneys"][0, torch.from_numpy(~inside)] == 1).all())  # background, exactly
    ids = ranged.spec.label_ids()
    assert not np.isin(labels[~inside], [ids[o] for o in B_ORGANS]).any()
    for organ in B_ORGANS:
        ranged_dice = dice(labels == ids[organ], masks[organ])
        full_dice = dice(full.argmax(0).numpy() == B_ORGANS.index(organ) + 1, masks[organ])
        assert ranged_dice > 0.5 and ranged_dice >= full_dice - 0.02, (organ, ranged_dice, full_dice)


def test_naive_fine_tuning_of_one_network_forgets_a(data: dict[str, RawDataset], tmp_path: Path) -> None:
    seed_everything(0)
    spec = ModelSpec(id="naive", version="1", encoder_features=FEATURES, patch=PATCH,
                     heads=(HeadSpec("all", A_ORGANS + B_ORGANS, default_widths(FEATURES)),))
    net = train_model(spec, [data["A"]], tmp_path / "a", TrainConfig(iterations=250, lr=1e-2))
    before = evaluate(net, data["test"], structures=A_ORGANS)
    assert min(before.values()) > 0.8
    fit(net, net.spec.heads, [data["B"]], TrainConfig(iterations=150, lr=1e-2, partial_labels=False),
        tmp_path / "b", train_encoder=True)
    after = evaluate(net, data["test"])
    for organ in A_ORGANS:
        assert after[organ] < before[organ] - 0.3, (organ, before, after)
    assert min(after[o] for o in B_ORGANS) > 0.3  # it did learn B


def test_pruning_halves_decoder_parameters_within_dice_002(
        data: dict[str, RawDataset], model_a: tuple[MultiHeadModel, Path], tmp_path: Path) -> None:
    seed_everything(0)
    model = copy.deepcopy(model_a[0])
    encoder_before = {k: v.clone() for k, v in model.net.encoder.state_dict().items()}
    # keep 0.5 cuts the last level to 4 channels; the least-squares choice of the classifier's inputs
    # keeps the first cut usable (Dice ~0.9, not 0), so the fine-tuning has a wide margin
    pruned, report = prune_head_with_report(model, "abdomen", 0.5, [data["A"]], data["test"],
                                            TrainConfig(iterations=200, lr=1e-2, seed=0), tmp_path / "work")
    assert report.param_reduction >= 0.5, report.table()
    assert report.flops_after < 0.6 * report.flops_before
    assert min(report.dice_pruned.values()) > 0.5, report.table()
    assert report.max_relative_drop <= 0.02 and report.accepted, report.table()  # 2 % of the unpruned Dice
    for key, value in pruned.net.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key])
    from segmenter.multihead.model import save_model
    save_model(pruned, tmp_path / "pruned")
    again = load_model(tmp_path / "pruned")
    assert again.spec.head("abdomen").widths == pruned.net.heads["abdomen"].widths  # type: ignore[union-attr]
    case = data["test"].cases[0]
    assert torch.equal(predict(again, case.image, case.spacing)["abdomen"],
                       predict(pruned, case.image, case.spacing)["abdomen"])


def test_magnitude_pruning_with_rewinding_removes_most_weights_within_dice_002(
        data: dict[str, RawDataset], model_a: tuple[MultiHeadModel, Path], tmp_path: Path) -> None:
    """CL-Net's recipe: global L1 masks, survivors rewound to the pre-prune weights, retrained."""
    from segmenter.multihead.model import save_model
    from segmenter.training.magnitude_pruning import magnitude_prune_head, sparsity_of
    seed_everything(0)
    model = copy.deepcopy(model_a[0])
    encoder_before = {k: v.clone() for k, v in model.net.encoder.state_dict().items()}
    pruned, report = magnitude_prune_head(model, "abdomen", [data["A"]], data["test"],
                                          TrainConfig(iterations=70, lr=3e-3, seed=0), tmp_path / "work",
                                          schedule=(0.5, 0.7))
    assert report.accepted and [s.accepted for s in report.steps] == [True, True], report.table()
    assert report.param_reduction >= 0.5, report.table()
    assert report.flops_effective_after < 0.5 * report.flops_before
    assert report.max_relative_drop <= 0.02, report.table()
    assert abs(sparsity_of(pruned.net.head("abdomen")) - 0.7) < 0.001
    for key, value in pruned.net.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key])
    save_model(pruned, tmp_path / "pruned")
    again = load_model(tmp_path / "pruned")
    assert abs(sparsity_of(again.net.head("abdomen")) - 0.7) < 0.001  # the zeros are the mask
    assert report.to_json()["mode"] == "magnitude" and "non-zero parameters" in report.table()


def test_interrupted_training_resumes_to_the_same_weights(data: dict[str, RawDataset], tmp_path: Path) -> None:
    seed_everything(0)
    spec = ModelSpec(id="r", version="1", encoder_features=FEATURES, patch=PATCH,
                     heads=(HeadSpec("abdomen", A_ORGANS, default_widths(FEATURES)),))
    cfg = TrainConfig(iterations=12, checkpoint_every=4, log_every=4)
    straight = MultiHeadModel.build(spec, seed=0)
    fit(straight, spec.heads, [data["A"]], cfg, tmp_path / "straight", train_encoder=True)
    first = MultiHeadModel.build(spec, seed=0)
    fit(first, spec.heads, [data["A"]], replace(cfg, stop_after=6), tmp_path / "resumed", train_encoder=True)
    assert (tmp_path / "resumed/checkpoint.pt").is_file()
    resumed = MultiHeadModel.build(spec, seed=0)
    fit(resumed, spec.heads, [data["A"]], cfg, tmp_path / "resumed", train_encoder=True, resume=True)
    for key, value in straight.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[key]), key


def test_cli_train_add_head_run_and_registry(data: dict[str, RawDataset], tmp_path: Path) -> None:
    seed_everything(0)
    models = tmp_path / "models"
    root = tmp_path / "phantoms"
    write_dataset(root / "A", 3, ABDOMEN, A_ORGANS, seed=11)
    write_dataset(root / "B", 3, ABDOMEN, B_ORGANS, seed=12)
    common = ["--models-dir", str(models), "--iterations", "6", "--log-every", "3", "--checkpoint-every", "3"]
    assert main(["train", "--id", "demo", "--dataset", str(root / "A"), "--head", "abdomen=Liver,Spleen",
                 "--features", "4,8,16", "--patch", "16,32,32", *common]) == 0
    assert main(["add-head", "demo", "--dataset", str(root / "B"), "--head", "kidneys=Kidney_L,Kidney_R",
                 *common]) == 0
    manifest = json.loads((models / "demo/manifest.json").read_text())
    assert manifest["version"] == "2" and manifest["kind"] == "multihead"
    assert json.loads((models / "demo/versions/1/manifest.json").read_text())["version"] == "1"
    engine = get_engine("demo", models, "cpu")
    assert isinstance(engine, MultiHeadEngine) and engine.version == "2"
    only_a = get_engine("demo:abdomen", models, "cpu")
    case = data["test"].cases[0]
    volume = Volume(case.image, (case.spacing[2], case.spacing[1], case.spacing[0]), (0.0, 0.0, 0.0),
                    (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    assert [s.name for s in only_a.segment(volume).structures] == list(A_ORGANS)
    full = engine.segment(volume)
    assert [s.name for s in full.structures] == list(A_ORGANS + B_ORGANS)
    volume.write(tmp_path / "ct.nii.gz")
    assert main(["run", str(tmp_path / "ct.nii.gz"), "--out", str(tmp_path / "out"), "--model", "demo",
                 "--models-dir", str(models), "--device", "cpu"]) == 0
    written = json.loads((tmp_path / "out/structures.json").read_text())
    assert written["model_version"] == "2"
    assert main(["add-head", "demo", "--dataset", str(root / "B"), "--head", "bad=NotAStructure", *common]) == 1
    assert main(["add-head", "missing", "--dataset", str(root / "B"), "--head", "k=Kidney_L", *common]) == 1
    assert np.array_equal(Volume.read(tmp_path / "out/labels.nii.gz").array, full.labels.array)
