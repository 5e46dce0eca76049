"""Structured (channel-level) pruning of decoder heads, with a report.

CL-Net prunes decoders, never the general encoder (clNet: global unstructured L1-magnitude pruning
with lottery-ticket rewinding, a step accepted while validation Dice drops <= 2 %). Unstructured
masks save nothing on a dense GPU kernel, so here whole channels go: in every decoder level the
transposed-conv outputs and both convs' outputs keep the ``keep`` fraction with the largest
importance, the layers after them lose the matching input channels, and a smaller dense head is
rebuilt. A conv's output is instance-normalised, so its own filter's scale means nothing: the
importance of a conv output channel is |InstanceNorm scale| x the L1 norm of the weights that read it
in the next layer; of a transposed-conv output (not normalised) its filter's L1 norm x the L1 norm of
the weights reading it. Encoder skip
channels are never touched (they belong to the shared encoder).

:func:`prune_head_with_report` then fine-tunes the pruned head alone (encoder and other heads
frozen, like :func:`segmenter.training.add_head`) with the labels' loss plus distillation from the
unpruned head's logits (the ICCV 2023 predecessor of CL-Net distils pruned decoders from their
teachers; dense targets recover a pruned head in few iterations), and reports parameters, FLOPs per patch and Dice
before and after; ``accepted`` is whether the Dice drop stayed within ``max_dice_drop`` (2 %, as clNet).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segmenter.errors import ModelError
from segmenter.metrics import evaluate
from segmenter.multihead import MultiHeadModel
from segmenter.multihead_net import ConvNormAct, Decoder, MultiHeadNet, count_flops, count_parameters
from segmenter.training import TrainConfig, fit
from segmenter.training_data import RawDataset

log = logging.getLogger(__name__)


def _keep(scores: torch.Tensor, keep: float) -> torch.Tensor:
    k = max(1, int(round(len(scores) * keep)))
    return torch.sort(torch.argsort(scores, descending=True)[:k]).values


def _in_norm(weight: torch.Tensor) -> torch.Tensor:
    """L1 norm of a consumer's weights per *input* channel (Conv3d: dim 1; ConvTranspose3d: dim 0)."""
    return weight.detach().abs().transpose(0, 1).flatten(1).sum(1)


def _out_norm_scale(block: ConvNormAct) -> torch.Tensor:
    return block.norm.weight.detach().abs()


def _copy_conv_block(dst: ConvNormAct, src: ConvNormAct, out_idx: torch.Tensor, in_idx: torch.Tensor) -> None:
    dst.conv.weight.copy_(src.conv.weight[out_idx][:, in_idx])
    _bias(dst.conv).copy_(_bias(src.conv)[out_idx])
    dst.norm.weight.copy_(src.norm.weight[out_idx])
    dst.norm.bias.copy_(src.norm.bias[out_idx])


def _bias(conv: nn.Module) -> torch.Tensor:
    bias = getattr(conv, "bias", None)
    if not isinstance(bias, torch.Tensor):
        raise ModelError("decoder convolutions are expected to have a bias")
    return bias


@torch.no_grad()
def prune_decoder(decoder: Decoder, encoder_features: Sequence[int], keep: float) -> Decoder:
    """A smaller decoder keeping ``keep`` (0-1] of every level's channels, weights copied over."""
    if not 0 < keep <= 1:
        raise ModelError(f"keep fraction must lie in (0, 1], got {keep}")
    plan = []
    below_idx = torch.arange(encoder_features[-1])
    levels = decoder.blocks()
    for level_i, level in enumerate(levels):
        c_skip = encoder_features[-2 - level_i]
        n_up = level.up.out_channels
        up_out = level.up.weight.detach().abs().transpose(0, 1).flatten(1).sum(1)
        up_idx = _keep(up_out * _in_norm(level.conv1.conv.weight)[:n_up], keep)
        a_idx = _keep(_out_norm_scale(level.conv1) * _in_norm(level.conv2.conv.weight), keep)
        consumer = levels[level_i + 1].up.weight if level_i + 1 < len(levels) else decoder.seg.weight
        consumer_norm = (consumer.detach().abs().flatten(1).sum(1) if level_i + 1 < len(levels)
                         else _in_norm(consumer))
        b_idx = _keep(_out_norm_scale(level.conv2) * consumer_norm, keep)
        plan.append((below_idx, up_idx, a_idx, b_idx, c_skip))
        below_idx = b_idx
    widths = tuple((len(u), len(a), len(b)) for _, u, a, b, _ in plan)
    new = Decoder(encoder_features, widths, decoder.out_channels)
    for (below, up_idx, a_idx, b_idx, c_skip), old, dst in zip(plan, levels, new.blocks(), strict=True):
        dst.up.weight.copy_(old.up.weight[below][:, up_idx])
        _bias(dst.up).copy_(_bias(old.up)[up_idx])
        n_up = old.up.out_channels
        conv1_in = torch.cat([up_idx, torch.arange(n_up, n_up + c_skip)])
        _copy_conv_block(dst.conv1, old.conv1, a_idx, conv1_in)
        _copy_conv_block(dst.conv2, old.conv2, b_idx, a_idx)
    new.seg.weight.copy_(decoder.seg.weight[:, below_idx])
    _bias(new.seg).copy_(_bias(decoder.seg))
    return new


