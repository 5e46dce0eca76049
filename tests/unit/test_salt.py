"""SALT label-tree softmax: probability maths, decoding, loss."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from segmenter.core.errors import ModelError
from segmenter.multihead.salt import LabelTree
from tests.multihead_phantoms import deterministic_torch


@pytest.fixture(scope="module", autouse=True)
def _deterministic() -> Iterator[None]:
    yield from deterministic_torch()


TREE = LabelTree((
    "background",
    "External,other",
    "External,Liver",
    "External,Kidneys,Kidney_L",
    "External,Kidneys,Kidney_R",
))


def _node(name: str) -> int:
    return TREE.index(name)


def test_tree_structure() -> None:
    assert TREE.nodes == ("background", "External", "External,other", "External,Liver", "External,Kidneys",
                          "External,Kidneys,Kidney_L", "External,Kidneys,Kidney_R")
    assert TREE.parent == (-1, -1, 1, 1, 1, 4, 4)
    assert TREE.leaves == (0, 2, 3, 5, 6)
    assert TREE.groups == ((0, 1), (2, 3, 4), (5, 6))
    assert TREE.path_of(_node("Kidney_L")) == [5, 4, 1]
    r = TREE.reachability()
    assert bool(r[1, 5]) and bool(r[4, 6]) and bool(r[5, 5]) and not bool(r[5, 4]) and not bool(r[0, 1])


def test_single_child_and_bad_paths_are_refused() -> None:
    with pytest.raises(ModelError, match="exactly one child"):
        LabelTree(("background", "Body,Liver"))
    with pytest.raises(ModelError, match="exactly one child"):
        LabelTree(("Body,Liver", "Body,Spleen"))  # root with one child
    with pytest.raises(ModelError, match="empty component"):
        LabelTree(("background", "Body,,Liver", "Body,other"))
    with pytest.raises(ModelError, match="ambiguous"):
        LabelTree(("a,other", "a,x", "b,other", "b,y")).index("other")


def test_marginals_are_products_of_conditionals_by_hand() -> None:
    logits = torch.tensor([0.3, -1.0, 2.0, 0.5, -0.2, 1.5, 0.1]).view(1, 7, 1)
    p = TREE.probs(logits)[0, :, 0].double()

    def softmax(values: list[float]) -> list[float]:
        e = [math.exp(v) for v in values]
        return [v / sum(e) for v in e]

    bg, ext = softmax([0.3, -1.0])
    other, liver, kidneys = softmax([2.0, 0.5, -0.2])
    kl, kr = softmax([1.5, 0.1])
    expected = [bg, ext, ext * other, ext * liver, ext * kidneys, ext * kidneys * kl, ext * kidneys * kr]
    assert torch.allclose(p, torch.tensor(expected, dtype=torch.float64), atol=1e-6)


def test_probability_identities_on_random_logits() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn((3, 7, 4, 5, 6), generator=g) * 4
    p = TREE.probs(logits)
    assert torch.allclose(p[:, list(TREE.leaves)].sum(1), torch.ones(3, 4, 5, 6), atol=1e-5)
    for i, children in enumerate(TREE.children):
        if children:
            assert torch.allclose(p[:, list(children)].sum(1), p[:, i], atol=1e-5)
            assert bool((p[:, list(children)] <= p[:, i : i + 1] + 1e-6).all())
    assert torch.allclose(p[:, list(TREE.root_children)].sum(1), torch.ones(3, 4, 5, 6), atol=1e-5)
    # the conditionals of every sibling group sum to one
    cond = TREE.conditional_log_probs(logits).exp()
    for group in TREE.groups:
        assert torch.allclose(cond[:, list(group)].sum(1), torch.ones(3, 4, 5, 6), atol=1e-5)


def test_top_down_and_leaf_decoding_return_leaves_and_can_differ() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn((2, 7, 6, 6, 6), generator=g) * 3
    for decoded in (TREE.decode_top_down(logits), TREE.decode_leaves(logits)):
        assert set(decoded.unique().tolist()) <= set(TREE.leaves)
    # External 0.55 vs background 0.45, but External's mass splits over three children:
    # top-down picks an External leaf, the leaf argmax picks background.
    logits = torch.log(torch.tensor([0.45, 0.55, 1 / 3, 1 / 3, 1 / 3, 0.5, 0.5])).view(1, 7, 1)
    logits[0, 2, 0] += 1e-3
    assert int(TREE.decode_top_down(logits)[0, 0]) == _node("External,other")
    assert int(TREE.decode_leaves(logits)[0, 0]) == _node("background")


def test_node_masks_are_tree_consistent() -> None:
    g = torch.Generator().manual_seed(2)
    decoded = TREE.decode_top_down(torch.randn((1, 7, 8, 8, 8), generator=g) * 3)
    for child, parent in enumerate(TREE.parent):
        if parent >= 0:
            c, p = TREE.node_mask(decoded, child), TREE.node_mask(decoded, parent)
            assert bool((c <= p).all())
    kidneys = TREE.node_mask(decoded, _node("Kidneys"))
    assert torch.equal(kidneys, TREE.node_mask(decoded, _node("Kidney_L")) | TREE.node_mask(decoded, _node("Kidney_R")))


def test_annotated_nodes_parent_counts_once_all_children_are() -> None:
    ann = TREE.annotated_nodes(["Kidney_L", "Kidney_R", "Liver"])
    assert bool(ann[_node("Kidneys")]) and not bool(ann[_node("External")])
    ann = TREE.annotated_nodes(["background", "other", "Liver", "Kidney_L", "Kidney_R"])
    assert bool(ann.all())


def test_loss_is_path_cross_entropy_and_ignores_voxels() -> None:
    logits = torch.randn((1, 7, 2, 2, 2), generator=torch.Generator().manual_seed(3), requires_grad=True)
    target = torch.full((1, 2, 2, 2), _node("Kidney_L"))
    target[0, 0, 0, 0] = -1
    lp = TREE.log_probs(logits.detach())
    path = TREE.path_of(_node("Kidney_L"))
    valid = target >= 0
    expected = -(lp[0, path][:, valid[0]].sum(0)).mean()
    ce = TREE.loss(logits, target, dice_weight=0.0)
    assert torch.allclose(ce, expected, atol=1e-5)
    # a coarse target (only "Kidneys" known) puts no pressure on the choice between its children
    coarse = torch.full((1, 2, 2, 2), _node("Kidneys"))
    loss = TREE.loss(logits, coarse, dice_weight=0.0)
    loss.backward()  # type: ignore[no-untyped-call]
    assert logits.grad is not None
    assert torch.allclose(logits.grad[0, 5], torch.zeros(2, 2, 2), atol=1e-7)
    assert torch.allclose(logits.grad[0, 6], torch.zeros(2, 2, 2), atol=1e-7)
    all_ignored = TREE.loss(logits, torch.full((1, 2, 2, 2), -1))
    assert float(all_ignored.detach()) == 0.0


def test_wrong_channel_count_is_refused() -> None:
    with pytest.raises(ModelError, match="7 nodes"):
        TREE.probs(torch.zeros((1, 5, 2, 2, 2)))
