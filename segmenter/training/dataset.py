"""Deep supervision for ``segmenter train`` / ``add-head`` (``TrainConfig.deep_supervision``, off by default).

nnU-Net and clNet add a loss on the decoder's lower-resolution outputs: a 1x1x1 classifier per
lower decoder level, the label map downsampled to that level's grid, and weights halving per scale
(1, 1/2, 1/4, ...) normalised to sum to 1, so the full-resolution loss keeps the largest share. The
gradient reaching the deep decoder levels directly is what helps them train.

What we keep: ``deep_supervision = k`` supervises the ``k`` decoder levels just below full
resolution (scales 1/2 ... 1/2^k). nnU-Net gives the lowest output weight 0; our heads are shallow
(the tests' have two decoder levels, so one lower scale), so every level asked for counts and ``k``
may go up to the number of lower levels. The auxiliary classifiers are training-only: they live in
the checkpoint (for ``resume``) but never in the saved model, whose format and inference are those
of a model trained without deep supervision (nnU-Net also ignores them at inference). Labels are
downsampled by taking every ``2^i``-th voxel (nearest, as nnU-Net's order-0 resize); ignored voxels
stay ignored. A supported head's fusion acts at full resolution only (clNet fuses at every scale).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import nn

from segmenter.multihead.net import MultiHeadNet
from segmenter.training.data import TrainingError

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ds_weights(n_aux: int) -> list[float]:
    """Loss weights of the full-resolution output then each lower scale: 1/2^i, normalised."""
    raw = [0.5 ** i for i in range(n_aux + 1)]
    return [w / sum(raw) for w in raw]


def downsample_labels(y: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, Z, Y, X) labels on a grid ``factor`` times coarser (every ``factor``-th voxel)."""
    return y[:, ::factor, ::factor, ::factor]


class AuxClassifiers(nn.Module):
    """1x1x1 classifiers on the lower decoder levels of the heads being trained."""

    def __init__(self, net: MultiHeadNet, heads: Sequence[str], n_aux: int) -> None:
        super().__init__()
        self.n_aux = n_aux
        self.per_head = nn.ModuleDict()
        for name in heads:
            decoder = net.head(name)
            levels = len(decoder.widths)
            if not 1 <= n_aux <= levels - 1:
                raise TrainingError(f"deep supervision over {n_aux} lower scales: head {name!r} has {levels} decoder "
                                    f"levels, so 1 to {levels - 1} lower scales")
            # level levels-1 is full resolution; levels-2 is 1/2, levels-3 is 1/4, ...
            self.per_head[name] = nn.ModuleList(nn.Conv3d(decoder.widths[levels - 2 - i][2], decoder.out_channels, 1)
                                                for i in range(n_aux))

    def forward(self, name: str, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Auxiliary logits, from scale 1/2 down, given the head's level outputs (deepest first)."""
        classifiers = cast(nn.ModuleList, self.per_head[name])  # per_head holds one ModuleList per head
        return [clf(levels[len(levels) - 2 - i]) for i, clf in enumerate(classifiers)]


def deep_supervision_loss(loss: LossFn, logits: torch.Tensor, aux_logits: Sequence[torch.Tensor],
                          y: torch.Tensor) -> torch.Tensor:
    """Weighted sum of ``loss`` at full resolution and at each lower scale (see the module docstring)."""
    weights = ds_weights(len(aux_logits))
    total = weights[0] * loss(logits, y)
    for i, aux in enumerate(aux_logits, start=1):
        target = downsample_labels(y, 2 ** i)
        if tuple(target.shape[1:]) != tuple(aux.shape[2:]):
            raise TrainingError(f"deep supervision scale 1/{2 ** i}: logits {tuple(aux.shape[2:])} vs labels "
                                f"{tuple(target.shape[1:])}; patch sizes must be multiples of the network's divisor")
        total = total + weights[i] * loss(aux, target)
    return total
