"""Structured (channel-level) pruning of decoder heads, with a report.

CL-Net prunes decoders, never the general encoder (clNet: global unstructured L1-magnitude pruning
with lottery-ticket rewinding, a step accepted while validation Dice drops <= 2 %; that recipe is
:mod:`segmenter.training.magnitude_pruning`). Unstructured masks save nothing on a dense GPU kernel, so here
whole channels go: in every decoder level the transposed-conv outputs and both convs' outputs keep
the ``keep`` fraction with the largest importance, the layers after them lose the matching input
channels, and a smaller dense head is rebuilt. A conv's output is instance-normalised, so its own
filter's scale means nothing: the importance of a conv output channel is |InstanceNorm scale| x the
L1 norm of the weights that read it in the next layer; of a transposed-conv output (not normalised)
its filter's L1 norm x the L1 norm of the weights reading it. Encoder skip channels are never
touched (they belong to the shared encoder). The channels the 1x1x1 classifier reads are the
exception: its inputs are not normalised again, and a weight-based choice cannot see that five
channels are copies of one another while a sixth alone separates two organs, so with calibration
patches they are chosen, and the classifier refitted, by least squares (:func:`_refit_classifier`);
without, a removed channel's mean output is folded into the classifier's bias.

:func:`prune_head_with_report` then fine-tunes the pruned head alone (encoder and other heads
frozen, like :func:`segmenter.training.train.add_head`) with the labels' loss plus distillation from the
unpruned head's logits (the ICCV 2023 predecessor of CL-Net distils pruned decoders from their
teachers; dense targets recover a pruned head in few iterations), and reports parameters, FLOPs per
patch and Dice before and after; ``accepted`` is whether every structure's Dice dropped by at most
``max_dice_drop`` of its unpruned value (0.02: 2 %, as clNet; :func:`relative_drop`).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segmenter.core.errors import ModelError
from segmenter.multihead.model import MultiHeadModel
from segmenter.multihead.net import (
    ConvNormAct,
    Decoder,
    MultiHeadNet,
    Widths,
    count_flops,
    count_parameters,
)
from segmenter.training.data import RawDataset
from segmenter.training.evaluate import evaluate
from segmenter.training.train import TrainConfig, calibration_patches, fit

log = logging.getLogger(__name__)

MAX_CALIBRATION_VOXELS = 200_000
CALIBRATION_PATCHES = 4


def _keep(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending) of the ``k`` highest scores."""
    return torch.sort(torch.argsort(scores, descending=True)[:k]).values


def target_widths(widths: Widths, keep: float) -> Widths:
    """Every channel count times ``keep``, rounded, at least one."""
    if not 0 < keep <= 1:
        raise ModelError(f"keep fraction must lie in (0, 1], got {keep}")
    return tuple((max(1, round(u * keep)), max(1, round(a * keep)), max(1, round(b * keep))) for u, a, b in widths)


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
def prune_decoder(decoder: Decoder, encoder_features: Sequence[int], keep: float | Widths,
                  calibration: Sequence[torch.Tensor] | None = None) -> Decoder:
    """A smaller decoder keeping ``keep`` (0-1] of every level's channels, or exactly the widths
    ``keep`` gives (none above the current ones), the most important channels' weights copied over.

    ``calibration`` (encoder features of a few training patches): the channels the classifier reads
    are then chosen, and the classifier refitted, by least squares against the unpruned decoder's
    logits (see :func:`_refit_classifier`).
    """
    goal = target_widths(decoder.widths, keep) if isinstance(keep, (int, float)) else tuple(keep)
    if len(goal) != len(decoder.widths) or any(not 1 <= g <= w for gs, ws in zip(goal, decoder.widths, strict=True)
                                               for g, w in zip(gs, ws, strict=True)):
        raise ModelError(f"target widths {goal} must be positive and at most the head's {decoder.widths}")
    if calibration is None:
        return _prune(decoder, encoder_features, goal)
    last = decoder.widths[-1]
    mid = _prune(decoder, encoder_features, (*goal[:-1], (goal[-1][0], goal[-1][1], last[2])))
    chosen, weight, bias = _refit_classifier(mid.features(calibration), decoder(calibration), goal[-1][2])
    new = _prune(mid, encoder_features, goal, last_channels=chosen)
    new.seg.weight.copy_(weight.reshape(new.seg.weight.shape))
    _bias(new.seg).copy_(bias)
    return new


