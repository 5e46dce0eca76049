"""``segmenter train``, ``segmenter add-head`` and ``segmenter prune`` (multi-head models).

Heads are given as ``--head NAME=Struct1,Struct2`` (catalogue names, softmax over them +
background) or ``--salt-head NAME=tree.txt`` (a SALT label tree, one comma path per line; the tree's
nodes that are catalogue names are exported). A model lives in ``<models-dir>/<id>/`` (the registry's
layout); ``add-head`` and ``prune`` write the new version there and keep the previous one under
``<models-dir>/<id>/versions/<version>/``, unless ``--out`` names another folder.
``segmenter heads MODEL`` lists a model's heads with their declarations, parameter counts
(decoder, non-zero, fusion, adapter) and bytes; ``add-head`` also writes ``add-head-report-<head>.json``.

Work folders: each command keeps its checkpoints in its own folder, outside the model folder (which
holds what the registry loads and nothing else): ``<work-dir>/<id>/train``,
``<work-dir>/<id>/add-head-<head>`` and ``<work-dir>/<id>/prune-<head>``, ``--work-dir`` defaulting to
``<models-dir>/.work``. ``--resume`` continues from the checkpoint in the command's own folder, so it
never picks up another command's; the pruning steps' folder is removed when ``prune`` ends.

``prune`` judges its Dice limit (``--max-dice-drop``, a fraction of each structure's unpruned Dice:
0.02 = 2 %) on cases it did not fine-tune on: ``--validation DATASET``, or else cases held out of the
first dataset that labels the head (:mod:`segmenter.training.holdout`; ``--holdout`` sets the share).

Option values are checked before any data is read or any training starts: a bad value ends the
command with exit code 1 and one line naming the option (argparse's own checks: exit code 2).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from segmenter.core.errors import SegmenterError
from segmenter.training.head_options import check_head_options, heads_from, triple, with_crop, with_range

if TYPE_CHECKING:  # torch and the trainers are imported only by the command that needs them
    from segmenter.training.data import RawDataset
    from segmenter.training.magnitude_pruning import MagnitudeReport
    from segmenter.training.pruning import PruneReport
    from segmenter.training.train import TrainConfig

log = logging.getLogger(__name__)


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


WORK_DIR = ".work"


def _work_dir(args: argparse.Namespace, model_id: str, job: str) -> Path:
    """The command's own work folder (checkpoints, snapshots, pruning steps), outside the model folder."""
    root = Path(args.work_dir) if args.work_dir else Path(args.models_dir) / WORK_DIR
    work = root / model_id / job
    from segmenter.training.train import CHECKPOINT

    if args.resume and not (work / CHECKPOINT).is_file():
        raise SegmenterError(f"--resume: no checkpoint of {job} for model {model_id!r} in {work}; "
                             "run without --resume to start afresh")
    return work


