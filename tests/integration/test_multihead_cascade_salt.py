"""SOARS cascade vs single pass, and a SALT head on a hierarchical phantom (tiny nets, CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from segmenter.core.metrics import dice
from segmenter.core.volume import Volume
from segmenter.multihead.cascade import learn_crop_spec
from segmenter.multihead.model import MultiHeadEngine, load_model, predict
from segmenter.multihead.net import default_widths
from segmenter.multihead.salt import LabelTree
from segmenter.multihead.spec import HeadSpec, ModelSpec
from segmenter.training.data import RawDataset
from segmenter.training.evaluate import evaluate
from segmenter.training.train import TrainConfig, train_model
from tests.multihead_phantoms import (
    ABDOMEN,
    HEAD,
    deterministic_torch,
    make_case,
    seed_everything,
    write_dataset,
)


@pytest.fixture(scope="module", autouse=True)
def _deterministic() -> Iterator[None]:
    yield from deterministic_torch()


FEATURES = (8, 16, 32)


def test_cascade_beats_single_pass_on_a_small_structure_next_to_its_anchor(tmp_path: Path) -> None:
    """Both models see the same 1 mm input and work on a 2 mm grid; the small & hard head of the
    cascade runs on a 1 mm crop placed from the anchor (Eye_L) prediction."""
    seed_everything(0)
    geometry = {"shape": (32, 64, 64), "spacing": (1.0, 1.0, 1.0)}
    train = RawDataset.read(write_dataset(tmp_path / "D", 6, HEAD, ["Eye_L", "Glnd_Lacrimal_L"], 1, **geometry))
    test = RawDataset.read(write_dataset(tmp_path / "T", 3, HEAD, ["Eye_L", "Glnd_Lacrimal_L"], 3, **geometry))
    cfg = TrainConfig(iterations=150, lr=1e-2)
    common = {"encoder_features": FEATURES, "patch": (16, 32, 32), "spacing": (2.0, 2.0, 2.0)}
    single = train_model(ModelSpec(id="single", version="1", heads=(
        HeadSpec("all", ("Eye_L", "Glnd_Lacrimal_L"), default_widths(FEATURES)),), **common),  # type: ignore[arg-type]
        [train], tmp_path / "single", cfg)
    crop = learn_crop_spec([(c.labels, 1, 2) for c in train.cases], train.cases[0].spacing, "Eye_L", (1.0, 1.0, 1.0))
    assert crop.offset_mm[1] < -5 and crop.offset_mm[2] > 5  # the gland sits up-left of the eye
    cascade = train_model(ModelSpec(id="cascade", version="1", heads=(
        HeadSpec("anchor", ("Eye_L",), default_widths(FEATURES)),
        HeadSpec("small", ("Glnd_Lacrimal_L",), default_widths(FEATURES), group="small", priority=1, crop=crop),
    ), **common), [train], tmp_path / "cascade", cfg)  # type: ignore[arg-type]
    s = evaluate(single, test)
    c = evaluate(load_model(tmp_path / "cascade"), test)
    assert c["Glnd_Lacrimal_L"] > s["Glnd_Lacrimal_L"] + 0.2, (s, c)
    assert c["Glnd_Lacrimal_L"] > 0.6
    assert c["Eye_L"] > 0.8
    # no anchor in the image: the small head stays empty instead of guessing
    blank = np.full((32, 64, 64), -1000.0, dtype=np.float32)
    probs = predict(cascade, blank, (1.0, 1.0, 1.0))
    assert not bool((probs["small"].argmax(0) > 0).any())


TREE = ("background", "External,other", "External,Liver", "External,Spleen",
        "External,Kidneys,Kidney_L", "External,Kidneys,Kidney_R")


def test_salt_head_on_a_hierarchical_phantom_is_tree_consistent(tmp_path: Path) -> None:
    seed_everything(0)
    labelled = ["other", "Liver", "Spleen", "Kidney_L", "Kidney_R"]
    # the body label ("other") is written first, organs over it
    root = write_dataset(tmp_path / "H", 6, ABDOMEN, [], seed=5)
    rng = np.random.default_rng(5)
    geometry = {"spacing": (1.5, 1.5, 2.0), "origin": (0.0, 0.0, 0.0), "direction": (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)}
    for i in range(6):
        image, masks = make_case(rng, ABDOMEN, (24, 48, 48), (2.0, 1.5, 1.5))
        labels = np.zeros(image.shape, dtype=np.uint8)
        labels[masks["External"]] = 1
        for value, name in enumerate(labelled[1:], start=2):
            labels[masks[name]] = value
        Volume(image, **geometry).write(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz")  # type: ignore[arg-type]
        Volume(labels, **geometry).write(root / "labelsTr" / f"case_{i:03d}.nii.gz")  # type: ignore[arg-type]
    import json
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, **{n: v for v, n in enumerate(labelled, 1)}}
    (root / "dataset.json").write_text(json.dumps(meta))
    data = RawDataset.read(root)
    head = HeadSpec("tree", ("External", "Liver", "Spleen", "Kidney_L", "Kidney_R"), default_widths(FEATURES),
                    kind="salt", tree=TREE)
    model = train_model(ModelSpec(id="salt", version="1", encoder_features=FEATURES, patch=(16, 32, 32),
                                  heads=(head,)), [data], tmp_path / "salt", TrainConfig(iterations=250, lr=1e-2))
    tree = LabelTree(TREE)
    engine = MultiHeadEngine(load_model(tmp_path / "salt"))
    for case in data.cases[:3]:
        volume = Volume(case.image, (1.5, 1.5, 2.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
        result = engine.segment(volume)
        external = result.extra_masks["External"]
        # a child label implies its parent: every organ voxel lies in External
        for name in ("Liver", "Spleen", "Kidney_L", "Kidney_R"):
            assert bool(np.all(external[result.mask(name)]))
        assert dice(external, case.labels > 0) > 0.9
        assert dice(result.mask("Liver"), case.labels == 2) > 0.8
        # probabilities from the trained net obey the tree identities
        probs = predict(model, case.image, case.spacing)["tree"]
        for i, children in enumerate(tree.children):
            if children:
                assert torch.allclose(probs[list(children)].sum(0), probs[i], atol=1e-4)
        assert torch.allclose(probs[list(tree.leaves)].sum(0), torch.ones(probs.shape[1:]), atol=1e-4)


@pytest.mark.parametrize("rule", ["priority", "probability"])
def test_merge_rule_is_applied(rule: str) -> None:
    from segmenter.multihead.model import merge_heads
    spec = ModelSpec(id="m", version="1", encoder_features=(4, 8), patch=(8, 8, 8), merge_rule=rule, heads=(
        HeadSpec("a", ("Liver",), ((4, 4, 4),), priority=1), HeadSpec("b", ("Spleen",), ((4, 4, 4),), priority=0)))
    pa = torch.tensor([[0.4, 0.2, 0.9], [0.6, 0.8, 0.1]]).view(2, 1, 1, 3)  # Liver wins voxels 0 and 1
    pb = torch.tensor([[0.1, 0.3, 0.2], [0.9, 0.7, 0.8]]).view(2, 1, 1, 3)  # Spleen claims all three
    labels, _ = merge_heads(spec, {"a": pa, "b": pb})
    expected = [1, 1, 2] if rule == "priority" else [2, 1, 2]
    assert labels.ravel().tolist() == expected