def _prune(decoder: Decoder, encoder_features: Sequence[int], goal: Widths,
           last_channels: torch.Tensor | None = None) -> Decoder:
    plan = []
    below_idx = torch.arange(encoder_features[-1])
    levels = decoder.blocks()
    for level_i, level in enumerate(levels):
        c_skip = encoder_features[-2 - level_i]
        n_up = level.up.out_channels
        up_out = level.up.weight.detach().abs().transpose(0, 1).flatten(1).sum(1)
        up_idx = _keep(up_out * _in_norm(level.conv1.conv.weight)[:n_up], goal[level_i][0])
        a_idx = _keep(_out_norm_scale(level.conv1) * _in_norm(level.conv2.conv.weight), goal[level_i][1])
        consumer = levels[level_i + 1].up.weight if level_i + 1 < len(levels) else decoder.seg.weight
        consumer_norm = (consumer.detach().abs().flatten(1).sum(1) if level_i + 1 < len(levels)
                         else _in_norm(consumer))
        b_idx = _keep(_out_norm_scale(level.conv2) * consumer_norm, goal[level_i][2])
        if last_channels is not None and level_i == len(levels) - 1:
            b_idx = last_channels
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
    # The 1x1 classifier is the one consumer not followed by an InstanceNorm, so a removed
    # channel's mean output would shift the class logits: fold it into the classifier's bias.
    last = levels[-1].conv2
    removed = torch.ones(last.norm.weight.shape[0], dtype=torch.bool)
    removed[below_idx] = False
    mean = _mean_activation(last.norm.weight.detach()[removed], last.norm.bias.detach()[removed])
    _bias(new.seg).copy_(_bias(decoder.seg) + decoder.seg.weight.detach()[:, removed].flatten(1) @ mean)
    return new


