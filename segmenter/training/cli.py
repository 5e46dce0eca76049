"""``segmenter train``, ``segmenter add-head`` and ``segmenter prune`` (multi-head models).

Heads are given as ``--head NAME=Struct1,Struct2`` (catalogue names, softmax over them +
background) or ``--salt-head NAME=tree.txt`` (a SALT label tree, one comma path per line; the tree's
nodes that are catalogue names are exported). A model lives in ``<models-dir>/<id>/`` (the registry's
layout); ``add-head`` and ``prune`` write the new version there and keep the previous one under
``<models-dir>/<id>/versions/<version>/``, unless ``--out`` names another folder.
``segmenter heads MODEL`` lists a model's heads with their declarations and parameter counts
(decoder, non-zero, fusion, adapter); ``add-head`` also writes ``add-head-report-<head>.json``.

Option values are checked before any data is read or any training starts: a bad value ends the
command with exit code 1 and one line naming the option (argparse's own checks: exit code 2).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segmenter.core.catalogue import load_catalogue
from segmenter.core.errors import SegmenterError

if TYPE_CHECKING:  # torch and the trainers are imported only by the command that needs them
    from segmenter.multihead.spec import HeadSpec
    from segmenter.training.data import RawDataset
    from segmenter.training.magnitude_pruning import MagnitudeReport
    from segmenter.training.pruning import PruneReport
    from segmenter.training.train import TrainConfig

log = logging.getLogger(__name__)


def _triple(text: str, kind: type = float) -> tuple[Any, Any, Any]:  # int or float, as ``kind`` says
    values = [kind(v) for v in text.split(",")]
    if len(values) != 3:
        raise SegmenterError(f"expected three comma-separated numbers (z,y,x), got {text!r}")
    return values[0], values[1], values[2]


def _supports(args: argparse.Namespace, name: str) -> tuple[str, ...]:
    # train declares supporters and supported heads in one call: a head never supports itself
    return tuple(s for s in args.support or () if s != name)


def _heads(args: argparse.Namespace, features: tuple[int, ...]) -> list[HeadSpec]:
    from segmenter.multihead.net import default_widths
    from segmenter.multihead.spec import HeadSpec

    widths = default_widths(features, args.head_width)
    heads = []
    for item in args.head or []:
        name, _, structures = item.partition("=")
        if not structures:
            raise SegmenterError(f"--head wants NAME=Struct1,Struct2, got {item!r}")
        heads.append(HeadSpec(name, tuple(s.strip() for s in structures.split(",")), widths,
                              priority=args.priority, group=args.group, supports=_supports(args, name)))
    catalogue = load_catalogue()
    for item in args.salt_head or []:
        name, _, tree_file = item.partition("=")
        try:
            paths = tuple(line.strip() for line in Path(tree_file).read_text(encoding="utf-8").splitlines()
                          if line.strip() and not line.startswith("#"))
        except OSError as exc:
            raise SegmenterError(f"cannot read label tree {tree_file}: {exc}") from exc
        nodes = {p.strip() for path in paths for p in path.split(",")}
        heads.append(HeadSpec(name, tuple(sorted(n for n in nodes if n in catalogue)), widths, kind="salt",
                              tree=paths, priority=args.priority, group=args.group,
                              supports=_supports(args, name)))
    if not heads:
        raise SegmenterError("give at least one --head or --salt-head")
    return heads


def _config(args: argparse.Namespace, features: tuple[int, ...]) -> TrainConfig:
    from segmenter.training.train import TrainConfig

    lower = len(features) - 2  # decoder levels below full resolution
    if not 0 <= args.deep_supervision <= lower:
        raise SegmenterError(f"--deep-supervision wants the number of lower decoder scales, 0 (off) to {lower} for "
                             f"an encoder of {len(features)} stages, got {args.deep_supervision}")

    return TrainConfig(iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
                       fg_fraction=args.fg_fraction, seed=args.seed, device=args.device,
                       checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                       snapshot_at=tuple(args.snapshot_at or ()), deep_supervision=args.deep_supervision)


def _datasets(args: argparse.Namespace) -> list[RawDataset]:
    from segmenter.training.data import RawDataset

    return [RawDataset.read(Path(d)) for d in args.dataset]


def _with_crop(args: argparse.Namespace, heads: list[HeadSpec], datasets: list[RawDataset]) -> list[HeadSpec]:
    from dataclasses import replace

    from segmenter.multihead.cascade import learn_crop_spec

    if not args.crop_anchor:
        return heads
    out = []
    for h in heads:
        samples = [(c.labels, ds.labels[args.crop_anchor], ds.labels[s]) for ds in datasets
                   if args.crop_anchor in ds.labels for s in h.structures[:1] if s in ds.labels for c in ds.cases]
        crop = learn_crop_spec(samples, datasets[0].cases[0].spacing, args.crop_anchor, _triple(args.crop_spacing))
        out.append(replace(h, crop=crop, group="small"))
    return out


def _with_range(args: argparse.Namespace, heads: list[HeadSpec], datasets: list[RawDataset]) -> list[HeadSpec]:
    from dataclasses import replace

    from segmenter.multihead.body_range import learn_range_spec
    from segmenter.multihead.spec import RangeSpec

    if not args.range_landmark:
        return heads
    out = []
    for h in heads:
        if args.range_landmark in h.structures:  # train: the head giving the landmark runs everywhere
            out.append(h)
            continue
        if args.range_margin:
            rng = RangeSpec(args.range_landmark, _margins(args.range_margin))
        else:
            samples = [(c.labels, ds.labels[args.range_landmark],
                        [ds.labels[s] for s in h.structures if s in ds.labels])
                       for ds in datasets if args.range_landmark in ds.labels for c in ds.cases]
            try:
                rng = learn_range_spec([s for s in samples if s[2]], datasets[0].cases[0].spacing[0],
                                       args.range_landmark)
            except SegmenterError as exc:
                raise SegmenterError(f"--range-landmark {args.range_landmark!r}: {exc}; label it in a --dataset "
                                     "or declare the margins with --range-margin") from exc
        out.append(replace(h, range=rng))
    return out


def _margins(text: str) -> tuple[float, float]:
    """``--range-margin``: LOW,HIGH mm (one number: both)."""
    lo, _, hi = text.partition(",")
    try:
        margins = (float(lo), float(hi or lo))
    except ValueError:
        raise SegmenterError(f"--range-margin wants LOW,HIGH in mm (or one number for both), got {text!r}") from None
    if sum(margins) < 0 or not all(map(math.isfinite, margins)):
        raise SegmenterError(f"--range-margin {text!r} leaves no slices (the margins may shrink the range, "
                             "but their sum must be >= 0)")
    return margins


def _check_head_options(args: argparse.Namespace, existing: dict[str, tuple[str, ...]]) -> None:
    """Options naming heads or structures, checked against the model's heads (name -> structures)."""
    for name in args.support or ():
        if name not in existing:
            raise SegmenterError(f"--support {name!r}: no such head; heads: {', '.join(existing) or 'none'}")
    if args.range_margin and not args.range_landmark:
        raise SegmenterError("--range-margin needs --range-landmark")
    if args.range_margin:
        _margins(args.range_margin)
    if args.range_landmark and not any(args.range_landmark in st for st in existing.values()):
        known = sorted({s for st in existing.values() for s in st})
        raise SegmenterError(f"--range-landmark {args.range_landmark!r} is not produced by an earlier head; "
                             f"structures: {', '.join(known) or 'none'}")
    if getattr(args, "adapter", None) is not None and args.adapter < 1:
        raise SegmenterError(f"--adapter wants a reduction factor >= 1 (bottleneck = stage channels / N), "
                             f"got {args.adapter}")


