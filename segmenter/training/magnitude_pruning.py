"""Magnitude pruning with rewinding of decoder heads (CL-Net's recipe), with a report.

clNet prunes a trained head progressively: at every step the convolution and transposed-convolution
weights of the whole head are ranked together by magnitude (global unstructured L1) and the smallest
are masked to reach the step's sparsity; the surviving weights are then *rewound* to stored earlier
values (the lottery-ticket idea: a sparse sub-network trains well from the values it had before, not
from the values that the dense network's training gave it), and the head is retrained with the
mask held. A step is accepted while every structure's validation Dice stays within ``max_dice_drop``
(0.02: 2 % of its value, :func:`segmenter.training.pruning.relative_drop`) of the unpruned head's;
the first step that fails ends the schedule and the last accepted weights stay.

What we keep of it, scaled down for small heads: the schedule is a list of sparsities (default
50, 70, 80, 90 %; clNet runs 80 ... 99.8 % on 32-channel heads and milder targets on narrower ones);
the rewind point is by default the head's weights when pruning starts (clNet's stored pre-prune
values), or an earlier training checkpoint (``rewind``: :func:`rewind_state` reads our
``checkpoint.pt`` / ``checkpoint-<it>.pt`` files, which ``TrainConfig.snapshot_at`` keeps, or a model
folder); no retries of a failed step. Biases and InstanceNorm parameters are not pruned (clNet: conv
weights only); neither is anything outside the head.

Masks are exact zeros in the stored weights (safetensors, dense), so a pruned model loads like any
other and can be pruned further. Dense kernels do not run faster on zeros: the report's "effective"
FLOPs count only the multiplications by non-zero weights (what a sparse kernel would do; clNet's
``spconv`` dependency hints at that), next to the dense FLOPs, which stay as they were.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file
from torch import nn

from segmenter.core.errors import ModelError
from segmenter.multihead.model import MultiHeadModel
from segmenter.multihead.net import MultiHeadNet
from segmenter.training.data import RawDataset
from segmenter.training.evaluate import evaluate
from segmenter.training.pruning import PruneOutcome, relative_drop
from segmenter.training.train import TrainConfig, fit

log = logging.getLogger(__name__)

DEFAULT_SCHEDULE = (0.5, 0.7, 0.8, 0.9)


def prunable_weights(head: nn.Module) -> dict[str, nn.Parameter]:
    """The weights clNet prunes: every Conv3d / ConvTranspose3d weight of the head, by state-dict name."""
    out: dict[str, nn.Parameter] = {}
    for name, module in head.named_modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            # registered as a Parameter by the layer itself; torch's stubs declare it a Tensor
            out[f"{name}.weight"] = cast(nn.Parameter, module.weight)
    return out


@torch.no_grad()
def global_magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """0/1 masks (same dtype as the weights) keeping the largest ``1 - sparsity`` of all weights
    together by |w|; ties at the threshold are broken by position (exactly the asked count is kept)."""
    if not 0 <= sparsity < 1:
        raise ModelError(f"sparsity must lie in [0, 1), got {sparsity}")
    flat = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights.values()])
    keep = round(flat.numel() * (1 - sparsity))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.argsort(flat, descending=True, stable=True)[:keep]] = True
    masks: dict[str, torch.Tensor] = {}
    start = 0
    for name, w in weights.items():
        n = w.numel()
        masks[name] = chosen[start:start + n].view(w.shape).to(device=w.device, dtype=w.dtype)
        start += n
    return masks


def sparsity_of(head: nn.Module) -> float:
    """Share of exactly-zero weights among the head's prunable weights."""
    weights = list(prunable_weights(head).values())
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


def nonzero_parameters(module: nn.Module) -> int:
    return int(sum(int((p != 0).sum()) for p in module.parameters()))