def _refit_classifier(features: torch.Tensor, logits: torch.Tensor, k: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep ``k`` of the classifier's input channels and refit it to reproduce ``logits``.

    The 1x1x1 classifier is linear in its inputs, so which channels it can do without is a
    least-squares question: greedy backward elimination drops, one at a time, the channel whose loss
    raises the residual of the refitted classifier least (a redundant copy of another channel costs
    nothing, however large its weights). The weight-magnitude criterion cannot see redundancy: on a
    small trained head it dropped the one channel separating two organs and the organ vanished.
    The refit also absorbs the earlier levels' cuts (the target is the unpruned head's output).
    Returns (kept channel indices ascending, weight (classes, k), bias (classes,)).
    """
    c = features.shape[1]
    x = features.movedim(1, -1).reshape(-1, c).double()
    y = logits.movedim(1, -1).reshape(-1, logits.shape[1]).double()
    if len(x) > MAX_CALIBRATION_VOXELS:  # a fixed random subset keeps the normal equations small
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:MAX_CALIBRATION_VOXELS]
        x, y = x[pick.to(x.device)], y[pick.to(y.device)]
    a = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # last column: the bias
    gram = a.T @ a + 1e-6 * torch.eye(c + 1, dtype=a.dtype)
    cross = a.T @ y

    def explained(cols: list[int]) -> float:
        idx = [*cols, c]
        sol = torch.linalg.solve(gram[idx][:, idx], cross[idx])
        return float((cross[idx] * sol).sum())

    kept = list(range(c))
    while len(kept) > k:
        scores = [explained([j for j in kept if j != drop]) for drop in kept]
        kept.pop(int(np.argmax(scores)))
    idx = [*kept, c]
    sol = torch.linalg.solve(gram[idx][:, idx], cross[idx])  # (k + 1, classes)
    dtype = features.dtype
    return torch.tensor(kept, dtype=torch.long), sol[:-1].T.to(dtype), sol[-1].to(dtype)


def _mean_activation(gamma: torch.Tensor, beta: torch.Tensor, slope: float = 0.01) -> torch.Tensor:
    """E[LeakyReLU(gamma * z + beta)] for z ~ N(0, 1): an instance-normalised channel's mean output
    (its normalised values have mean 0 and variance 1; the Gaussian shape is the approximation)."""
    sd = gamma.abs().double().clamp(min=1e-12)
    b = beta.double()
    t = b / sd
    # the standard normal's CDF and log density, written out as torch.distributions.Normal(0, 1) computes them
    cdf = 0.5 * (1 + torch.erf(t / math.sqrt(2)))
    log_pdf = -(t ** 2) / 2 - math.log(math.sqrt(2 * math.pi))
    positive = b * cdf + sd * torch.exp(log_pdf)  # E[max(v, 0)], v ~ N(b, sd^2)
    return (positive + slope * (b - positive)).to(gamma.dtype)


def head_cost(net: MultiHeadNet, name: str, patch: Sequence[int]) -> tuple[int, int]:
    """(parameters, FLOPs for one patch) of one head."""
    head = net.head(name)
    with torch.no_grad():
        skips = net.encoder(torch.zeros((1, net.in_channels, *patch)))
    flops = count_flops(head, call=lambda: head(net.head_inputs(name, skips)))
    return count_parameters(head), flops


def relative_drop(before: dict[str, float], after: dict[str, float]) -> float:
    """The largest drop of a structure's Dice as a fraction of its Dice before (0.02: it lost 2 % of
    it). A structure at Dice 0 before has nothing to lose: its drop is minus its Dice after."""
    return max((b - after[k]) / b if b > 0 else -after[k] for k, b in before.items())


class PruneOutcome:
    """What both pruning reports derive from their counts and Dice (mixed into their dataclasses)."""

    params_before: int
    params_after: int
    dice_before: dict[str, float]
    dice_after: dict[str, float]

    @property
    def param_reduction(self) -> float:
        return 1 - self.params_after / self.params_before

    @property
    def max_drop(self) -> float:
        """The largest absolute Dice drop of a structure."""
        return max(self.dice_before[k] - self.dice_after[k] for k in self.dice_before)

    @property
    def max_relative_drop(self) -> float:
        """What ``max_dice_drop`` limits: the largest drop relative to the unpruned Dice."""
        return relative_drop(self.dice_before, self.dice_after)


@dataclass(frozen=True)
class PruneReport(PruneOutcome):
    head: str
    keep: float
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    dice_before: dict[str, float]
    dice_pruned: dict[str, float]  # right after the first cut, before fine-tuning
    dice_after: dict[str, float]  # after fine-tuning
    widths_after: list[list[int]]
    accepted: bool

    def table(self) -> str:
        verdict = "accepted" if self.accepted else "REJECTED"
        rows = [f"head {self.head}: keep {self.keep:.2f} of decoder channels -> {verdict}",
                f"{'':14}{'before':>14}{'after':>14}",
                f"{'parameters':14}{self.params_before:>14,}{self.params_after:>14,}  (-{self.param_reduction:.1%})",
                f"{'GFLOPs/patch':14}{self.flops_before / 1e9:>14.3f}{self.flops_after / 1e9:>14.3f}"]
        for k in self.dice_before:
            rows.append(f"{'Dice ' + k:14}{self.dice_before[k]:>14.4f}{self.dice_after[k]:>14.4f}"
                        f"  (first cut, not fine-tuned: {self.dice_pruned[k]:.4f})")
        rows.append(f"largest Dice drop: {max(self.max_relative_drop, 0.0):.1%} of the unpruned Dice "
                    f"({max(self.max_drop, 0.0):.4f})")
        return "\n".join(rows)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(param_reduction=self.param_reduction, max_drop=self.max_drop,
                   max_relative_drop=self.max_relative_drop)
        return out


def prune_head_with_report(model: MultiHeadModel, name: str, keep: float, train: Sequence[RawDataset],
                           validation: RawDataset, cfg: TrainConfig, work_dir: Path,
                           max_dice_drop: float = 0.02, steps: int = 1) -> tuple[MultiHeadModel, PruneReport]:
    """Prune one head in ``steps`` steps, fine-tuning it alone on ``train`` after each
    (``cfg.iterations`` in all), and measure on ``validation``.

    Progressive, as clNet prunes (one step per epoch): the widths shrink geometrically towards
    ``keep`` so that each cut is small and the distillation targets still come from the unpruned
    head; cutting half of every layer at once leaves a head that must be retrained almost from
    scratch (Dice near 0 right after the cut). Returns the pruned model (weights of the encoder and
    other heads untouched) and its report; when the report is not accepted the caller should keep
    the original.
    """
    if steps < 1:
        raise ModelError(f"pruning needs at least one step, got {steps}")
    if cfg.iterations < steps:
        raise ModelError(f"{cfg.iterations} fine-tuning iterations cannot be shared by {steps} pruning steps")
    head_spec = model.spec.head(name)
    structures = [s for s in head_spec.structures if s in validation.labels]
    if not structures:
        raise ModelError(f"validation set {validation.name} labels none of head {name!r}'s structures")
    params0, flops0 = head_cost(model.net, name, model.spec.patch)
    before = evaluate(model, validation, heads=[name], structures=structures)
    # the teacher is the unpruned net as a whole, so a supported head is distilled from its fused output
    teacher = copy.deepcopy(model.net).eval()
    device = next(model.net.parameters()).device
    with torch.no_grad():
        # the features as the decoder reads them: through its adapter when it has one
        calibration = model.net.head_inputs(name, model.net.encoder(
            calibration_patches(model, head_spec, train, CALIBRATION_PATCHES, cfg.seed).to(device)))
    original = model.net.head(name).widths
    pruned: dict[str, float] = {}
    for step in range(1, steps + 1):
        goal = target_widths(original, keep ** (step / steps))
        model.net.heads[name] = prune_decoder(model.net.head(name), model.net.encoder.features, goal, calibration)
        if step == 1:
            pruned = evaluate(model, validation, heads=[name], structures=structures)
        its = cfg.iterations // steps + (1 if step <= cfg.iterations % steps else 0)
        log.info("pruning head %s step %d/%d: widths %s, %d fine-tuning iterations", name, step, steps,
                 [list(w) for w in goal], its)
        fit(model, [head_spec], train, replace(cfg, iterations=its, seed=cfg.seed + step), work_dir / f"step-{step}",
            train_encoder=False, teachers={name: lambda skips: teacher.head_logits(name, skips)})
    after = evaluate(model, validation, heads=[name], structures=structures)
    params1, flops1 = head_cost(model.net, name, model.spec.patch)
    drop = relative_drop(before, after)
    report = PruneReport(name, keep, params0, params1, flops0, flops1, before, pruned, after,
                         [list(w) for w in model.net.head(name).widths], bool(drop <= max_dice_drop))
    log.info("pruned head %s: params %d -> %d, largest Dice drop %.1f %% of the unpruned Dice (limit %.1f %%: %s)",
             name, params0, params1, 100 * drop, 100 * max_dice_drop, "accepted" if report.accepted else "rejected")
    return model, report
