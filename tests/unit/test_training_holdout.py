"""prune's validation split (cases held out of training) and its Dice limit, relative to the unpruned Dice."""

from __future__ import annotations

import numpy as np
import pytest

from segmenter.training.data import Case, RawDataset, TrainingError
from segmenter.training.holdout import hold_out
from segmenter.training.pruning import relative_drop


def _dataset(name: str, n: int, labels: dict[str, int]) -> RawDataset:
    empty = np.zeros((2, 2, 2), np.float32)
    cases = tuple(Case(f"{name}_{i}", empty, empty.astype(np.int64), (1.0, 1.0, 1.0)) for i in range(n))
    return RawDataset(name, labels, None, cases)


def test_cases_held_out_are_not_trained_on() -> None:
    other = _dataset("kidneys", 3, {"Kidney_L": 1})
    source = _dataset("abdomen", 10, {"Liver": 1, "Spleen": 2})
    split = hold_out([other, source], ["Liver"], fraction=0.2, seed=3)
    assert split.train[0] is other  # datasets without the head's structures are left whole
    held = {c.name for c in split.validation.cases}
    trained = {c.name for c in split.train[1].cases}
    assert len(held) == 2 and len(trained) == 8 and not held & trained
    assert held | trained == {c.name for c in source.cases}
    assert split.held_out == tuple(c.name for c in split.validation.cases)
    assert split.to_json() == {"dataset": "abdomen", "held_out": list(split.held_out), "training_cases": 11}
    assert hold_out([other, source], ["Liver"], fraction=0.2, seed=3).held_out == split.held_out  # seeded


@pytest.mark.parametrize(("n", "fraction", "held"), [(2, 0.2, 1), (3, 0.9, 2), (5, 0.5, 2), (20, 0.2, 4)])
def test_at_least_one_case_is_held_out_and_one_trained_on(n: int, fraction: float, held: int) -> None:
    split = hold_out([_dataset("a", n, {"Liver": 1})], ["Liver"], fraction)
    assert len(split.validation.cases) == held and len(split.train[0].cases) == n - held


def test_a_single_case_or_no_labelled_dataset_is_refused() -> None:
    with pytest.raises(TrainingError, match="give --validation"):
        hold_out([_dataset("a", 1, {"Liver": 1})], ["Liver"])
    with pytest.raises(TrainingError, match="no dataset labels"):
        hold_out([_dataset("a", 4, {"Spleen": 1})], ["Liver"])


def test_the_dice_limit_is_relative_to_the_unpruned_dice() -> None:
    # 0.5 -> 0.485 loses 0.015 of Dice: within an absolute 0.02, but 3 % of the unpruned Dice
    assert relative_drop({"Liver": 0.5}, {"Liver": 0.485}) == pytest.approx(0.03)
    assert relative_drop({"Liver": 0.9, "Spleen": 0.5}, {"Liver": 0.891, "Spleen": 0.52}) == pytest.approx(0.01)
    assert relative_drop({"Liver": 0.0}, {"Liver": 0.1}) == pytest.approx(-0.1)  # nothing to lose
