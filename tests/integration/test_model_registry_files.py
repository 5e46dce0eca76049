"""``segmenter models check`` verifies every weight file of every model kind; ``models list`` and
``heads --json`` give sizes on disk and parameters per part or head; ``run --help`` names the
registered models and the ``ID:head1+head2`` syntax.

One registry of small generated models, one of each kind: an nnU-Net v2 model of two folds
(tests/nnunet_fixtures.py, imported with ``models import``), a multi-head model of two heads with one
archived version under ``versions/`` (as add-head and prune keep them) and a SALT TorchScript model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from segmenter.cli import main
from segmenter.models.manifest import sha256_file
from segmenter.multihead.model import MultiHeadModel, load_model, save_model
from segmenter.multihead.net import count_parameters, default_widths
from segmenter.multihead.spec import HeadSpec, ModelSpec
from tests.nnunet_fixtures import ModelSpec as NnUNetSpec
from tests.nnunet_fixtures import make_model_folder

FEATURES = (4, 8, 16)
NODES = ["background", "body", "body,other", "body,Liver", "body,Spleen"]


def _multihead(models: Path) -> None:
    widths = default_widths(FEATURES)
    one = ModelSpec(id="mh", version="1", encoder_features=FEATURES, patch=(8, 16, 16),
                    heads=(HeadSpec("abdomen", ("Liver", "Spleen"), widths),))
    save_model(MultiHeadModel.build(one, seed=0), models / "mh/versions/1")
    two = ModelSpec(id="mh", version="2", encoder_features=FEATURES, patch=(8, 16, 16),
                    heads=(*one.heads, HeadSpec("kidneys", ("Kidney_L", "Kidney_R"), widths, priority=-1)))
    save_model(MultiHeadModel.build(two, seed=0), models / "mh")


def _salt(folder: Path) -> None:
    """A TorchScript network of 10 parameters (a 1x1x1 convolution to the tree's 5 nodes)."""
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.jit.trace(nn.Conv3d(1, len(NODES), 1), torch.rand(1, 1, 8, 8, 8)).save(str(folder / "model.pt"))
    section = {"file": "model.pt", "sha256": sha256_file(folder / "model.pt"), "allow_code": True, "nodes": NODES,
               "structures": {"body,Liver": "Liver", "body,Spleen": "Spleen"}, "axes": "LPI",
               "spacing": [1.0, 1.0, 1.0], "patch": [8, 8, 8], "intensity": {"clip": [-1024, 1024], "scale": [0, 1]},
               "output": "logits"}
    manifest = {"id": folder.name, "version": "1", "kind": "salt_torchscript", "salt_torchscript": section}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    models = root / "models"
    source = make_model_folder(root / "src", NnUNetSpec("files", n_classes=3, folds=(0, 1)))
    assert main(["models", "import", str(source), "--id", "nn", "--models-dir", str(models)]) == 0
    _multihead(models)
    _salt(models / "salt")
    return models


@pytest.fixture
def models(registry: Path, tmp_path: Path) -> Path:
    """A copy of the registry for a test that damages it (the nnU-Net part folder stays shared, read-only)."""
    return Path(shutil.copytree(registry, tmp_path / "models"))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("model_id", "files"), [("nn", 2), ("mh", 2), ("salt", 1)])
def test_check_counts_every_weight_file(registry: Path, model_id: str, files: int,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "check", model_id, "--models-dir", str(registry)]) == 0
    out = capsys.readouterr().out
    assert f"{model_id} " in out and "ok" in out and f"{files} weight file(s) verified by SHA-256" in out


# every weight file the registry holds, by model: its path relative to the models folder
DAMAGED = [("mh", "mh/weights.safetensors"), ("mh", "mh/versions/1/weights.safetensors"), ("salt", "salt/model.pt")]


