"""Model registry: a model id -> the engine that runs it.

The built-in classical segmenter needs no weights, so it is always available. Other models are
registered in a models directory, one folder per id holding a ``manifest.json``
(:mod:`segmenter.models.manifest`; ``segmenter models import`` writes them). Loaded models stay warm
between calls, at most ``MAX_WARM`` of them and, apart from the one just asked for, no more
weights than the memory budget allows (least recently used first out).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from segmenter.classical import engine as classical
from segmenter.core.errors import ModelError
from segmenter.core.result import SegmentationResult
from segmenter.core.volume import Volume
from segmenter.models.manifest import MANIFEST_NAME, Manifest, read_manifest

logger = logging.getLogger(__name__)


class Engine(Protocol):
    # read-only: engines expose them as frozen dataclass fields or as properties
    @property
    def model_id(self) -> str: ...

    @property
    def version(self) -> str: ...

    def segment(self, volume: Volume) -> SegmentationResult: ...


@dataclass(frozen=True)
class FunctionEngine:
    """An engine that is one function of the volume."""

    model_id: str
    version: str
    function: Callable[[Volume], SegmentationResult]

    def segment(self, volume: Volume) -> SegmentationResult:
        return self.function(volume)


_CLASSICAL = FunctionEngine(classical.MODEL_ID, classical.MODEL_VERSION, classical.segment)
_ENGINES: dict[str, Engine] = {"builtin": _CLASSICAL, classical.MODEL_ID: _CLASSICAL}


MAX_WARM = 2
DEFAULT_MEMORY_BUDGET_BYTES = 8 * 1024**3
_WARM: OrderedDict[tuple[str, str, str, int, int, int], Engine] = OrderedDict()


def weights_bytes(engine: object) -> int:
    """Bytes of the torch parameters and buffers an engine holds (0 for one without torch modules).

    Looks through the engine's attributes, lists and dataclasses a few levels deep, so every engine
    kind is measured the same way without each having to report itself."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency; the built-in engine needs none
        return 0
    seen: set[int] = set()
    total = 0

    def visit(obj: object, depth: int) -> None:
        nonlocal total
        if depth > 6 or id(obj) in seen or isinstance(obj, (str, bytes, int, float, Path)):
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            tensors = {id(t): t for t in [*obj.parameters(), *obj.buffers()]}
            total += sum(t.numel() * t.element_size() for t in tensors.values())
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item, depth + 1)
        elif isinstance(obj, dict):
            for item in obj.values():
                visit(item, depth + 1)
        elif hasattr(obj, "__dict__"):
            for item in vars(obj).values():
                visit(item, depth + 1)

    visit(engine, 0)
    return total


def manifests(models_dir: Path | None) -> list[Manifest]:
    """The manifests of every model registered in ``models_dir`` (sorted by id)."""
    if models_dir is None or not models_dir.is_dir():
        return []
    return [read_manifest(p.parent) for p in sorted(models_dir.glob(f"*/{MANIFEST_NAME}"))]


def known_ids(models_dir: Path | None = None) -> list[str]:
    return sorted(set(_ENGINES) | {m.id for m in manifests(models_dir)})


def structure_names(model_id: str, models_dir: Path | None = None) -> list[str] | None:
    """The catalogue names ``model_id`` can produce, from its manifest (no weights are loaded); None if unknown.

    A multi-head id (``id:head1+head2``) answers for the whole model."""
    base = model_id.split(":", 1)[0]
    if base in _ENGINES:
        return [s.name for s in classical.STRUCTURES] + [classical.EXTERNAL]
    for manifest in manifests(models_dir):
        if manifest.id == base:
            return manifest.structures()
    return None


def get_engine(model_id: str, models_dir: Path | None = None, device: str = "auto", *, threads: int = 0,
               memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES) -> Engine:
    """The engine registered under ``model_id``; unknown ids raise ModelError naming the known ones.

    ``threads`` > 0 sets torch's CPU threads for learned models; ``memory_budget_bytes`` bounds the
    weights kept warm and (nnU-Net) the whole-image logits of one run."""
    if model_id in _ENGINES:
        return _ENGINES[model_id]
    if ":" in model_id:  # "id:head1+head2" runs only those heads of a multi-head model
        base, _, heads = model_id.partition(":")
        from segmenter.multihead.model import MultiHeadEngine
        whole = get_engine(base, models_dir, device, threads=threads, memory_budget_bytes=memory_budget_bytes)
        if not isinstance(whole, MultiHeadEngine):
            raise ModelError(f"model {base!r} has no heads to choose from ({model_id!r})")
        return whole.with_heads([h for h in heads.split("+") if h])
    folder = models_dir / model_id if models_dir is not None else None
    if folder is None or not (folder / MANIFEST_NAME).is_file():
        raise ModelError(f"unknown model {model_id!r}; known models: {', '.join(known_ids(models_dir))}")
    # the manifest's mtime is part of the key: a new version written into the same folder (add-head,
    # a re-import) is loaded by the next job instead of the stale one kept warm
    key = (str(folder.resolve()), model_id, device, threads, memory_budget_bytes,
           (folder / MANIFEST_NAME).stat().st_mtime_ns)
    if key in _WARM:
        _WARM.move_to_end(key)
        return _WARM[key]
    manifest = read_manifest(folder)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    if manifest.kind == "multihead":
        from segmenter.multihead.model import MultiHeadEngine
        engine: Engine = MultiHeadEngine.from_dir(folder, device)
    elif manifest.kind == "salt_torchscript":  # TorchScript holds code: loaded only if the manifest opts in
        from segmenter.multihead.salt_torchscript import TorchScriptSaltEngine
        engine = TorchScriptSaltEngine.from_dir(folder, device)
    elif manifest.kind == "nnunet_v2":
        from segmenter.nnunet.engine import (  # torch is imported only when needed
            EngineOptions,
            NnUNetEngine,
        )

        engine = NnUNetEngine(manifest, EngineOptions(device=device, threads=threads or None,
                                                      memory_budget_bytes=memory_budget_bytes))
    else:
        raise ModelError(f"model {model_id!r}: kind {manifest.kind!r} has no engine yet")
    for stale in [k for k in _WARM if k[:3] == key[:3]]:
        del _WARM[stale]
    _WARM[key] = engine
    _evict(memory_budget_bytes)
    return engine


def _evict(memory_budget_bytes: int) -> None:
    """Unload least recently used models beyond MAX_WARM or the budget; the newest always stays."""
    sizes = {key: weights_bytes(engine) for key, engine in _WARM.items()}
    while len(_WARM) > 1 and (len(_WARM) > MAX_WARM or sum(sizes[k] for k in _WARM) > memory_budget_bytes):
        evicted, _ = _WARM.popitem(last=False)
        logger.info("unloading model %s (%.1f MB of weights) to stay within %d warm models and %.1f GB",
                    evicted[1], sizes[evicted] / 1e6, MAX_WARM, memory_budget_bytes / 1024**3)
