"""The registry keeps warm models within MAX_WARM and the memory budget, measuring weights alike
for every engine kind; the nnU-Net engine takes its streaming threshold from the budget."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from segmenter import registry


@dataclass
class _Part:
    networks: list[torch.nn.Module]


@dataclass
class _Engine:
    model_id: str
    parts: list[_Part] = field(default_factory=list)


def test_weights_bytes_counts_nested_modules_once() -> None:
    shared = torch.nn.Linear(10, 10)  # 110 float32 parameters
    engine = _Engine("m", [_Part([shared, torch.nn.Conv3d(1, 2, 3)]), _Part([shared])])
    conv = 2 * 27 + 2
    assert registry.weights_bytes(engine) == (110 + conv) * 4
    assert registry.weights_bytes(registry.get_engine("builtin")) == 0


def test_least_recently_used_models_leave_beyond_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    warm = registry._WARM
    monkeypatch.setattr(registry, "_WARM", type(warm)())
    monkeypatch.setattr(registry, "MAX_WARM", 3)
    sizes = {"a": 600, "b": 300, "c": 200}
    monkeypatch.setattr(registry, "weights_bytes", lambda engine: sizes[engine.model_id])
    for name in ("a", "b"):
        registry._WARM[(name, name, "cpu", 0, 1000, 0)] = _Engine(name)
    registry._evict(1000)
    assert [k[0] for k in registry._WARM] == ["a", "b"]  # 900 bytes fit
    registry._WARM[("c", "c", "cpu", 0, 1000, 0)] = _Engine("c")
    registry._evict(1000)
    assert [k[0] for k in registry._WARM] == ["b", "c"]  # a, least recently used, unloaded
    registry._evict(100)
    assert [k[0] for k in registry._WARM] == ["c"]  # the newest stays even above the budget


def test_nnunet_streams_above_a_quarter_of_the_budget(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from segmenter.nnunet import engine as nnunet_engine
    from segmenter.nnunet.importer import import_nnunet
    from tests.nnunet_fixtures import ModelSpec, make_model_folder, synthetic_ct

    folder = make_model_folder(tmp_path / "src", ModelSpec("eng", n_classes=3, patch=(16, 32, 32)))
    manifest = import_nnunet(folder, "m", tmp_path / "models")
    from segmenter.core.volume import Volume

    ct = Volume(synthetic_ct((20, 40, 36), seed=2), (1.2, 1.2, 2.0), (0.0, 0.0, 0.0),
                (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    streamed: list[bool] = []
    real = nnunet_engine.sliding_window_slabs

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        streamed.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(nnunet_engine, "sliding_window_slabs", spy)
    whole = nnunet_engine.NnUNetEngine(manifest, nnunet_engine.EngineOptions(device="cpu", threads=1)).segment(ct)
    assert streamed == []  # 8 GB default: a small accumulator stays whole
    tight = nnunet_engine.NnUNetEngine(manifest, nnunet_engine.EngineOptions(
        device="cpu", threads=1, memory_budget_bytes=4096))
    assert tight.parts[0].stream_above_bytes == 1024
    assert np.array_equal(tight.segment(ct).labels.array, whole.labels.array)
    assert streamed == [True]
