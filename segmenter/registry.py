"""Model registry: a model id -> the engine that runs it.

The built-in classical segmenter needs no weights, so it is always available. Other models are
registered in a models directory, one folder per id holding a ``manifest.json``
(:mod:`segmenter.manifest`; ``segmenter models import`` writes them). Loaded models stay warm
between calls, at most ``MAX_WARM`` of them (least recently used first out).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from segmenter import classical
from segmenter.errors import ModelError
from segmenter.manifest import MANIFEST_NAME, Manifest, read_manifest
from segmenter.result import SegmentationResult
from segmenter.volume import Volume

logger = logging.getLogger(__name__)


class Engine(Protocol):
    model_id: str
    version: str

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
_WARM: OrderedDict[tuple[str, str, str, int], Engine] = OrderedDict()


def manifests(models_dir: Path | None) -> list[Manifest]:
    """The manifests of every model registered in ``models_dir`` (sorted by id)."""
    if models_dir is None or not models_dir.is_dir():
        return []
    return [read_manifest(p.parent) for p in sorted(models_dir.glob(f"*/{MANIFEST_NAME}"))]


def known_ids(models_dir: Path | None = None) -> list[str]:
    return sorted(set(_ENGINES) | {m.id for m in manifests(models_dir)})


def get_engine(model_id: str, models_dir: Path | None = None, device: str = "auto") -> Engine:
    """The engine registered under ``model_id``; unknown ids raise ModelError naming the known ones."""
    if model_id in _ENGINES:
        return _ENGINES[model_id]
    if ":" in model_id:  # "id:head1+head2" runs only those heads of a multi-head model
        base, _, heads = model_id.partition(":")
        from segmenter.multihead import MultiHeadEngine
        engine = get_engine(base, models_dir, device)
        if not isinstance(engine, MultiHeadEngine):
            raise ModelError(f"model {base!r} has no heads to choose from ({model_id!r})")
        return engine.with_heads([h for h in heads.split("+") if h])
    folder = models_dir / model_id if models_dir is not None else None
    if folder is None or not (folder / MANIFEST_NAME).is_file():
        raise ModelError(f"unknown model {model_id!r}; known models: {', '.join(known_ids(models_dir))}")
    # the manifest's mtime is part of the key: a new version written into the same folder (add-head,
    # a re-import) is loaded by the next job instead of the stale one kept warm
    key = (str(folder.resolve()), model_id, device, (folder / MANIFEST_NAME).stat().st_mtime_ns)
    if key in _WARM:
        _WARM.move_to_end(key)
        return _WARM[key]
    manifest = read_manifest(folder)
    if manifest.kind == "multihead":
        from segmenter.multihead import MultiHeadEngine
        engine: Engine = MultiHeadEngine.from_dir(folder, device)
    elif manifest.kind == "salt_torchscript":  # TorchScript holds code: loaded only if the manifest opts in
        from segmenter.salt_torchscript import TorchScriptSaltEngine
        engine = TorchScriptSaltEngine.from_dir(folder, device)
    elif manifest.kind == "nnunet_v2":
        from segmenter.nnunet_engine import EngineOptions, NnUNetEngine  # torch is imported only when needed

        engine = NnUNetEngine(manifest, EngineOptions(device=device))
    else:
        raise ModelError(f"model {model_id!r}: kind {manifest.kind!r} has no engine yet")
    for stale in [k for k in _WARM if k[:3] == key[:3]]:
        del _WARM[stale]
    _WARM[key] = engine
    while len(_WARM) > MAX_WARM:
        evicted, _ = _WARM.popitem(last=False)
        logger.info("unloading model %s to stay within %d warm models", evicted[1], MAX_WARM)
    return engine
