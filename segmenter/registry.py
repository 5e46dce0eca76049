"""Model registry: a model id -> the engine that runs it.

Only the built-in classical segmenter is registered here; it needs no weights, so it is always
available.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from segmenter import classical
from segmenter.errors import ModelError
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


def known_ids() -> list[str]:
    return sorted(_ENGINES)


def get_engine(model_id: str) -> Engine:
    """The engine registered under ``model_id``; unknown ids raise ModelError naming the known ones."""
    try:
        return _ENGINES[model_id]
    except KeyError:
        raise ModelError(f"unknown model {model_id!r}; known models: {', '.join(known_ids())}") from None
