"""Multi-head model format, inference plumbing, pruning surgery, crop geometry and the partial-label loss."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from segmenter.core.errors import ModelError
from segmenter.core.volume import Volume
from segmenter.multihead.cascade import CropBox, crop_box, paste_probs, sample_box
from segmenter.multihead.model import (
    MultiHeadEngine,
    MultiHeadModel,
    load_model,
    predict,
    save_model,
)
from segmenter.multihead.net import HeadSubset, default_widths
from segmenter.multihead.spec import (
    CropSpec,
    HeadSpec,
    ModelSpec,
    RangeSpec,
    parse_spec,
)
from segmenter.training.pruning import head_cost, prune_decoder
from segmenter.training.train import next_version, softmax_partial_loss
from tests.multihead_phantoms import deterministic_torch, seed_everything


@pytest.fixture(scope="module", autouse=True)
def _deterministic() -> Iterator[None]:
    yield from deterministic_torch()


F = (4, 8, 16)
W = default_widths(F)


def _spec(**kw: object) -> ModelSpec:
    base: dict[str, object] = {"id": "m", "version": "1", "encoder_features": F, "patch": (8, 16, 16), "heads": (
        HeadSpec("a", ("Liver", "Spleen"), W), HeadSpec("b", ("Kidney_L",), W, priority=-1))}
    base.update(kw)
    return ModelSpec(**base)  # type: ignore[arg-type]


def test_round_trip_through_safetensors_and_manifest(tmp_path: Path) -> None:
    seed_everything(0)
    model = MultiHeadModel.build(_spec(), seed=0)
    save_model(model, tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["kind"] == "multihead" and len(raw["multihead"]["sha256"]) == 64
    from segmenter.models.manifest import (
        read_manifest,  # the registry's own parser accepts it
    )
    assert read_manifest(tmp_path).kind == "multihead"
    again = load_model(tmp_path)
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, again.net.state_dict()[k])
    assert again.spec.label_ids() == {"Liver": 1, "Spleen": 2, "Kidney_L": 3}


def test_changed_weights_fail_the_checksum(tmp_path: Path) -> None:
    save_model(MultiHeadModel.build(_spec(), seed=0), tmp_path)
    data = bytearray((tmp_path / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        load_model(tmp_path)


@pytest.mark.parametrize(("change", "message"), [
    ({"heads": (HeadSpec("a", ("Liver",), W), HeadSpec("a", ("Spleen",), W))}, "repeated head names"),
    ({"heads": (HeadSpec("a", ("Liver",), W), HeadSpec("b", ("Liver",), W))}, "produced by heads"),
    ({"heads": (HeadSpec("a", ("NotAnOrgan",), W),)}, "not catalogue structures"),
    ({"heads": (HeadSpec("a b", ("Liver",), W),)}, "names are"),
    ({"heads": (HeadSpec("a", ("Liver",), W[:1]),)}, "widths"),
    ({"heads": (HeadSpec("a", ("Liver",), W, kind="salt"),)}, "label tree"),
    ({"heads": (HeadSpec("a", ("Liver",), W, group="tiny"),)}, "unknown group"),
    ({"merge_rule": "vote"}, "merge rule"),
    ({"patch": (6, 16, 16)}, "multiple of 4"),
])
def test_bad_specs_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        MultiHeadModel.build(_spec(**change))


def test_manifest_without_heads_or_wrong_kind_is_refused() -> None:
    raw = _spec().to_json()
    raw["multihead"]["heads"] = []
    with pytest.raises(ModelError, match="no heads"):
        parse_spec(raw)
    with pytest.raises(ModelError, match="not a multihead"):
        parse_spec({**raw, "kind": "nnunet_v2"})


def test_encoder_runs_once_per_tile_for_all_heads() -> None:
    model = MultiHeadModel.build(_spec(), seed=0)
    calls = []
    model.net.encoder.register_forward_hook(lambda *_: calls.append(1))
    image = np.random.default_rng(0).normal(0, 100, (8, 16, 16)).astype(np.float32)
    probs = predict(model, image, (1.0, 1.0, 1.0))
    assert len(calls) == 1 and set(probs) == {"a", "b"}
    assert torch.allclose(probs["a"].sum(0), torch.ones(8, 16, 16), atol=1e-5)
    calls.clear()
    only = predict(model, image, (1.0, 1.0, 1.0), heads=["b"])
    assert len(calls) == 1 and set(only) == {"b"} and torch.equal(only["b"], probs["b"])


def test_switched_off_heads_do_not_run_or_appear() -> None:
    spec = _spec()
    spec = replace(spec, heads=(spec.heads[0], replace(spec.heads[1], enabled=False)))
    engine = MultiHeadEngine(MultiHeadModel.build(spec, seed=0))
    assert engine.device == "cpu"
    volume = Volume(np.zeros((8, 16, 16), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                    (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    assert [s.name for s in engine.segment(volume).structures] == ["Liver", "Spleen"]
    assert [s.name for s in engine.with_heads(["b"]).segment(volume).structures] == ["Kidney_L"]
    with pytest.raises(ModelError, match="no head 'c'"):
        engine.with_heads(["c"])
    with pytest.raises(ModelError, match="unknown head"):
        HeadSubset(engine.model.net, ["c"])


def test_pruning_surgery_is_exact_at_keep_one_and_shrinks_otherwise() -> None:
    torch.manual_seed(0)
    model = MultiHeadModel.build(_spec(), seed=0)
    head = model.net.heads["a"]
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        skips = model.net.encoder(x)
        same = prune_decoder(head, F, 1.0)  # type: ignore[arg-type]
        assert torch.equal(same(skips), head(skips))
        half = prune_decoder(head, F, 0.5)  # type: ignore[arg-type]
        assert half(skips).shape == head(skips).shape
    assert half.widths == ((4, 4, 4), (2, 2, 2))
    model.net.heads["a"] = half
    params, flops = head_cost(model.net, "a", (8, 16, 16))
    assert params < 0.5 * sum(p.numel() for p in head.parameters()) and flops > 0
    with pytest.raises(ModelError, match="keep fraction"):
        prune_decoder(head, F, 0.0)  # type: ignore[arg-type]


def test_crop_and_paste_geometry() -> None:
    spec = CropSpec("Eye_L", (0.0, 2.0, -2.0), (8.0, 8.0, 8.0), (0.5, 0.5, 0.5))
    box = crop_box(spec, (10.0, 10.0, 10.0), divisor=4)
    assert box.shape == (16, 16, 16)
    centre = [s + (n - 1) * 0.5 / 2 for s, n in zip(box.start_mm, box.shape, strict=True)]
    assert np.allclose(centre, (10.0, 12.0, 8.0))
    # a linear ramp along x is sampled exactly
    ramp = torch.arange(32, dtype=torch.float32).view(1, 1, 1, 32).expand(1, 24, 24, 32).contiguous()
    crop = sample_box(ramp, (1.0, 1.0, 1.0), CropBox((4.0, 4.0, 3.0), (4, 4, 6), (1.0, 1.0, 0.5)))
    assert torch.allclose(crop[0, 0, 0], torch.tensor([3.0, 3.5, 4.0, 4.5, 5.0, 5.5]))
    probs = torch.zeros(2, 4, 4, 4)
    probs[1] = 1.0
    out = paste_probs(probs, CropBox((2.0, 2.0, 2.0), (4, 4, 4), (1.0, 1.0, 1.0)), (10, 10, 10), (1.0, 1.0, 1.0))
    assert bool((out[1, 2:6, 2:6, 2:6] == 1).all()) and float(out[1].sum()) == 64.0
    assert bool((out[0, 0] == 1).all())


def test_partial_loss_marginalises_unannotated_classes() -> None:
    head = HeadSpec("h", ("Liver", "Spleen", "Kidney_L"), W)
    logits = torch.randn(1, 4, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    target[0, 0, 0, 0] = 1
    # a dataset labelling only Liver: its background may be Spleen or Kidney_L
    loss = softmax_partial_loss(logits, target, head, ["Liver"])
    logp = torch.log_softmax(logits, 1)
    bg = torch.logsumexp(logp[:, [0, 2, 3]], 1)
    ce = -(torch.where(target == 1, logp[:, 1], bg)).mean()
    p = torch.softmax(logits, 1)[:, 1]
    dice = (2 * (p * (target == 1)).sum() + 1e-5) / (p.sum() + (target == 1).sum() + 1e-5)
    assert torch.allclose(loss, ce + 1 - dice, atol=1e-5)
    # pushing Spleen up where the dataset says "background" costs nothing more
    bumped = logits.clone()
    bumped[0, 2] += 5.0
    bumped[0, 2, 0, 0, 0] -= 5.0
    assert float(softmax_partial_loss(bumped, target, head, ["Liver"])) <= float(loss) + 1e-4
    assert float(softmax_partial_loss(bumped, target, head, ["Liver", "Spleen", "Kidney_L"])) > float(loss)


def test_next_version() -> None:
    assert next_version("1") == "2" and next_version("1.4") == "1.5" and next_version("beta") == "beta.1"


@pytest.mark.parametrize(("heads", "message"), [
    ((HeadSpec("a", ("Liver",), W, supports=("b",)), HeadSpec("b", ("Spleen",), W)), "declared before"),
    ((HeadSpec("a", ("Liver",), W, supports=("a",)),), "cannot support itself"),
    ((HeadSpec("a", ("Liver",), W), HeadSpec("b", ("Spleen",), W, supports=("a", "a"))), "repeated supporting"),
    ((HeadSpec("a", ("Liver",), W), HeadSpec("b", ("Spleen",), W, supports=("a",),
                                            crop=CropSpec("Liver", (0, 0, 0), (8, 8, 8), (1, 1, 1)))),
     "crop head cannot be supported"),
    ((HeadSpec("a", ("Liver",), W, crop=CropSpec("Spleen", (0, 0, 0), (8, 8, 8), (1, 1, 1))),
      HeadSpec("b", ("Spleen",), W, supports=("a",))), "cannot support"),
])
def test_bad_supporting_is_refused(heads: tuple[HeadSpec, ...], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        MultiHeadModel.build(_spec(heads=heads))


def test_supported_head_round_trips_and_leaves_its_supporter_alone(tmp_path: Path) -> None:
    seed_everything(0)
    spec = _spec(heads=(HeadSpec("a", ("Liver", "Spleen"), W), HeadSpec("b", ("Kidney_L",), W, supports=("a",))))
    model = MultiHeadModel.build(spec, seed=0)
    save_model(model, tmp_path)
    again = load_model(tmp_path)
    assert again.spec.head("b").supports == ("a",) and set(again.net.supports) == {"b"}
    image = np.random.default_rng(0).normal(0, 100, (8, 16, 16)).astype(np.float32)
    plain = MultiHeadModel.build(_spec(heads=(HeadSpec("a", ("Liver", "Spleen"), W),)), seed=0)
    plain.net.head("a").load_state_dict(again.net.head("a").state_dict())
    plain.net.encoder.load_state_dict(again.net.encoder.state_dict())
    both = predict(again, image, (1.0, 1.0, 1.0))
    assert torch.equal(both["a"], predict(plain, image, (1.0, 1.0, 1.0))["a"])
    # a zero gate reduces the supported head to its own decoder
    with torch.no_grad():
        again.net.supports["b"].gate.zero_()  # type: ignore[union-attr]
    x = torch.randn(1, 1, 8, 16, 16)
    skips = again.net.encoder(x)
    assert torch.equal(again.net.head_logits("b", skips), again.net.head("b")(skips))


def test_global_magnitude_masks_keep_the_largest_weights_over_the_whole_head() -> None:
    from segmenter.training.magnitude_pruning import global_magnitude_masks
    weights = {"a": torch.tensor([[0.1, -5.0], [0.3, 0.0]]), "b": torch.tensor([2.0, -0.2, 0.05, 1.0])}
    masks = global_magnitude_masks(weights, 0.5)
    assert masks["a"].tolist() == [[0.0, 1.0], [1.0, 0.0]] and masks["b"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert int(sum(m.sum() for m in global_magnitude_masks(weights, 0.75).values())) == 2
    with pytest.raises(ModelError, match="sparsity"):
        global_magnitude_masks(weights, 1.0)


def test_rewinding_resets_survivors_to_the_checkpoint_and_zeros_the_rest(tmp_path: Path) -> None:
    from segmenter.training.magnitude_pruning import (
        global_magnitude_masks,
        prunable_weights,
        rewind_and_mask,
        rewind_state,
        sparsity_of,
    )
    from segmenter.training.train import TrainConfig, fit
    seed_everything(0)
    model = MultiHeadModel.build(_spec(), seed=0)
    torch.save({"net": model.net.state_dict(), "iteration": 0}, tmp_path / "checkpoint-0.pt")
    early = rewind_state(tmp_path / "checkpoint-0.pt", "a")
    with torch.no_grad():  # stands for training: the weights move away from the rewind point
        for p in model.net.head("a").parameters():
            p.add_(torch.randn_like(p))
    head = model.net.head("a")
    masks = global_magnitude_masks(prunable_weights(head), 0.6)
    rewind_and_mask(head, early, masks)
    assert abs(sparsity_of(head) - 0.6) < 0.01
    for name, w in prunable_weights(head).items():
        assert torch.equal(w, early[name] * masks[name])
    assert torch.equal(head.levels[0].conv1.norm.weight, early["levels.0.conv1.norm.weight"])  # type: ignore[index]
    with pytest.raises(ModelError, match="no weights of head"):
        rewind_state(tmp_path / "checkpoint-0.pt", "zzz")
    with pytest.raises(ModelError, match="does not fit"):
        rewind_and_mask(head, rewind_state(tmp_path / "checkpoint-0.pt", "b"), {})
    # the mask holds through training
    from segmenter.training.data import RawDataset
    from tests.multihead_phantoms import ABDOMEN, write_dataset
    data = RawDataset.read(write_dataset(tmp_path / "D", 1, ABDOMEN, ("Liver",), seed=0, shape=(8, 16, 16)))
    weights = prunable_weights(head)
    fit(model, [model.spec.head("a")], [data], TrainConfig(iterations=3, snapshot_at=(2,)), tmp_path / "w",
        train_encoder=False, masks=[(weights[k], m) for k, m in masks.items()])
    for name, w in prunable_weights(head).items():
        assert bool((w[masks[name] == 0] == 0).all()) and not torch.equal(w, early[name] * masks[name])
    assert (tmp_path / "w/checkpoint-2.pt").is_file()


def test_slice_range_uses_the_landmarks_largest_component_and_margins() -> None:
    from segmenter.multihead.body_range import learn_range_spec, net_range, slice_range
    from segmenter.multihead.spec import RangeSpec
    mask = np.zeros((40, 8, 8), dtype=bool)
    mask[20:25, 2:6, 2:6] = True  # the landmark
    mask[2, 0, 0] = mask[37, 7, 7] = True  # specks elsewhere
    assert slice_range(mask, 2.0, RangeSpec("Liver", (4.0, 7.0))) == (18, 28)  # 36 mm to 55 mm
    assert slice_range(mask, 2.0, RangeSpec("Liver", (100.0, 100.0))) == (0, 40)
    assert slice_range(np.zeros_like(mask), 2.0, RangeSpec("Liver", (4.0, 4.0))) is None
    assert net_range(18, 28, 40, 40, 8) == (17, 29)
    assert net_range(18, 20, 40, 40, 8) == (15, 23)  # widened to one patch
    assert net_range(0, 40, 40, 20, 8) == (0, 20)
    labels = np.zeros((40, 4, 4), dtype=np.int64)
    labels[20:25] = 1
    labels[15:27, 0, 0] = 2
    spec = learn_range_spec([(labels, 1, [2])], 2.0, "Liver", extra_mm=1.0)
    assert spec == RangeSpec("Liver", (11.0, 5.0))
    with pytest.raises(ModelError, match="no training case"):
        learn_range_spec([(labels, 3, [2])], 2.0, "Liver")


@pytest.mark.parametrize(("heads", "message"), [
    ((HeadSpec("a", ("Liver",), W), HeadSpec("b", ("Spleen",), W, range=RangeSpec("Kidney_L", (5, 5)))),
     "not produced by a head declared before"),
    ((HeadSpec("b", ("Spleen",), W, range=RangeSpec("Liver", (5, 5))), HeadSpec("a", ("Liver",), W)),
     "not produced by a head declared before"),
    ((HeadSpec("a", ("Liver",), W), HeadSpec("b", ("Spleen",), W, range=RangeSpec("Liver", (-5, -5)))),
     "leave no slices"),
    ((HeadSpec("a", ("Liver",), W), HeadSpec("b", ("Spleen",), W, range=RangeSpec("Liver", (5, 5)),
                                            crop=CropSpec("Liver", (0, 0, 0), (8, 8, 8), (1, 1, 1)))),
     "cannot have a body-part range"),
])
def test_bad_ranges_are_refused(heads: tuple[HeadSpec, ...], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        MultiHeadModel.build(_spec(heads=heads))


def test_ranged_head_skips_tiles_outside_and_everything_without_its_landmark() -> None:
    seed_everything(0)
    spec = _spec(patch=(8, 16, 16), heads=(HeadSpec("a", ("Liver", "Spleen"), W),
                                           HeadSpec("b", ("Kidney_L",), W, range=RangeSpec("Liver", (2.0, 2.0)))))
    model = MultiHeadModel.build(spec, seed=0)
    calls: list[int] = []
    model.net.head("b").register_forward_hook(lambda *_: calls.append(1))
    a = model.net.head("a")
    with torch.no_grad():  # the landmark head "sees" liver everywhere: then the range is the whole scan
        a.seg.weight.zero_()
        a.seg.bias.copy_(torch.tensor([0.0, 50.0, 0.0]))
    image = np.random.default_rng(0).normal(0, 100, (48, 16, 16)).astype(np.float32)
    whole = predict(model, image, (1.0, 1.0, 1.0), heads=["b"])
    assert set(whole) == {"b"} and len(calls) == 11  # (48 - 8) / 4 + 1 tiles along z
    with torch.no_grad():  # ... and nowhere: the ranged head does not run at all
        a.seg.bias.copy_(torch.tensor([50.0, 0.0, 0.0]))
    calls.clear()
    none = predict(model, image, (1.0, 1.0, 1.0))
    assert not calls and bool((none["b"][0] == 1).all())