def _train(args: argparse.Namespace) -> int:
    from segmenter.multihead.spec import ModelSpec
    from segmenter.training.train import train_model

    features = triple(args.features, int) if args.features.count(",") == 2 else tuple(
        int(v) for v in args.features.split(","))
    cfg = _config(args, features)
    heads = heads_from(args, features)
    check_head_options(args, {h.name: h.structures for h in heads})
    work = _work_dir(args, args.id, "train")
    datasets = _datasets(args)
    heads = with_range(args, with_crop(args, heads, datasets), datasets)
    spec = ModelSpec(id=args.id, version=args.model_version or "1", encoder_features=features, heads=tuple(heads),
                     patch=triple(args.patch, int), spacing=triple(args.spacing) if args.spacing else None,
                     description=args.description)
    out = _destination(args, args.id, None)
    train_model(spec, datasets, out, cfg, resume=args.resume, work_dir=work)
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
    check_head_options(args, {h.name: h.structures for h in model.spec.heads})
    heads = heads_from(args, model.spec.encoder_features)
    if len(heads) != 1:
        raise SegmenterError("add-head adds exactly one head")
    if args.adapter is not None:
        heads = [replace(heads[0], adapter=adapter_ranks(model.spec.encoder_features, args.adapter))]
    work = _work_dir(args, model.spec.id, f"add-head-{heads[0].name}")
    datasets = _datasets(args)
    heads = with_range(args, with_crop(args, heads, datasets), datasets)
    old = model.spec.version
    out = _destination(args, model.spec.id, old)
    new = add_head(model, heads[0], datasets, out, cfg, version=args.model_version, resume=args.resume,
                   work_dir=work)
    report = add_head_report(new, heads[0].name)
    log.info("model %s: version %s -> %s, written to %s\n%s", new.spec.id, old, new.spec.version, out,
             add_head_table(report))
    (out / f"add-head-report-{heads[0].name}.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


def _list_heads(args: argparse.Namespace) -> int:
    from segmenter.multihead.info import heads_document, heads_table
    from segmenter.multihead.model import load_model

    folder = Path(args.models_dir) / args.model
    model = load_model(folder)
    # the listing is the command's output (stdout), as ``segmenter models list``; logging stays on stderr
    print(json.dumps(heads_document(model, folder), indent=1) if args.json else heads_table(model, folder))
    return 0


def _prune(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from segmenter.multihead.model import load_model, save_model
    from segmenter.training.data import RawDataset
    from segmenter.training.holdout import Split, hold_out
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
    if not 0 < args.holdout < 1:
        raise SegmenterError(f"--holdout wants the share of cases held out for validation, in (0, 1), "
                             f"got {args.holdout}")
    if args.resume:
        raise SegmenterError("--resume applies to train and add-head; prune starts afresh")
    model = load_model(Path(args.models_dir) / args.model)
    cfg = _config(args, model.spec.encoder_features)
    if args.head not in {h.name for h in model.spec.heads}:
        raise SegmenterError(f"--head {args.head!r}: model {model.spec.id!r} has no such head; heads: "
                             f"{', '.join(h.name for h in model.spec.heads)}")
    old = model.spec.version
    work = _work_dir(args, model.spec.id, f"prune-{args.head}")
    datasets = _datasets(args)
    if args.validation:
        given = RawDataset.read(Path(args.validation))
        split = Split(tuple(datasets), given, ())
        log.info("validation: dataset %s (--validation, %d cases)", given.name, len(given.cases))
    else:
        split = hold_out(datasets, model.spec.head(args.head).structures, args.holdout, args.seed)
    step: dict[str, object] = {"action": "prune", "mode": args.mode, "heads": [args.head], "from": old,
                               "validation": split.to_json()}
    report: MagnitudeReport | PruneReport
    try:
        if args.mode == "magnitude":
            from segmenter.training.magnitude_pruning import magnitude_prune_head, rewind_state

            rewind = None if not args.rewind else rewind_state(Path(args.rewind), args.head)
            model, report = magnitude_prune_head(model, args.head, split.train, split.validation, cfg, work, schedule,
                                                 rewind, args.rewind or "pre-prune weights", args.max_dice_drop)
            step.update(schedule=list(schedule), sparsity=report.sparsity, rewind=args.rewind or "pre-prune")
        else:
            from segmenter.training.pruning import prune_head_with_report

            model, report = prune_head_with_report(model, args.head, args.keep, split.train, split.validation, cfg,
                                                   work, args.max_dice_drop, steps=args.steps)
            step["keep"] = args.keep
    finally:  # the steps' checkpoints serve no later command: prune has no --resume
        shutil.rmtree(work, ignore_errors=True)
    log.info("pruning report:\n%s", report.table())
    if not report.accepted and not args.force:
        raise SegmenterError(f"head {args.head}: Dice dropped by more than {args.max_dice_drop:.1%} of its unpruned "
                             f"value on {split.validation.name}; model left unchanged (--force writes it anyway)")
    version = args.model_version or next_version(old)
    model.spec = replace(model.spec, version=version, history=(*model.spec.history, {"version": version, **step}))
    out = _destination(args, model.spec.id, old)
    save_model(model, out)
    document = {**report.to_json(), "max_dice_drop": args.max_dice_drop, "validation": split.to_json()}
    (out / f"prune-report-{args.head}.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
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
                        help="also keep checkpoint-<iteration>.pt in the work folder (a rewind point for prune --mode "
                             "magnitude --rewind)")
    common.add_argument("--deep-supervision", type=int, default=0, metavar="K",
                        help="auxiliary losses on the K decoder scales below full resolution, weights halving per "
                             "scale (nnU-Net/CL-Net); 0 = off")
    common.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in the command's work folder (train, add-head)")
    common.add_argument("--work-dir", help="checkpoints go to <work-dir>/<id>/<command> (default <models-dir>/.work)")
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
    listing.add_argument("--json", action="store_true",
                         help="one JSON object instead of the table: size on disk, encoder and heads with their "
                              "parameters and bytes")
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
    prune.add_argument("--validation", help="dataset for the Dice check, not trained on (default: cases held out "
                                            "of the first --dataset labelling the head)")
    prune.add_argument("--holdout", type=float, default=0.2,
                       help="without --validation: share of that dataset's cases held out (default 0.2)")
    prune.add_argument("--max-dice-drop", type=float, default=0.02,
                       help="largest Dice drop of any structure on the validation cases, as a fraction of its "
                            "unpruned Dice (default 0.02 = 2 %%)")
    prune.add_argument("--force", action="store_true", help="write the pruned model even if Dice dropped more")
    prune.set_defaults(handler=_prune)
