"""The head options of ``segmenter train`` and ``add-head``, turned into head declarations.

``--head NAME=Struct1,Struct2`` and ``--salt-head NAME=tree.txt`` declare heads; ``--support``,
``--range-landmark`` / ``--range-margin`` and ``--crop-anchor`` / ``--crop-spacing`` add supporting heads,
body-part ranges and SOARS-style crops to them. Every value is checked here, before any data is read
or any training starts; a bad one is a :class:`SegmenterError` naming the option.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segmenter.core.catalogue import load_catalogue
from segmenter.core.errors import SegmenterError

if TYPE_CHECKING:  # torch is imported only by the command that needs it
    from segmenter.multihead.spec import HeadSpec
    from segmenter.training.data import RawDataset


def triple(text: str, kind: type = float) -> tuple[Any, Any, Any]:  # int or float, as ``kind`` says
    values = [kind(v) for v in text.split(",")]
    if len(values) != 3:
        raise SegmenterError(f"expected three comma-separated numbers (z,y,x), got {text!r}")
    return values[0], values[1], values[2]


def _supports(args: argparse.Namespace, name: str) -> tuple[str, ...]:
    # train declares supporters and supported heads in one call: a head never supports itself
    return tuple(s for s in args.support or () if s != name)


def heads_from(args: argparse.Namespace, features: tuple[int, ...]) -> list[HeadSpec]:
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


def with_crop(args: argparse.Namespace, heads: list[HeadSpec], datasets: list[RawDataset]) -> list[HeadSpec]:
    from dataclasses import replace

    from segmenter.multihead.cascade import learn_crop_spec

    if not args.crop_anchor:
        return heads
    out = []
    for h in heads:
        samples = [(c.labels, ds.labels[args.crop_anchor], ds.labels[s]) for ds in datasets
                   if args.crop_anchor in ds.labels for s in h.structures[:1] if s in ds.labels for c in ds.cases]
        crop = learn_crop_spec(samples, datasets[0].cases[0].spacing, args.crop_anchor, triple(args.crop_spacing))
        out.append(replace(h, crop=crop, group="small"))
    return out


def with_range(args: argparse.Namespace, heads: list[HeadSpec], datasets: list[RawDataset]) -> list[HeadSpec]:
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
            rng = RangeSpec(args.range_landmark, margins(args.range_margin))
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


def margins(text: str) -> tuple[float, float]:
    """``--range-margin``: LOW,HIGH mm (one number: both)."""
    lo, _, hi = text.partition(",")
    try:
        values = (float(lo), float(hi or lo))
    except ValueError:
        raise SegmenterError(f"--range-margin wants LOW,HIGH in mm (or one number for both), got {text!r}") from None
    if sum(values) < 0 or not all(map(math.isfinite, values)):
        raise SegmenterError(f"--range-margin {text!r} leaves no slices (the margins may shrink the range, "
                             "but their sum must be >= 0)")
    return values


def check_head_options(args: argparse.Namespace, existing: dict[str, tuple[str, ...]]) -> None:
    """Options naming heads or structures, checked against the model's heads (name -> structures)."""
    for name in args.support or ():
        if name not in existing:
            raise SegmenterError(f"--support {name!r}: no such head; heads: {', '.join(existing) or 'none'}")
    if args.range_margin and not args.range_landmark:
        raise SegmenterError("--range-margin needs --range-landmark")
    if args.range_margin:
        margins(args.range_margin)
    if args.range_landmark and not any(args.range_landmark in st for st in existing.values()):
        known = sorted({s for st in existing.values() for s in st})
        raise SegmenterError(f"--range-landmark {args.range_landmark!r} is not produced by an earlier head; "
                             f"structures: {', '.join(known) or 'none'}")
    if getattr(args, "adapter", None) is not None and args.adapter < 1:
        raise SegmenterError(f"--adapter wants a reduction factor >= 1 (bottleneck = stage channels / N), "
                             f"got {args.adapter}")