def flops(net: MultiHeadNet, name: str, patch: Sequence[int]) -> tuple[int, int]:
    """(dense, effective) FLOPs of one head for one patch; effective = each convolution's dense FLOPs
    times the share of its weights that are not zero."""
    head = net.head(name)
    per_module: dict[nn.Conv3d | nn.ConvTranspose3d, int] = {}

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not isinstance(mod, nn.Conv3d | nn.ConvTranspose3d):  # registered on those only (below)
            return
        k = math.prod(mod.kernel_size)
        if isinstance(mod, nn.ConvTranspose3d):
            per_module[mod] = 2 * inputs[0][0].numel() * mod.out_channels * k
        else:
            per_module[mod] = 2 * output[0].numel() * mod.in_channels * k

    convs = [m for m in head.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    handles = [m.register_forward_hook(hook) for m in convs]
    try:
        with torch.no_grad():
            device = next(net.parameters()).device
            head(net.head_inputs(name, net.encoder(torch.zeros((1, net.in_channels, *patch), device=device))))
    finally:
        for h in handles:
            h.remove()
    dense = sum(per_module.values())
    effective = sum(round(f * float((m.weight != 0).float().mean())) for m, f in per_module.items())
    return dense, effective


def rewind_state(path: Path, head: str) -> dict[str, torch.Tensor]:
    """A head's weights from a training checkpoint (``checkpoint*.pt``) or a model folder."""
    prefix = f"heads.{head}."
    try:
        if path.is_dir():
            state = load_file(str(path / "weights.safetensors"))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)["net"]
    except (OSError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot read a rewind point from {path}: {exc}") from exc
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        raise ModelError(f"{path} holds no weights of head {head!r}")
    return out


@torch.no_grad()
def rewind_and_mask(head: nn.Module, rewind: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Load ``rewind`` into ``head`` (every parameter, as the lottery ticket resets the sub-network),
    then zero the masked weights."""
    try:
        head.load_state_dict(dict(rewind), strict=True)
    except RuntimeError as exc:
        raise ModelError(f"the rewind point does not fit the head (was it channel-pruned since?): {exc}") from exc
    weights = prunable_weights(head)
    for name, mask in masks.items():
        weights[name].mul_(mask)


@dataclass(frozen=True)
class MagnitudeStep:
    sparsity: float
    dice: dict[str, float]
    accepted: bool


@dataclass(frozen=True)
class MagnitudeReport(PruneOutcome):
    head: str
    rewound_to: str
    params_before: int  # non-zero parameters of the head
    params_after: int
    flops_before: int  # dense FLOPs per patch (unchanged by masks)
    flops_effective_before: int
    flops_effective_after: int  # multiplications by non-zero weights only
    dice_before: dict[str, float]
    dice_after: dict[str, float]
    sparsity: float  # of the prunable weights, as accepted
    steps: list[MagnitudeStep]
    accepted: bool  # at least one step was accepted

    def table(self) -> str:
        rows = [f"head {self.head}: magnitude pruning, rewound to {self.rewound_to} -> "
                f"{'sparsity ' + format(self.sparsity, '.1%') if self.accepted else 'REJECTED (unchanged)'}",
                f"{'':22}{'before':>14}{'after':>14}",
                f"{'non-zero parameters':22}{self.params_before:>14,}{self.params_after:>14,}"
                f"  (-{self.param_reduction:.1%})",
                f"{'GFLOPs/patch dense':22}{self.flops_before / 1e9:>14.3f}{self.flops_before / 1e9:>14.3f}",
                f"{'GFLOPs/patch nonzero':22}{self.flops_effective_before / 1e9:>14.3f}"
                f"{self.flops_effective_after / 1e9:>14.3f}"]
        for k in self.dice_before:
            rows.append(f"{'Dice ' + k:22}{self.dice_before[k]:>14.4f}{self.dice_after[k]:>14.4f}")
        for st in self.steps:
            rows.append(f"  step {st.sparsity:.1%}: " + ", ".join(f"{k} {v:.4f}" for k, v in st.dice.items())
                        + f"  (-{relative_drop(self.dice_before, st.dice):.1%})"
                        + ("  accepted" if st.accepted else "  rejected"))
        return "\n".join(rows)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(param_reduction=self.param_reduction, max_drop=self.max_drop,
                   max_relative_drop=self.max_relative_drop,
                   mode="magnitude")
        return out


def magnitude_prune_head(model: MultiHeadModel, name: str, train: Sequence[RawDataset], validation: RawDataset,
                         cfg: TrainConfig, work_dir: Path, schedule: Sequence[float] = DEFAULT_SCHEDULE,
                         rewind: Mapping[str, torch.Tensor] | None = None, rewound_to: str = "pre-prune weights",
                         max_dice_drop: float = 0.02) -> tuple[MultiHeadModel, MagnitudeReport]:
    """Prune ``name`` through ``schedule`` (rising sparsities), rewinding and retraining
    ``cfg.iterations`` per step; returns the model (head at the last accepted step, everything else
    untouched) and the report."""
    if not schedule or any(b <= a for a, b in itertools.pairwise(schedule)):
        raise ModelError(f"the sparsity schedule must rise step by step, got {list(schedule)}")
    head_spec = model.spec.head(name)
    structures = [s for s in head_spec.structures if s in validation.labels]
    if not structures:
        raise ModelError(f"validation set {validation.name} labels none of head {name!r}'s structures")
    head = model.net.head(name)
    start = copy.deepcopy(head.state_dict())
    rewind = start if rewind is None else dict(rewind)
    # the head's fusion and adapter retrain with it at every step: a rejected step must not leave
    # theirs behind, so they are restored with the decoder's accepted weights
    companions = {k: m for k, m in model.net.head_modules(name).items() if k != "heads"}
    accepted_companions = {k: copy.deepcopy(m.state_dict()) for k, m in companions.items()}
    params0 = nonzero_parameters(head)
    dense0, effective0 = flops(model.net, name, model.spec.patch)
    before = evaluate(model, validation, heads=[name], structures=structures)
    accepted_state = start
    accepted_sparsity = sparsity_of(head)
    steps: list[MagnitudeStep] = []
    for i, sparsity in enumerate(schedule, start=1):
        # rank the weights as trained so far (the accepted step's), then reset the survivors
        head.load_state_dict(accepted_state)
        for k, m in companions.items():
            m.load_state_dict(accepted_companions[k])
        masks = global_magnitude_masks(prunable_weights(head), sparsity)
        rewind_and_mask(head, rewind, masks)
        weights = prunable_weights(head)
        fit(model, [head_spec], train, replace(cfg, seed=cfg.seed + i), work_dir / f"step-{i}", train_encoder=False,
            masks=[(weights[k], m) for k, m in masks.items()])
        dice = evaluate(model, validation, heads=[name], structures=structures)
        ok = relative_drop(before, dice) <= max_dice_drop
        steps.append(MagnitudeStep(sparsity, dice, ok))
        log.info("head %s: sparsity %.1f%% -> Dice %s (%s)", name, 100 * sparsity,
                 ", ".join(f"{k} {v:.4f}" for k, v in dice.items()), "accepted" if ok else "rejected")
        if not ok:
            break
        accepted_state = copy.deepcopy(head.state_dict())
        accepted_companions = {k: copy.deepcopy(m.state_dict()) for k, m in companions.items()}
        accepted_sparsity = sparsity_of(head)
    head.load_state_dict(accepted_state)
    for k, m in companions.items():
        m.load_state_dict(accepted_companions[k])
    after = evaluate(model, validation, heads=[name], structures=structures) if steps[-1].accepted is False \
        else steps[-1].dice
    _, effective1 = flops(model.net, name, model.spec.patch)
    report = MagnitudeReport(name, rewound_to, params0, nonzero_parameters(head), dense0, effective0, effective1,
                             before, after, accepted_sparsity, steps, any(s.accepted for s in steps))
    log.info("magnitude-pruned head %s: non-zero params %d -> %d, sparsity %.1f%%", name, params0,
             report.params_after, 100 * accepted_sparsity)
    return model, report
