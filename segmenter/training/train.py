"""Training multi-head models (``segmenter train``) and adding heads without forgetting (``add-head``).

Recipe (clNet's, scaled down; see ../shared/docs/engines.md): every head trains on the datasets that
label at least one of its structures; loss per head = cross-entropy + soft Dice (foreground classes
the dataset annotates), summed over heads; AdamW (amsgrad, weight decay 3e-5) with nnU-Net's poly
learning-rate decay; foreground-biased patches and light augmentation (:mod:`segmenter.training.data`).

Partial labels: where a dataset does not label some of a head's structures, its "background"
means "background or one of those structures": the cross-entropy of a background voxel is taken on
p(background) + sum of p(unannotated) (the marginal loss), and the Dice covers annotated classes only,
so an unlabelled organ is never taught as background. SALT heads use the label-tree loss
(:meth:`segmenter.multihead.salt.LabelTree.loss`).

Continual learning (:func:`add_head`): the encoder and every existing head are frozen (eval mode,
``requires_grad`` off, not given to the optimiser, the encoder run under ``no_grad``); only the new
head learns, with its fusion when old heads support it (CL-Net's feature-level supporting) and its
adapter when it has one (``HeadSpec.adapter``: a residual bottleneck over the frozen features that
only this head reads, :class:`segmenter.multihead.net.Adapter`). Old heads' weights are copied byte
for byte, so their predictions are bit-identical.
The new model is saved as a new version with the step recorded in its history.

Deep supervision (``TrainConfig.deep_supervision``, off by default): auxiliary losses on the lower
decoder scales, weights halving per scale (:mod:`segmenter.training.dataset`).

Checkpoints (``checkpoint.pt`` in the work folder ``work_dir``, by default the output folder; the CLI gives
each command its own, outside the model folder: weights, optimiser, iteration, random states; tensors,
numbers and strings only, read with ``weights_only=True``, :mod:`segmenter.training.checkpoint`) are written
every ``checkpoint_every`` iterations; ``resume=True`` continues from one. Progress
(iteration, loss, iterations per second) is logged every ``log_every`` iterations.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from segmenter.multihead.model import MultiHeadModel, save_model
from segmenter.multihead.salt import LabelTree
from segmenter.multihead.spec import HeadSpec, ModelSpec
from segmenter.training.checkpoint import (
    TrainingState,
    check_resumable,
    load_checkpoint,
    save_checkpoint,
    save_snapshot,
)
from segmenter.training.data import (
    IGNORE,
    PatchSampler,
    RawDataset,
    TrainingError,
    augment,
    intensity_from,
    prepare,
)
from segmenter.training.dataset import AuxClassifiers, deep_supervision_loss

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"

Teacher = Callable[[Sequence[torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 250
    batch_size: int = 2
    lr: float = 1e-2
    weight_decay: float = 3e-5
    fg_fraction: float = 0.5
    flip_axes: tuple[int, ...] = ()
    checkpoint_every: int = 50
    log_every: int = 25
    seed: int = 0
    device: str = "cpu"
    stop_after: int | None = None  # stop (after checkpointing) at this iteration, as if interrupted
    partial_labels: bool = True  # False: unlabelled structures count as background (naive training)
    snapshot_at: tuple[int, ...] = ()  # also keep checkpoint-<iteration>.pt (a rewind point for pruning)
    deep_supervision: int = 0  # lower decoder scales with an auxiliary loss (segmenter.training.dataset); 0 = off


@dataclass
class HeadJob:
    head: HeadSpec
    samplers: list[PatchSampler]
    annotated: list[list[str]]  # per sampler: the head structures its dataset labels
    tree: LabelTree | None = None
    losses: list[float] = field(default_factory=list)


def softmax_partial_loss(logits: torch.Tensor, target: torch.Tensor, head: HeadSpec,
                         annotated: Sequence[str]) -> torch.Tensor:
    """Marginal CE + soft Dice over annotated classes; target 0 = background-or-unannotated, -1 ignored."""
    logp = torch.log_softmax(logits, dim=1)
    unannotated = [i + 1 for i, s in enumerate(head.structures) if s not in annotated]
    if unannotated:
        merged_bg = torch.logsumexp(logp[:, [0, *unannotated]], dim=1)
        logp = torch.cat([merged_bg.unsqueeze(1), logp[:, 1:]], dim=1)
    valid = target != IGNORE
    if not bool(valid.any()):
        return logits.sum() * 0.0
    t = target.clamp(min=0)
    ce = -(torch.gather(logp, 1, t.unsqueeze(1))[:, 0] * valid).sum() / valid.sum()
    classes = [i + 1 for i, s in enumerate(head.structures) if s in annotated]
    if not classes:
        return ce
    p = torch.softmax(logits, dim=1)[:, classes] * valid.unsqueeze(1)
    onehot = torch.stack([(t == c) & valid for c in classes], dim=1).to(p.dtype)
    dims = [0, *range(2, p.ndim)]
    inter = (p * onehot).sum(dims)
    dice = (2 * inter + 1e-5) / (p.sum(dims) + onehot.sum(dims) + 1e-5)
    return ce + (1 - dice.mean())


def _jobs(model: MultiHeadModel, heads: Sequence[HeadSpec], datasets: Sequence[RawDataset],
          cfg: TrainConfig, rng: np.random.Generator) -> list[HeadJob]:
    jobs = []
    for head in heads:
        samplers, annotated = [], []
        for ds in datasets:
            ann = ds.annotated(head)
            if not ann:
                continue
            cases = prepare(head, model.spec, ds, seed=cfg.seed)
            samplers.append(PatchSampler(cases, model.spec.patch, cfg.fg_fraction, rng, head, model.net.divisor))
            annotated.append(ann)
        if not samplers:
            raise TrainingError(f"head {head.name!r}: no dataset labels any of {list(head.structures)}")
        tree = LabelTree(head.tree or ()) if head.kind == "salt" else None
        jobs.append(HeadJob(head, samplers, annotated, tree))
    return jobs


def calibration_patches(model: MultiHeadModel, head: HeadSpec, datasets: Sequence[RawDataset], n: int,
                        seed: int = 0) -> torch.Tensor:
    """``n`` training patches (n, channels, *patch) for ``head``, sampled as in training (no augmentation)."""
    rng = np.random.default_rng(seed)
    job = _jobs(model, [head], datasets, TrainConfig(seed=seed), rng)[0]
    return torch.cat([job.samplers[i % len(job.samplers)].sample(1)[0] for i in range(n)])


@torch.no_grad()
def _apply_masks(masks: Sequence[tuple[torch.nn.Parameter, torch.Tensor]]) -> None:
    for param, mask in masks:
        param.mul_(mask)


def _loss_fn(job: HeadJob, k: int, cfg: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The head's loss on (logits, labels) for the dataset of sampler ``k`` (any scale)."""
    if job.tree is not None:
        tree, ann = job.tree, job.tree.annotated_nodes(job.annotated[k])
        return lambda logits, y: tree.loss(logits, y, ann)
    known = job.annotated[k] if cfg.partial_labels else job.head.structures
    return lambda logits, y: softmax_partial_loss(logits, y, job.head, known)