def head_cost(net: MultiHeadNet, name: str, patch: Sequence[int]) -> tuple[int, int]:
    """(parameters, FLOPs for one patch) of one head."""
    head = net.head(name)
    with torch.no_grad():
        skips = net.encoder(torch.zeros((1, net.in_channels, *patch)))
    flops = count_flops(head, call=lambda: head(skips))
    return count_parameters(head), flops


@dataclass(frozen=True)
class PruneReport:
    head: str
    keep: float
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    dice_before: dict[str, float]
    dice_pruned: dict[str, float]  # right after pruning, before fine-tuning
    dice_after: dict[str, float]  # after fine-tuning
    widths_after: list[list[int]]
    accepted: bool

    @property
    def param_reduction(self) -> float:
        return 1 - self.params_after / self.params_before

    @property
    def max_drop(self) -> float:
        return max(self.dice_before[k] - self.dice_after[k] for k in self.dice_before)

    def table(self) -> str:
        rows = [f"head {self.head}: keep {self.keep:.2f} of decoder channels -> {'accepted' if self.accepted else 'REJECTED'}",
                f"{'':14}{'before':>14}{'after':>14}",
                f"{'parameters':14}{self.params_before:>14,}{self.params_after:>14,}  (-{self.param_reduction:.1%})",
                f"{'GFLOPs/patch':14}{self.flops_before / 1e9:>14.3f}{self.flops_after / 1e9:>14.3f}"]
        for k in self.dice_before:
            rows.append(f"{'Dice ' + k:14}{self.dice_before[k]:>14.4f}{self.dice_after[k]:>14.4f}"
                        f"  (pruned, not fine-tuned: {self.dice_pruned[k]:.4f})")
        return "\n".join(rows)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["param_reduction"] = self.param_reduction
        return out


def prune_head_with_report(model: MultiHeadModel, name: str, keep: float, train: Sequence[RawDataset],
                           validation: RawDataset, cfg: TrainConfig, work_dir: Path,
                           max_dice_drop: float = 0.02) -> tuple[MultiHeadModel, PruneReport]:
    """Prune one head, fine-tune it alone on ``train``, measure on ``validation``.

    Returns the pruned model (weights of the encoder and other heads untouched) and its report; when
    the report is not accepted the caller should keep the original.
    """
    head_spec = model.spec.head(name)
    structures = [s for s in head_spec.structures if s in validation.labels]
    if not structures:
        raise ModelError(f"validation set {validation.name} labels none of head {name!r}'s structures")
    params0, flops0 = head_cost(model.net, name, model.spec.patch)
    before = evaluate(model, validation, heads=[name], structures=structures)
    teacher = model.net.head(name)
    teacher.eval()
    model.net.heads[name] = prune_decoder(teacher, model.net.encoder.features, keep)
    pruned = evaluate(model, validation, heads=[name], structures=structures)
    fit(model, [head_spec], train, cfg, work_dir, train_encoder=False, teachers={name: teacher})
    after = evaluate(model, validation, heads=[name], structures=structures)
    params1, flops1 = head_cost(model.net, name, model.spec.patch)
    drop = max(before[k] - after[k] for k in before)
    report = PruneReport(name, keep, params0, params1, flops0, flops1, before, pruned, after,
                         [list(w) for w in model.net.head(name).widths], bool(drop <= max_dice_drop))
    log.info("pruned head %s: params %d -> %d, max Dice drop %.4f (%s)", name, params0, params1, float(np.float64(drop)),
             "accepted" if report.accepted else "rejected")
    return model, report