@pytest.mark.parametrize(("model_id", "relative"), DAMAGED, ids=[d[1] for d in DAMAGED])
def test_check_finds_a_corrupted_weight_file(models: Path, model_id: str, relative: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    _flip_last_byte(models / relative)
    assert main(["models", "check", model_id, "--models-dir", str(models)]) == 1
    assert f"{models / relative}: checksum mismatch" in caplog.text


def test_check_finds_each_corrupted_fold_of_an_nnunet_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = make_model_folder(tmp_path / "src", NnUNetSpec("folds", n_classes=3, folds=(0, 1)))
    assert main(["models", "import", str(source), "--id", "nn", "--models-dir", str(tmp_path / "m")]) == 0
    for fold in (1, 0):
        _flip_last_byte(source / f"fold_{fold}/checkpoint_final.pth")
        assert main(["models", "check", "nn", "--models-dir", str(tmp_path / "m")]) == 1
        assert f"fold_{fold}/checkpoint_final.pth: checksum mismatch" in caplog.text
    assert "2 problem(s) among 2 weight file(s)" in caplog.text


def test_check_refuses_a_weight_file_without_a_recorded_checksum(models: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    manifest = json.loads((models / "mh/manifest.json").read_text())
    manifest["multihead"]["sha256"] = ""
    (models / "mh/manifest.json").write_text(json.dumps(manifest))
    assert main(["models", "check", "mh", "--models-dir", str(models)]) == 1
    assert "weights.safetensors: no SHA-256 recorded" in caplog.text


def _nnunet_parameters(registry: Path) -> int:
    """One fold's parameters, as the engine loads it."""
    from segmenter.models.manifest import read_manifest
    from segmenter.nnunet.engine import NnUNetPartModel

    manifest = read_manifest(registry / "nn")
    part = manifest.parts[0]
    loaded = NnUNetPartModel.load(manifest.folder(part), part.configuration, part.folds)
    assert len(loaded.networks) == 2
    return count_parameters(loaded.networks[0])


def test_list_gives_size_on_disk_and_parameters_per_part_and_head(registry: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", "--json", "--models-dir", str(registry)]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    mh = load_model(registry / "mh")
    expected = {"encoder": count_parameters(mh.net.encoder), "abdomen": count_parameters(mh.net.head("abdomen")),
                "kidneys": count_parameters(mh.net.head("kidneys"))}
    assert {p["name"]: p["parameters"] for p in rows["mh"]["parts"]} == expected
    assert rows["mh"]["parameters"] == count_parameters(mh.net)
    assert {p["name"]: p["bytes"] for p in rows["mh"]["parts"]} == {k: 4 * v for k, v in expected.items()}
    assert rows["mh"]["size_bytes"] == sum((registry / "mh" / f).stat().st_size
                                           for f in ("manifest.json", "weights.safetensors"))
    assert rows["mh"]["archived_bytes"] == sum(p.stat().st_size for p in (registry / "mh/versions").rglob("*")
                                               if p.is_file())
    per_fold = _nnunet_parameters(registry)
    assert rows["nn"]["parts"] == [{"name": "0", "parameters": per_fold, "bytes": 4 * per_fold, "folds": 2}]
    assert rows["nn"]["parameters"] == 2 * per_fold and rows["nn"]["size_bytes"] > 2 * 4 * per_fold
    assert rows["salt"]["parts"] == [{"name": "network", "parameters": 10, "bytes": 40, "folds": 1}]
    assert main(["models", "list", "--models-dir", str(registry)]) == 0
    text = capsys.readouterr().out
    mh_line = next(line for line in text.splitlines() if line.startswith("mh\t"))
    assert f"{count_parameters(mh.net):,} parameters (encoder {expected['encoder']:,}, " in mh_line
    assert "kB (+" in mh_line and "in versions/)" in mh_line
    assert f"{2 * per_fold:,} parameters (part 0 {per_fold:,} x 2 folds)" in text


def test_heads_json_gives_size_and_parameters(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["heads", "mh", "--json", "--models-dir", str(registry)]) == 0
    document = json.loads(capsys.readouterr().out)
    mh = load_model(registry / "mh")
    assert document["model"] == "mh" and document["version"] == "2"
    assert document["size_bytes"] == sum((registry / "mh" / f).stat().st_size
                                         for f in ("manifest.json", "weights.safetensors"))
    assert document["parameters"] == count_parameters(mh.net)
    assert document["encoder"] == {"features": list(FEATURES), "parameters": count_parameters(mh.net.encoder),
                                   "bytes": 4 * count_parameters(mh.net.encoder)}
    heads = {h["head"]: h for h in document["heads"]}
    for name in ("abdomen", "kidneys"):
        assert heads[name]["parameters"]["total"] == count_parameters(mh.net.head(name))
        assert heads[name]["bytes"] == 4 * count_parameters(mh.net.head(name))
    assert main(["heads", "mh", "--models-dir", str(registry)]) == 0
    assert "MB on disk" in capsys.readouterr().out


def test_run_help_names_the_registered_models_and_the_heads_syntax(registry: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--models-dir", str(registry), "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert "ID:head1+head2" in text
    for name in ("builtin", "nn", "salt", "mh (heads: abdomen+kidneys)"):
        assert name in text