def fit(model: MultiHeadModel, heads: Sequence[HeadSpec], datasets: Sequence[RawDataset], cfg: TrainConfig,
        work_dir: Path, train_encoder: bool, resume: bool = False,
        teachers: dict[str, Teacher] | None = None,
        masks: Sequence[tuple[torch.nn.Parameter, torch.Tensor]] | None = None) -> MultiHeadModel:
    """Train ``heads`` (and the encoder when ``train_encoder``) of ``model`` in place.

    A head trains together with its fusion (``supports.<head>``) and adapter (``adapters.<head>``);
    its supporters stay as they are. ``teachers`` (head name -> function of the encoder features giving the frozen
    teacher's logits): add KL(teacher || head) of the class distributions per voxel (distillation,
    used to recover pruned heads). ``masks`` (parameter, 0/1 mask of its shape): the parameter is
    multiplied by its mask before training and after every step, so pruned weights stay exactly 0.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(cfg.device)
    net = model.net.to(device)
    names = {h.name for h in heads}
    for p in net.parameters():
        p.requires_grad_(False)
    # a head trains with everything that belongs to it: its fusion and its adapter
    params = [p for n in names for m in net.head_modules(n).values() for p in m.parameters()]
    if train_encoder:
        params += list(net.encoder.parameters())
    for p in params:
        p.requires_grad_(True)
    aux = AuxClassifiers(net, [h.name for h in heads], cfg.deep_supervision).to(device) \
        if cfg.deep_supervision else None
    if aux is not None:
        params += list(aux.parameters())  # training-only: in the checkpoint, never in the saved model
        aux.train()
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, amsgrad=True)
    jobs = _jobs(model, heads, datasets, cfg, rng)
    start = 0
    ckpt = work_dir / CHECKPOINT
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt, device)
        check_resumable(state, ckpt, [h.name for h in heads], aux is not None)
        try:
            net.load_state_dict(state.net)
            if aux is not None and state.aux is not None:
                aux.load_state_dict(state.aux)
            optimiser.load_state_dict(state.optimiser)
        except (RuntimeError, ValueError, KeyError) as exc:  # torch's messages list every key, over many lines
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrainingError(f"{ckpt} does not fit this model (another training job's checkpoint?): {first}; "
                                "start afresh without resuming") from exc
        rng.bit_generator.state = state.numpy_rng
        torch.set_rng_state(state.torch_rng)
        start = state.iteration
        log.info("resumed from %s at iteration %d", ckpt, start)
    masks = list(masks or ())
    _apply_masks(masks)
    net.eval()  # frozen parts stay in eval mode
    for n in names:
        for m in net.head_modules(n).values():
            m.train()
    if train_encoder:
        net.encoder.train()
    started = time.perf_counter()
    for it in range(start, cfg.iterations):
        for group in optimiser.param_groups:
            group["lr"] = cfg.lr * (1 - it / cfg.iterations) ** 0.9
        optimiser.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for job in jobs:
            k = it % len(job.samplers)
            x, y = job.samplers[k].sample(cfg.batch_size)
            x, y = augment(x, y, rng, cfg.flip_axes)
            x, y = x.to(device), y.to(device)
            with torch.set_grad_enabled(train_encoder):
                skips = net.encoder(x)
            levels: list[torch.Tensor] | None = [] if aux is not None else None
            logits = net.head_logits(job.head.name, skips, collect=levels)
            loss_fn = _loss_fn(job, k, cfg)
            if aux is not None and levels is not None:
                loss = deep_supervision_loss(loss_fn, logits, aux(job.head.name, levels), y)
            else:
                loss = loss_fn(logits, y)
            if teachers and job.head.name in teachers:
                with torch.no_grad():
                    target_logits = teachers[job.head.name](skips)
                soft = torch.softmax(target_logits, dim=1)
                loss = loss + torch.sum(soft * (torch.log_softmax(target_logits, 1) - torch.log_softmax(logits, 1)),
                                        dim=1).mean()
            job.losses.append(float(loss.detach()))
            total = total + loss
        total.backward()  # type: ignore[no-untyped-call]  # unannotated in torch's stubs
        optimiser.step()
        _apply_masks(masks)
        done = it + 1
        if done % cfg.log_every == 0 or done == cfg.iterations:
            rate = (done - start) / max(time.perf_counter() - started, 1e-9)
            log.info("iteration %d/%d  loss %s  %.1f it/s", done, cfg.iterations,
                     "  ".join(f"{j.head.name}={np.mean(j.losses[-cfg.log_every:]):.4f}" for j in jobs), rate)
        if done % cfg.checkpoint_every == 0 or done in (cfg.iterations, cfg.stop_after):
            save_checkpoint(ckpt, TrainingState(
                net=net.state_dict(), optimiser=optimiser.state_dict(), iteration=done,
                numpy_rng=dict(rng.bit_generator.state), torch_rng=torch.get_rng_state(),
                aux=aux.state_dict() if aux is not None else None, heads=tuple(h.name for h in heads)), model.spec)
        if done in cfg.snapshot_at:
            save_snapshot(work_dir / f"checkpoint-{done}.pt", net.state_dict(), done)
        if cfg.stop_after is not None and done >= cfg.stop_after:
            log.info("stopping at iteration %d as asked; resume from %s", done, ckpt)
            break
    for p in net.parameters():
        p.requires_grad_(False)
    net.eval()
    return model


def train_model(spec: ModelSpec, datasets: Sequence[RawDataset], out_dir: Path, cfg: TrainConfig,
                resume: bool = False, work_dir: Path | None = None) -> MultiHeadModel:
    """A new model: encoder + all of ``spec``'s heads trained jointly; saved into ``out_dir``, its
    checkpoints in ``work_dir`` (default ``out_dir``)."""
    if spec.intensity.std == 1.0 and spec.intensity.mean == 0.0:
        spec = replace(spec, intensity=intensity_from(datasets))
    step = {"version": spec.version, "action": "train", "heads": [h.name for h in spec.heads],
            "datasets": [d.name for d in datasets], "iterations": cfg.iterations}
    spec = replace(spec, history=(*spec.history, step))
    model = MultiHeadModel.build(spec, seed=cfg.seed)
    fit(model, spec.heads, datasets, cfg, work_dir or out_dir, train_encoder=True, resume=resume)
    save_model(model, out_dir)
    return model


def next_version(version: str) -> str:
    head, _, last = version.rpartition(".")
    return f"{head}.{int(last) + 1}" if last.isdigit() and head else (str(int(version) + 1) if version.isdigit()
                                                                      else version + ".1")


def add_head(model: MultiHeadModel, head: HeadSpec, datasets: Sequence[RawDataset], out_dir: Path,
             cfg: TrainConfig, version: str | None = None, resume: bool = False,
             work_dir: Path | None = None) -> MultiHeadModel:
    """Continual learning: a new head on ``datasets`` with encoder and old heads frozen; new version
    saved into ``out_dir``, checkpoints in ``work_dir`` (default ``out_dir``).

    Unless ``head.priority`` is set below every old head's already, the new head gets a priority
    one below the lowest, so under the ``priority`` merge rule it never overrides an old head's
    foreground: the old structures' masks in the merged label map stay exactly as they were.
    """
    spec = model.spec
    lowest = min(h.priority for h in spec.heads)
    if head.priority >= lowest:
        head = replace(head, priority=lowest - 1)
    if any(h.name == head.name for h in spec.heads):
        raise TrainingError(f"model {spec.id!r} already has a head {head.name!r}")
    new_version = version or next_version(spec.version)
    step = {"version": new_version, "action": "add-head", "heads": [head.name], "datasets": [d.name for d in datasets],
            "iterations": cfg.iterations, "from": spec.version}
    new_spec = replace(spec, version=new_version, heads=(*spec.heads, head), history=(*spec.history, step))
    new = MultiHeadModel.build(new_spec, seed=cfg.seed)
    state = {k: v.clone() for k, v in model.net.state_dict().items()}
    missing, unexpected = new.net.load_state_dict(state, strict=False)
    fresh = tuple(f"{kind}.{head.name}." for kind in ("heads", "supports", "adapters"))
    if unexpected or any(not k.startswith(fresh) for k in missing):
        raise TrainingError(f"cannot carry the old weights over: missing {missing}, unexpected {unexpected}")
    fit(new, [head], datasets, cfg, work_dir or out_dir, train_encoder=False, resume=resume)
    save_model(new, out_dir)
    return new

