"""Evaluation of a multi-head model on labelled cases (mean Dice per structure)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from segmenter.core.metrics import dice
from segmenter.multihead.model import MultiHeadModel, merge_heads, predict
from segmenter.training.data import RawDataset

log = logging.getLogger(__name__)


def evaluate(model: MultiHeadModel, dataset: RawDataset, heads: Sequence[str] | None = None,
             structures: Sequence[str] | None = None) -> dict[str, float]:
    """Mean Dice per structure the dataset labels (and the model produces), on the merged label map."""
    ids = model.spec.label_ids()
    names = [s for s in (structures or dataset.labels) if s in ids and s in dataset.labels]
    scores: dict[str, list[float]] = {s: [] for s in names}
    for case in dataset.cases:
        probs = predict(model, case.image, case.spacing, heads)
        labels, _ = merge_heads(model.spec, probs)
        for s in names:
            scores[s].append(dice(labels == ids[s], case.labels == dataset.labels[s]))
    out = {s: float(np.mean(v)) for s, v in scores.items()}
    log.info("Dice on %s: %s", dataset.name, ", ".join(f"{k} {v:.3f}" for k, v in out.items()))
    return out