def _schedule(text: str) -> tuple[float, ...]:
    try:
        schedule = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise SegmenterError(f"--schedule wants rising sparsities such as 0.5,0.7,0.9, got {text!r}") from None
    if not all(0 < v < 1 for v in schedule) or any(b <= a for a, b in itertools.pairwise(schedule)):
        raise SegmenterError(f"--schedule wants sparsities in (0, 1), rising step by step, got {text!r}")
    return schedule


def _destination(args: argparse.Namespace, model_id: str, old_version: str | None) -> Path:
    if args.out:
        return Path(args.out)
    folder = Path(args.models_dir) / model_id
    if old_version is not None and (folder / "manifest.json").is_file():
        archive = folder / "versions" / old_version
        archive.mkdir(parents=True, exist_ok=True)
        for name in ("manifest.json", "weights.safetensors"):
            shutil.copy2(folder / name, archive / name)
        log.info("previous version %s kept in %s", old_version, archive)
    return folder


def _train(args: argparse.Namespace) -> int:
    from segmenter.multihead.spec import ModelSpec
    from segmenter.training.train import train_model

    features = _triple(args.features, int) if args.features.count(",") == 2 else tuple(
        int(v) for v in args.features.split(","))
    cfg = _config(args, features)
    heads = _heads(args, features)
    _check_head_options(args, {h.name: h.structures for h in heads})
    datasets = _datasets(args)
    heads = _with_range(args, _with_crop(args, heads, datasets), datasets)
    spec = ModelSpec(id=args.id, version=args.model_version or "1", encoder_features=features, heads=tuple(heads),
                     patch=_triple(args.patch, int), spacing=_triple(args.spacing) if args.spacing else None,
                     description=args.description)
    out = _destination(args, args.id, None)
    train_model(spec, datasets, out, cfg, resume=args.resume)
    log.info("model %s version %s written to %s", args.id, spec.version, out)
    return 0


