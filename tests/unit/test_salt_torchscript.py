"""SALT's TorchScript model format as a registry model kind, with a tiny TorchScript model made here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from segmenter.core.errors import ModelError
from segmenter.core.metrics import dice
from segmenter.core.volume import Volume
from segmenter.models.manifest import sha256_file
from segmenter.multihead.salt import LabelTree
from segmenter.multihead.salt_torchscript import TorchScriptSaltEngine
from segmenter.registry import get_engine

PATHS = ("background", "body,other", "body,Liver", "body,Spleen")
MODEL_ORDER = ["body,Spleen", "body,Liver", "body,other", "body", "background"]  # not our tree's order
HU = {"air": -1000.0, "tissue": 0.0, "Liver": 200.0, "Spleen": 400.0}


class PointwiseTree(nn.Module):
    """Per-voxel node logits from the [0, 1]-scaled intensity (air < 0.3, liver ~0.6, spleen ~0.7),
    emitted in MODEL_ORDER; with ``probabilities`` the tree softmax is part of the traced graph, as in
    SALT's export."""

    def __init__(self, probabilities: bool) -> None:
        super().__init__()
        self.tree = LabelTree(PATHS)
        self.probabilities = probabilities
        self.order = [self.tree.nodes.index(n) for n in MODEL_ORDER]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ours = {"background": 20 * (0.3 - x), "body": torch.zeros_like(x), "body,other": torch.zeros_like(x),
                "body,Liver": 10 - 200 * (x - 0.6).abs(), "body,Spleen": 10 - 200 * (x - 0.7).abs()}
        logits = torch.cat([ours[n] for n in self.tree.nodes], dim=1)
        if self.probabilities:
            logits = self.tree.probs(logits)
        return logits[:, self.order]


def _phantom() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    z, y, x = np.meshgrid(np.arange(12), np.arange(20), np.arange(24), indexing="ij")
    body = ((y - 10) / 8.5) ** 2 + ((x - 12) / 10.5) ** 2 <= 1
    liver = body & (x < 9) & (y > 6) & (z > 2)
    spleen = body & (x > 15) & (y < 12) & (z < 9)
    image = np.full(body.shape, HU["air"], np.float32)
    image[body] = HU["tissue"]
    image[liver] = HU["Liver"]
    image[spleen] = HU["Spleen"]
    return image, {"External": body, "Liver": liver, "Spleen": spleen}


def _write(folder: Path, probabilities: bool = True, **change: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    traced = torch.jit.trace(PointwiseTree(probabilities), torch.rand(1, 1, 16, 16, 8))
    traced.save(str(folder / "model.pt"))
    section: dict[str, object] = {
        "file": "model.pt", "sha256": sha256_file(folder / "model.pt"), "allow_code": True, "nodes": MODEL_ORDER,
        "structures": {"body": "External", "body,Liver": "Liver", "body,Spleen": "Spleen"},
        "axes": "LPI", "spacing": [1.0, 1.0, 1.0], "patch": [16, 16, 8], "tile_step": 0.5,
        "intensity": {"clip": [-1024, 1024], "scale": [0.0, 1.0]},
        "output": "probabilities" if probabilities else "logits"}
    section.update(change)
    manifest = {"id": folder.name, "version": "1", "kind": "salt_torchscript", "salt_torchscript": section}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


IDENTITY = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)


@pytest.mark.parametrize("probabilities", [True, False])
def test_registry_runs_a_torchscript_salt_model_with_tree_decoding(tmp_path: Path, probabilities: bool) -> None:
    _write(tmp_path / "salt", probabilities)
    engine = get_engine("salt", tmp_path, "cpu")
    assert isinstance(engine, TorchScriptSaltEngine) and engine.version == "1"
    image, truth = _phantom()
    result = engine.segment(Volume(image, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY))
    assert [s.name for s in result.structures] == ["Liver", "Spleen"]
    for name in ("External", "Liver", "Spleen"):
        assert np.array_equal(result.mask(name), truth[name]), name
    for name in ("Liver", "Spleen"):  # tree-consistent: a child implies its parent
        assert bool(np.all(result.mask("External")[result.mask(name)]))


def test_models_list_describes_the_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from segmenter.cli import main

    _write(tmp_path / "salt")
    _write(tmp_path / "locked", allow_code=False)
    assert main(["models", "list", "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"salt\t1\tsalt_torchscript\tlabel tree of {len(MODEL_ORDER)} nodes (TorchScript)\t3 structures" in out
    assert "locked\t1\tsalt_torchscript\tcannot be described:" in out and "allow_code" in out


def test_reoriented_and_resampled_input_maps_back_to_its_own_voxels(tmp_path: Path) -> None:
    engine = TorchScriptSaltEngine.from_dir(_write(tmp_path / "salt"))
    image, truth = _phantom()
    # feet-first, rows flipped, 2 mm slices: the model sees 1 mm LPI; results land on the input grid
    volume = Volume(image, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, -1.0, 0, 0, 0, -1.0))
    result = engine.segment(volume)
    for name in ("External", "Liver", "Spleen"):
        assert dice(result.mask(name), truth[name]) > 0.9, name


def test_torchscript_is_loaded_only_when_allowed_and_unchanged(tmp_path: Path) -> None:
    folder = _write(tmp_path / "a", allow_code=False)
    with pytest.raises(ModelError, match="contains code"):
        TorchScriptSaltEngine.from_dir(folder)
    folder = _write(tmp_path / "b")
    with (folder / "model.pt").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="checksum mismatch"):
        TorchScriptSaltEngine.from_dir(folder)
    with pytest.raises(ModelError, match="every node of the tree"):
        TorchScriptSaltEngine.from_dir(_write(tmp_path / "c", nodes=[n for n in MODEL_ORDER if n != "body"]))
    with pytest.raises(ModelError, match="not catalogue structures"):
        TorchScriptSaltEngine.from_dir(_write(tmp_path / "d", structures={"body,Liver": "Hepar"}))
    with pytest.raises(ModelError, match="unknown axes"):
        TorchScriptSaltEngine.from_dir(_write(tmp_path / "e", axes="RAS"))
