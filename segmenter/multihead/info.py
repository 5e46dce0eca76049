"""What a multi-head model holds, head by head: parameters of each part, and the add-head report.

``segmenter heads MODEL`` prints :func:`heads_table` (``--json``: :func:`heads_document`, the same with
the bytes of every part and the model's size on disk); ``segmenter add-head`` logs
:func:`add_head_report`'s table and writes it as ``add-head-report-<head>.json`` next to the model.
A head's parameters are split into its decoder (``heads.<name>``), its fusion with its supporters
(``supports.<name>``, CL-Net's feature-level supporting) and its adapter (``adapters.<name>``): all
three belong to the head, train with it and are read by nothing else. "non-zero" counts the
decoder's weights that magnitude pruning left (:mod:`segmenter.training.magnitude_pruning`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from segmenter.multihead.model import MultiHeadModel
from segmenter.multihead.net import count_parameters
from segmenter.multihead.spec import WEIGHTS_NAME

log = logging.getLogger(__name__)

PARTS = ("heads", "supports", "adapters")
_PART_NAMES = {"heads": "decoder", "supports": "fusion", "adapters": "adapter"}


def head_parameters(model: MultiHeadModel, name: str) -> dict[str, int]:
    """Parameters of one head: decoder, fusion, adapter (0 when absent), total, and the decoder's
    non-zero parameters."""
    modules = model.net.head_modules(name)
    out = {_PART_NAMES[k]: count_parameters(modules[k]) if k in modules else 0 for k in PARTS}
    out["total"] = sum(out[_PART_NAMES[k]] for k in PARTS)
    out["decoder non-zero"] = int(sum(int((p != 0).sum()) for p in modules["heads"].parameters()))
    return out


def tensor_bytes(*modules: nn.Module) -> int:
    """Bytes of the modules' parameters and buffers, as stored (safetensors: dense, no overhead)."""
    tensors = {id(t): t for m in modules for t in [*m.parameters(), *m.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def size_on_disk(folder: Path) -> int:
    """Bytes of the model's weights and manifest in ``folder`` (archived versions not counted)."""
    return sum(p.stat().st_size for p in (folder / WEIGHTS_NAME, folder / "manifest.json") if p.is_file())


def heads_listing(model: MultiHeadModel) -> list[dict[str, Any]]:
    """One row per head (manifest order) with its declaration, parameter counts and bytes."""
    rows = []
    for h in model.spec.heads:
        rows.append({"head": h.name, "kind": h.kind, "group": h.group, "priority": h.priority, "enabled": h.enabled,
                     "structures": list(h.structures), "supports": list(h.supports),
                     "range": None if h.range is None else h.range.to_json(),
                     "adapter": None if h.adapter is None else list(h.adapter),
                     "parameters": head_parameters(model, h.name),
                     "bytes": tensor_bytes(*model.net.head_modules(h.name).values())})
    return rows


def heads_document(model: MultiHeadModel, folder: Path) -> dict[str, Any]:
    """``segmenter heads --json``: the model, its size on disk, its encoder and its heads."""
    encoder = model.net.encoder
    return {"model": model.spec.id, "version": model.spec.version, "size_bytes": size_on_disk(folder),
            "parameters": count_parameters(model.net),
            "encoder": {"features": list(model.spec.encoder_features), "parameters": count_parameters(encoder),
                        "bytes": tensor_bytes(encoder)},
            "heads": heads_listing(model)}


def heads_table(model: MultiHeadModel, folder: Path) -> str:
    spec = model.spec
    lines = [f"{spec.id} version {spec.version}: {count_parameters(model.net):,} parameters, "
             f"{size_on_disk(folder) / 1e6:.2f} MB on disk; encoder {list(spec.encoder_features)}, "
             f"{count_parameters(model.net.encoder):,} parameters",
             f"{'head':16}{'decoder':>10}{'non-zero':>10}{'fusion':>8}{'adapter':>9}{'kB':>9}  declared"]
    for row in heads_listing(model):
        p = row["parameters"]
        declared = [f"{row['kind']}/{row['group']}", f"priority {row['priority']}"]
        if not row["enabled"]:
            declared.append("off")
        if row["supports"]:
            declared.append("supported by " + "+".join(row["supports"]))
        if row["range"]:
            declared.append(f"range {row['range']['landmark']} -{row['range']['margin_mm'][0]:g}/"
                            f"+{row['range']['margin_mm'][1]:g} mm")
        if row["adapter"]:
            declared.append("adapter " + ",".join(str(r) for r in row["adapter"]))
        lines.append(f"{row['head']:16}{p['decoder']:>10,}{p['decoder non-zero']:>10,}{p['fusion']:>8,}"
                     f"{p['adapter']:>9,}{row['bytes'] / 1e3:>9.1f}  {', '.join(declared)}: "
                     f"{', '.join(row['structures'])}")
    return "\n".join(lines)


def add_head_report(model: MultiHeadModel, name: str) -> dict[str, Any]:
    """What ``add-head`` trained (the new head's parts) and what it left frozen."""
    head = model.spec.head(name)
    trained = head_parameters(model, name)
    frozen_heads = {h.name: head_parameters(model, h.name)["total"] for h in model.spec.heads if h.name != name}
    encoder = count_parameters(model.net.encoder)
    return {"model": model.spec.id, "version": model.spec.version, "head": name,
            "trained": {k: trained[k] for k in ("decoder", "fusion", "adapter", "total")},
            "frozen": {"encoder": encoder, "heads": frozen_heads, "total": encoder + sum(frozen_heads.values())},
            "supports": list(head.supports), "adapter": None if head.adapter is None else list(head.adapter),
            "range": None if head.range is None else head.range.to_json()}


def add_head_table(report: dict[str, Any]) -> str:
    t, f = report["trained"], report["frozen"]
    return "\n".join([
        f"head {report['head']} added to {report['model']} (version {report['version']})",
        f"  trained: decoder {t['decoder']:,} + fusion {t['fusion']:,} + adapter {t['adapter']:,} "
        f"= {t['total']:,} parameters",
        f"  frozen:  encoder {f['encoder']:,} + {len(f['heads'])} old head(s) {sum(f['heads'].values()):,} "
        f"= {f['total']:,} parameters"])