def _add_head(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from segmenter.multihead.info import add_head_report, add_head_table
    from segmenter.multihead.model import load_model
    from segmenter.multihead.net import adapter_ranks
    from segmenter.training.train import add_head

    model = load_model(Path(args.models_dir) / args.model)
    cfg = _config(args, model.spec.encoder_features)
    _check_head_options(args, {h.name: h.structures for h in model.spec.heads})
    heads = _heads(args, model.spec.encoder_features)
    if len(heads) != 1:
        raise SegmenterError("add-head adds exactly one head")
    if args.adapter is not None:
        heads = [replace(heads[0], adapter=adapter_ranks(model.spec.encoder_features, args.adapter))]
    datasets = _datasets(args)
    heads = _with_range(args, _with_crop(args, heads, datasets), datasets)
    old = model.spec.version
    out = _destination(args, model.spec.id, old)
    new = add_head(model, heads[0], datasets, out, cfg, version=args.model_version, resume=args.resume)
    report = add_head_report(new, heads[0].name)
    log.info("model %s: version %s -> %s, written to %s\n%s", new.spec.id, old, new.spec.version, out,
             add_head_table(report))
    (out / f"add-head-report-{heads[0].name}.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


def _list_heads(args: argparse.Namespace) -> int:
    from segmenter.multihead.info import heads_listing, heads_table
    from segmenter.multihead.model import load_model

    model = load_model(Path(args.models_dir) / args.model)
    # the listing is the command's output (stdout), as ``segmenter models list``; logging stays on stderr
    print(json.dumps(heads_listing(model), indent=1) if args.json else heads_table(model))
    return 0


def _prune(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from segmenter.multihead.model import load_model, save_model
    from segmenter.training.data import RawDataset
    from segmenter.training.train import next_version

    if args.mode == "magnitude":
        schedule = _schedule(args.schedule)
    elif not 0 < args.keep <= 1:
        raise SegmenterError(f"--keep wants the fraction of decoder channels kept, in (0, 1], got {args.keep}")
    if args.steps < 1:
        raise SegmenterError(f"--steps wants at least 1, got {args.steps}")
    if args.rewind and args.mode != "magnitude":
        raise SegmenterError("--rewind applies to --mode magnitude only")
    if args.rewind and not Path(args.rewind).exists():
        raise SegmenterError(f"--rewind {args.rewind}: no such checkpoint or model folder")
    model = load_model(Path(args.models_dir) / args.model)
    cfg = _config(args, model.spec.encoder_features)
    if args.head not in {h.name for h in model.spec.heads}:
        raise SegmenterError(f"--head {args.head!r}: model {model.spec.id!r} has no such head; heads: "
                             f"{', '.join(h.name for h in model.spec.heads)}")
    old = model.spec.version
    datasets = _datasets(args)
    validation = RawDataset.read(Path(args.validation)) if args.validation else datasets[0]
    work = Path(args.out or Path(args.models_dir) / args.model) / "prune-work"
    step: dict[str, object] = {"action": "prune", "mode": args.mode, "heads": [args.head], "from": old}
    report: MagnitudeReport | PruneReport
    if args.mode == "magnitude":
        from segmenter.training.magnitude_pruning import (
            magnitude_prune_head,
            rewind_state,
        )

        rewind = None if not args.rewind else rewind_state(Path(args.rewind), args.head)
        model, report = magnitude_prune_head(model, args.head, datasets, validation, cfg, work, schedule,
                                             rewind, args.rewind or "pre-prune weights", args.max_dice_drop)
        step.update(schedule=list(schedule), sparsity=report.sparsity, rewind=args.rewind or "pre-prune")
    else:
        from segmenter.training.pruning import prune_head_with_report

        model, report = prune_head_with_report(model, args.head, args.keep, datasets, validation, cfg,
                                               work, args.max_dice_drop, steps=args.steps)
        step["keep"] = args.keep
    log.info("pruning report:\n%s", report.table())
    if not report.accepted and not args.force:
        raise SegmenterError(f"head {args.head}: Dice dropped by {report.max_drop:.4f} > {args.max_dice_drop}; "
                             "model left unchanged (--force writes it anyway)")
    version = args.model_version or next_version(old)
    model.spec = replace(model.spec, version=version, history=(*model.spec.history, {"version": version, **step}))
    out = _destination(args, model.spec.id, old)
    save_model(model, out)
    (out / f"prune-report-{args.head}.json").write_text(json.dumps(report.to_json(), indent=1) + "\n",
                                                        encoding="utf-8")
    return 0


def add_training_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", default="var/models", help="registered models (default var/models)")
    common.add_argument("--out", help="write the model here instead of <models-dir>/<id>")
    common.add_argument("--dataset", action="append", required=True, help="nnU-Net raw dataset folder (repeatable)")
    common.add_argument("--iterations", type=int, default=250)
    common.add_argument("--batch-size", type=int, default=2)
    common.add_argument("--lr", type=float, default=1e-2)
    common.add_argument("--fg-fraction", type=float, default=0.5, help="share of foreground-centred patches")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    common.add_argument("--checkpoint-every", type=int, default=50)
    common.add_argument("--log-every", type=int, default=25)
    common.add_argument("--snapshot-at", type=int, action="append",
                        help="also keep checkpoint-<iteration>.pt (a rewind point for prune --mode magnitude)")
    common.add_argument("--deep-supervision", type=int, default=0, metavar="K",
                        help="auxiliary losses on the K decoder scales below full resolution, weights halving per "
                             "scale (nnU-Net/CL-Net); 0 = off")
    common.add_argument("--resume", action="store_true", help="continue from checkpoint.pt in the output folder")
    common.add_argument("--model-version", help="version of the written model")
    heads = argparse.ArgumentParser(add_help=False)
    heads.add_argument("--head", action="append", help="NAME=Struct1,Struct2 (catalogue names)")
    heads.add_argument("--salt-head", action="append", help="NAME=tree.txt (SALT label tree, one path a line)")
    heads.add_argument("--head-width", type=float, default=1.0, help="decoder width relative to the encoder")
    heads.add_argument("--priority", type=int, default=0, help="merge priority of the head(s)")
    heads.add_argument("--group", default="anchor", choices=["anchor", "mid", "small"])
    heads.add_argument("--support", action="append",
                       help="an existing head whose logits the new head(s) fuse with their own (repeatable; "
                            "CL-Net's feature-level supporting)")
    heads.add_argument("--range-landmark",
                       help="body-part range: run the head(s) only on the slices around this structure of an "
                            "earlier head (margins learnt from the datasets unless --range-margin; with train, "
                            "every head but the landmark's own gets the range)")
    heads.add_argument("--range-margin", help="LOW,HIGH mm beyond the landmark's first and last slice")
    heads.add_argument("--crop-anchor", help="small & hard head: catalogue name of the anchor placing its crops")
    heads.add_argument("--crop-spacing", default="1,1,1", help="crop grid (z,y,x) mm")

    train = sub.add_parser("train", parents=[common, heads], help="train a new multi-head model")
    train.add_argument("--id", required=True)
    train.add_argument("--features", default="8,16,32,64", help="encoder channels per stage")
    train.add_argument("--patch", default="32,64,64", help="patch (z,y,x) voxels")
    train.add_argument("--spacing", help="network grid (z,y,x) mm (default: the images' own)")
    train.add_argument("--description", default="")
    train.set_defaults(handler=_train)

    add = sub.add_parser("add-head", parents=[common, heads], help="add a head; encoder and old heads frozen")
    add.add_argument("model", help="model id in --models-dir")
    add.add_argument("--adapter", type=int, metavar="N",
                     help="give the new head its own residual adapter over the frozen encoder's features "
                          "(bottleneck = each stage's channels / N; zero-initialised, trained with the head)")
    add.set_defaults(handler=_add_head)

    listing = sub.add_parser("heads", help="list a multi-head model's heads with their parameters")
    listing.add_argument("model", help="model id in --models-dir")
    listing.add_argument("--models-dir", default="var/models", help="registered models (default var/models)")
    listing.add_argument("--json", action="store_true", help="one JSON list instead of the table")
    listing.set_defaults(handler=_list_heads)

    prune = sub.add_parser("prune", parents=[common], help="prune one head (channels, or weights with rewinding)")
    prune.add_argument("--mode", choices=["structured", "magnitude"], default="structured",
                       help="structured: drop channels (smaller dense head); magnitude: CL-Net's global L1 "
                            "weight pruning with rewinding (zeros in the weights)")
    prune.add_argument("--schedule", default="0.5,0.7,0.8,0.9",
                       help="magnitude: rising sparsities, --iterations of retraining each")
    prune.add_argument("--rewind", help="magnitude: rewind to this checkpoint*.pt or model folder "
                                        "(default: the head's weights when pruning starts)")
    prune.add_argument("model", help="model id in --models-dir")
    prune.add_argument("--head", required=True)
    prune.add_argument("--keep", type=float, default=0.6,
                       help="structured: fraction of decoder channels kept per layer")
    prune.add_argument("--steps", type=int, default=1,
                       help="prune progressively in this many steps, fine-tuning after each")
    prune.add_argument("--validation", help="dataset for the Dice report (default: the first --dataset)")
    prune.add_argument("--max-dice-drop", type=float, default=0.02)
    prune.add_argument("--force", action="store_true", help="write the pruned model even if Dice dropped more")
    prune.set_defaults(handler=_prune)
