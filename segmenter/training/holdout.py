"""Validation cases held out of training, for ``segmenter prune``'s Dice check.

A pruned head is judged by how much its Dice drops; measured on the cases it is fine-tuned on, the
drop says little about new patients. Without ``--validation``, :func:`hold_out` therefore sets aside
a share of the cases of the first dataset that labels one of the head's structures: a seeded random
pick of ``fraction`` of its cases (at least one, and at least one left for training). Those cases
are used for the Dice check only, never for fine-tuning or calibration; the command logs their
names and the report records them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from segmenter.training.data import RawDataset, TrainingError

log = logging.getLogger(__name__)

DEFAULT_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    train: tuple[RawDataset, ...]
    validation: RawDataset
    held_out: tuple[str, ...]  # names of the cases held out of ``source``

    @property
    def source(self) -> str:
        return self.validation.name.removesuffix(" (held out)")

    def to_json(self) -> dict[str, object]:
        return {"dataset": self.source, "held_out": list(self.held_out),
                "training_cases": sum(len(d.cases) for d in self.train)}


def hold_out(datasets: Sequence[RawDataset], structures: Sequence[str], fraction: float = DEFAULT_FRACTION,
             seed: int = 0) -> Split:
    """Hold ``fraction`` of the cases of the first dataset labelling one of ``structures`` out of training."""
    if not 0 < fraction < 1:
        raise TrainingError(f"the held-out fraction must lie in (0, 1), got {fraction}")
    source = next((d for d in datasets if any(s in d.labels for s in structures)), None)
    if source is None:
        raise TrainingError(f"no dataset labels any of {list(structures)} to hold validation cases out of")
    n = len(source.cases)
    if n < 2:
        raise TrainingError(f"dataset {source.name} has {n} case: none can be held out for validation and still "
                            "leave one for training; give --validation DATASET (labelled cases not trained on)")
    k = min(n - 1, max(1, round(fraction * n)))
    picked = set(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist())
    held = tuple(c for i, c in enumerate(source.cases) if i in picked)
    kept = tuple(c for i, c in enumerate(source.cases) if i not in picked)
    train = tuple(replace(d, cases=kept) if d is source else d for d in datasets)
    validation = replace(source, name=f"{source.name} (held out)", cases=held)
    log.info("validation: %d of the %d cases of %s held out of training (%s); --validation gives a dataset instead",
             k, n, source.name, ", ".join(c.name for c in held))
    return Split(train, validation, tuple(c.name for c in held))
