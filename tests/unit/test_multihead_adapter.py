"""Adapters of added heads: identity at start, one head's only, stored and counted (no training here)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from segmenter.core.errors import ModelError
from segmenter.multihead.info import add_head_report, heads_listing, heads_table
from segmenter.multihead.model import MultiHeadModel, load_model, save_model
from segmenter.multihead.net import (
    Adapter,
    adapter_ranks,
    count_parameters,
    default_widths,
)
from segmenter.multihead.spec import HeadSpec, ModelSpec
from tests.multihead_phantoms import deterministic_torch, seed_everything


@pytest.fixture(scope="module", autouse=True)
def _deterministic() -> Iterator[None]:
    yield from deterministic_torch()


F = (4, 8, 16)
W = default_widths(F)


def _model(adapter: tuple[int, ...] | None = (1, 2, 4), supports: tuple[str, ...] = ()) -> MultiHeadModel:
    spec = ModelSpec(id="m", version="1", encoder_features=F, patch=(8, 16, 16), heads=(
        HeadSpec("a", ("Liver", "Spleen"), W),
        HeadSpec("b", ("Kidney_L",), W, priority=-1, adapter=adapter, supports=supports)))
    model = MultiHeadModel.build(spec, seed=0)
    model.net.eval()
    return model


def test_adapter_ranks_follow_the_stage_widths() -> None:
    assert adapter_ranks(F, 4) == (1, 2, 4)
    assert adapter_ranks((32, 64, 320), 8) == (4, 8, 40)
    assert adapter_ranks(F, 1) == F
    with pytest.raises(ModelError, match="reduction"):
        adapter_ranks(F, 0)


def test_a_new_adapter_is_the_identity_and_feeds_its_head_only() -> None:
    seed_everything(0)
    model = _model()
    net = model.net
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        skips = net.encoder(x)
        assert all(torch.equal(a, s) for a, s in zip(net.adapters["b"](skips), skips, strict=True))
        plain = net.head("b")(skips)
        assert torch.equal(net.forward_heads(x)["b"], plain)  # zero residual: exactly the frozen features
        a_before = net.forward_heads(x)["a"]
        for up in net.adapters["b"].up:  # type: ignore[union-attr]
            up.weight.normal_()
        out = net.forward_heads(x)
    assert not torch.allclose(out["b"], plain, atol=1e-4)  # the adapter is on head b's path...
    assert torch.equal(out["a"], a_before)  # ...and on no other's


def test_zero_rank_stages_pass_through() -> None:
    adapter = Adapter(F, (0, 2, 0))
    skips = [torch.randn(1, c, 2, 2, 2) for c in F]
    with torch.no_grad():
        for up in adapter.up:
            if isinstance(up, torch.nn.Conv3d):
                up.weight.normal_()
        out = adapter(skips)
    assert torch.equal(out[0], skips[0]) and torch.equal(out[2], skips[2])
    assert not torch.equal(out[1], skips[1])
    assert sorted(k.split(".")[1] for k in adapter.state_dict() if k.endswith("weight")) == ["1", "1"]


def test_adapter_round_trips_and_is_counted(tmp_path: Path) -> None:
    seed_everything(0)
    model = _model(supports=("a",))
    with torch.no_grad():
        model.net.adapters["b"].up[1].weight.normal_()  # type: ignore[index]
    save_model(model, tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert [h["adapter"] for h in raw["multihead"]["heads"]] == [None, [1, 2, 4]]
    again = load_model(tmp_path)
    assert again.spec.head("b").adapter == (1, 2, 4)
    assert any(k.startswith("adapters.b.") for k in again.net.state_dict())
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, again.net.state_dict()[k]), k
    expected = sum(2 * c * r + r + c for c, r in zip(F, (1, 2, 4), strict=True))  # down + up, weights + biases
    assert count_parameters(again.net.adapters["b"]) == expected
    rows = {r["head"]: r for r in heads_listing(again)}
    assert rows["a"]["parameters"]["adapter"] == 0 and rows["b"]["parameters"]["adapter"] == expected
    b = rows["b"]["parameters"]
    assert b["total"] == b["decoder"] + b["fusion"] + expected and b["fusion"] > 0
    report = add_head_report(again, "b")
    assert report["trained"]["adapter"] == expected and report["adapter"] == [1, 2, 4]
    assert report["frozen"]["total"] == count_parameters(again.net.encoder) + rows["a"]["parameters"]["total"]
    table = heads_table(again, tmp_path)
    assert f"{expected:>9,}" in table.splitlines()[-1] and "adapter 1,2,4" in table


@pytest.mark.parametrize("adapter", [(1, 2), (1, 2, 4, 8), (1, -1, 2), (0, 0, 0)])
def test_bad_adapters_are_refused(adapter: tuple[int, ...]) -> None:
    with pytest.raises(ModelError, match="adapter must give 3 bottleneck widths"):
        _model(adapter)
