"""Training checkpoints (``checkpoint.pt``): written and read back with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so it loads with PyTorch's restricted
unpickler and no code in the file ever runs: the network's and the deep-supervision classifiers' state dicts,
the optimiser's state dict, the iteration, the random states (NumPy's bit-generator state is a dict of ints
and strings, torch's a byte tensor), the names of the heads being trained and the model's spec as JSON text.
A file that needs anything else (a pickled object) is refused with a :class:`TrainingError`.

Checkpoints written before ``format`` was recorded hold the same kinds of values (without the heads and the
spec) and are read as they are.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segmenter.multihead.spec import ModelSpec
from segmenter.training.data import TrainingError

log = logging.getLogger(__name__)

FORMAT = 2  # 1: the unversioned layout (no heads, no spec)


@dataclass(frozen=True)
class TrainingState:
    """What a resumed training run continues from."""

    net: dict[str, torch.Tensor]
    optimiser: dict[str, Any]
    iteration: int
    numpy_rng: dict[str, Any]
    torch_rng: torch.Tensor
    aux: dict[str, torch.Tensor] | None = None
    heads: tuple[str, ...] | None = None  # None: a format-1 checkpoint, which did not record them


def save_checkpoint(path: Path, state: TrainingState, spec: ModelSpec) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file replaced in one step)."""
    payload: dict[str, Any] = {
        "format": FORMAT, "net": state.net, "optimiser": state.optimiser, "iteration": state.iteration,
        "rng": {"numpy": state.numpy_rng, "torch": state.torch_rng},
        "heads": list(state.heads or ()), "spec": json.dumps(spec.to_json(), sort_keys=True),
    }
    if state.aux is not None:
        payload["aux"] = state.aux
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def save_snapshot(path: Path, net: Mapping[str, torch.Tensor], iteration: int) -> None:
    """A rewind point: the network's weights at ``iteration`` only (read by magnitude pruning)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "net": dict(net), "iteration": iteration}, path)


def _tensors(raw: Any, what: str, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in raw.items()):
        raise TrainingError(f"checkpoint {path}: {what} is not a state dict of tensors")
    return raw


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> TrainingState:
    """The training state in ``path``, loaded with ``weights_only=True``."""
    try:
        raw = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"checkpoint {path} is missing") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        # torch's refusal message spans many lines of advice; the first says what was refused
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"checkpoint {path} cannot be loaded with weights_only=True (it holds more than "
                            f"tensors, numbers and strings, or is damaged): {first}") from exc
    if not isinstance(raw, dict):
        raise TrainingError(f"checkpoint {path}: expected a dictionary, found {type(raw).__name__}")
    version = raw.get("format", 1)
    if version not in (1, FORMAT):
        raise TrainingError(f"checkpoint {path}: unknown format {version!r} (this version reads 1 and {FORMAT})")
    rng = raw.get("rng")
    if not isinstance(rng, dict) or not isinstance(rng.get("numpy"), dict) \
            or not isinstance(rng.get("torch"), torch.Tensor):
        raise TrainingError(f"checkpoint {path}: no random states")
    optimiser, iteration = raw.get("optimiser"), raw.get("iteration")
    if not isinstance(optimiser, dict) or not isinstance(iteration, int):
        raise TrainingError(f"checkpoint {path}: no optimiser state or iteration")
    heads = raw.get("heads")
    if heads is not None and not (isinstance(heads, list) and all(isinstance(h, str) for h in heads)):
        raise TrainingError(f"checkpoint {path}: heads must be a list of names")
    return TrainingState(
        net=_tensors(raw.get("net"), "net", path), optimiser=optimiser, iteration=iteration,
        numpy_rng=rng["numpy"], torch_rng=rng["torch"].cpu(),
        aux=_tensors(raw["aux"], "aux", path) if "aux" in raw else None,
        heads=tuple(heads) if heads is not None else None)


def check_resumable(state: TrainingState, path: Path, heads: Sequence[str], deep_supervision: bool) -> None:
    """Refuse a checkpoint of another training job (other heads, deep supervision switched)."""
    if state.heads is not None and sorted(state.heads) != sorted(heads):
        raise TrainingError(f"{path} trains heads {sorted(state.heads)}, not {sorted(heads)}; "
                            "resume with the same heads or start afresh")
    if deep_supervision and state.aux is None:
        raise TrainingError(f"{path} was written without deep supervision; resume with the same settings")
