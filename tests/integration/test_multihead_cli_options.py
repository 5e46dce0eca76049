"""The multi-head CLI's options end to end: add-head --support / --adapter / --range-landmark /
--range-margin, prune --mode magnitude (with --snapshot-at and --rewind), train --deep-supervision,
``segmenter heads``, and the
refusal of bad option values before anything is trained or written.

Tiny networks trained for a few iterations on the synthetic phantoms (tests/multihead_phantoms.py):
what is checked is the plumbing (exit codes, the registry loading the new version, what the manifest,
the weights and the reports hold), not segmentation quality, which
tests/integration/test_multihead_continual.py measures.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from segmenter.cli import main
from segmenter.core.volume import Volume
from segmenter.multihead.model import MultiHeadEngine
from segmenter.registry import get_engine
from segmenter.training.data import RawDataset
from segmenter.training.magnitude_pruning import sparsity_of
from tests.multihead_phantoms import (
    ABDOMEN,
    deterministic_torch,
    make_case,
    write_dataset,
)

A_ORGANS = ("Liver", "Spleen")
B_ORGANS = ("Kidney_L", "Kidney_R")
TRAIN = ["--iterations", "6", "--log-every", "3", "--checkpoint-every", "3"]


@pytest.fixture(scope="module", autouse=True)
def _deterministic() -> Iterator[None]:
    yield from deterministic_torch()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Datasets + version 1 of model "demo" (head abdomen = Liver, Spleen), trained through the CLI
    with deep supervision and a snapshot at iteration 3 kept as a rewind point."""
    root = tmp_path_factory.mktemp("cli")
    paths = {"A": write_dataset(root / "A", 2, ABDOMEN, A_ORGANS, seed=11),
             "B": write_dataset(root / "B", 2, ABDOMEN, B_ORGANS, seed=12),
             "LK": write_dataset(root / "LK", 2, ABDOMEN, ("Liver", *B_ORGANS), seed=13),
             "models": root / "models"}
    assert main(["train", "--id", "demo", "--dataset", str(paths["A"]), "--head", "abdomen=Liver,Spleen",
                 "--features", "4,8,16", "--patch", "16,32,32", "--models-dir", str(paths["models"]),
                 "--snapshot-at", "3", "--deep-supervision", "1", *TRAIN]) == 0
    work = paths["models"] / ".work/demo/train"  # train's own work folder, outside the model folder
    assert (work / "checkpoint-3.pt").is_file()
    assert not list((paths["models"] / "demo").glob("checkpoint*.pt"))
    # deep supervision's classifiers are in the training checkpoint only, never in the model
    assert "aux" in torch.load(work / "checkpoint.pt", weights_only=True)
    assert not any("aux" in k or "per_head" in k for k in load_file(str(paths["models"] / "demo/weights.safetensors")))
    return paths


@pytest.fixture
def models(base: dict[str, Path], tmp_path: Path) -> Path:
    """A fresh copy of the registered version 1 for each test."""
    return Path(shutil.copytree(base["models"], tmp_path / "models"))


def _manifest(models: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((models / "demo/manifest.json").read_text())  # type: ignore[no-any-return]


def _engine_v2(models: Path) -> MultiHeadEngine:
    engine = get_engine("demo", models, "cpu")
    assert isinstance(engine, MultiHeadEngine) and engine.version == "2"
    assert _manifest(models)["version"] == "2"
    assert json.loads((models / "demo/versions/1/manifest.json").read_text())["version"] == "1"
    return engine


def _volume() -> Volume:
    image, _ = make_case(np.random.default_rng(5), ABDOMEN, (24, 48, 48), (2.0, 1.5, 1.5))
    return Volume(image, (1.5, 1.5, 2.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def _add_head(models: Path, dataset: Path, *extra: str) -> int:
    return main(["add-head", "demo", "--dataset", str(dataset), "--head", "kidneys=Kidney_L,Kidney_R",
                 "--models-dir", str(models), *TRAIN, *extra])


def test_add_head_support(base: dict[str, Path], models: Path) -> None:
    assert _add_head(models, base["B"], "--support", "abdomen") == 0
    engine = _engine_v2(models)
    assert engine.model.spec.head("kidneys").supports == ("abdomen",)
    assert _manifest(models)["multihead"]["heads"][1]["supports"] == ["abdomen"]
    assert any(k.startswith("supports.kidneys.") for k in load_file(str(models / "demo/weights.safetensors")))
    report = json.loads((models / "demo/add-head-report-kidneys.json").read_text())
    assert report["supports"] == ["abdomen"] and report["trained"]["fusion"] > 0
    assert [s.name for s in engine.segment(_volume()).structures] == [*A_ORGANS, *B_ORGANS]


def test_add_head_adapter_and_heads_listing(base: dict[str, Path], models: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert _add_head(models, base["B"], "--adapter", "4") == 0
    engine = _engine_v2(models)
    assert engine.model.spec.head("kidneys").adapter == (1, 2, 4)  # features 4,8,16 / 4
    assert _manifest(models)["multihead"]["heads"][1]["adapter"] == [1, 2, 4]
    weights = load_file(str(models / "demo/weights.safetensors"))
    counted = sum(v.numel() for k, v in weights.items() if k.startswith("adapters.kidneys."))
    assert counted == sum(2 * c * r + r + c for c, r in zip((4, 8, 16), (1, 2, 4), strict=True))
    report = json.loads((models / "demo/add-head-report-kidneys.json").read_text())
    assert report["adapter"] == [1, 2, 4] and report["trained"]["adapter"] == counted
    assert report["trained"]["total"] == report["trained"]["decoder"] + counted
    capsys.readouterr()
    assert main(["heads", "demo", "--models-dir", str(models), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["heads"]
    assert [r["head"] for r in rows] == ["abdomen", "kidneys"]
    assert [r["parameters"]["adapter"] for r in rows] == [0, counted]
    assert main(["heads", "demo", "--models-dir", str(models)]) == 0
    assert "adapter 1,2,4" in capsys.readouterr().out
    assert main(["models", "list", "--models-dir", str(models)]) == 0
    listed = capsys.readouterr().out
    assert "demo\t" in listed and "2 head(s): abdomen, kidneys" in listed
    assert f"{len(set(A_ORGANS) | set(B_ORGANS))} structures" in listed
    assert [s.name for s in engine.segment(_volume()).structures] == [*A_ORGANS, *B_ORGANS]


def test_add_head_declared_range(base: dict[str, Path], models: Path) -> None:
    assert _add_head(models, base["B"], "--range-landmark", "Liver", "--range-margin", "20,30") == 0
    engine = _engine_v2(models)
    assert _manifest(models)["multihead"]["heads"][1]["range"] == {"landmark": "Liver", "margin_mm": [20.0, 30.0]}
    assert engine.model.spec.head("kidneys").range.margin_mm == (20.0, 30.0)  # type: ignore[union-attr]
    assert [s.name for s in engine.segment(_volume()).structures] == [*A_ORGANS, *B_ORGANS]


def test_add_head_learnt_range_covers_the_training_structures(base: dict[str, Path], models: Path) -> None:
    assert _add_head(models, base["LK"], "--range-landmark", "Liver") == 0
    rng = _engine_v2(models).model.spec.head("kidneys").range
    assert rng is not None and rng.landmark == "Liver"
    ds = RawDataset.read(base["LK"])
    def slices(labels: np.ndarray, values: list[int]) -> np.ndarray:
        return np.nonzero(np.isin(labels, values).any((1, 2)))[0]

    for case in ds.cases:  # every training case's kidneys lie within the liver's slices +- the margins
        liver = slices(case.labels, [ds.labels["Liver"]])
        kidneys = slices(case.labels, [ds.labels[o] for o in B_ORGANS])
        spacing_z = case.spacing[0]
        assert (liver.min() - kidneys.min()) * spacing_z <= rng.margin_mm[0] - 10 + 1e-6
        assert (kidneys.max() - liver.max()) * spacing_z <= rng.margin_mm[1] - 10 + 1e-6


def test_prune_magnitude_with_rewind_to_a_snapshot(base: dict[str, Path], models: Path) -> None:
    snapshot = models / ".work/demo/train/checkpoint-3.pt"
    assert main(["prune", "demo", "--head", "abdomen", "--mode", "magnitude", "--schedule", "0.3,0.5",
                 "--rewind", str(snapshot), "--dataset", str(base["A"]), "--models-dir", str(models),
                 "--max-dice-drop", "1", *TRAIN]) == 0
    engine = _engine_v2(models)
    assert abs(sparsity_of(engine.model.net.head("abdomen")) - 0.5) < 1e-3
    report = json.loads((models / "demo/prune-report-abdomen.json").read_text())
    assert report["mode"] == "magnitude" and report["rewound_to"] == str(snapshot)
    assert [s["sparsity"] for s in report["steps"]] == [0.3, 0.5] and report["params_after"] < report["params_before"]
    step = _manifest(models)["multihead"]["history"][-1]
    assert step["action"] == "prune" and step["mode"] == "magnitude" and step["rewind"] == str(snapshot)
    assert [s.name for s in engine.segment(_volume()).structures] == list(A_ORGANS)


def test_prune_magnitude_rejected_leaves_the_model(base: dict[str, Path], models: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    before = (models / "demo/weights.safetensors").read_bytes()
    assert main(["prune", "demo", "--head", "abdomen", "--mode", "magnitude", "--schedule", "0.5",
                 "--dataset", str(base["A"]), "--models-dir", str(models), "--max-dice-drop", "-1", *TRAIN]) == 1
    assert "Dice dropped" in caplog.text
    assert _manifest(models)["version"] == "1" and (models / "demo/weights.safetensors").read_bytes() == before


BAD = [
    (["add-head", "--support", "nosuch"], 1, "--support 'nosuch'"),
    (["add-head", "--adapter", "0"], 1, "--adapter"),
    (["add-head", "--adapter", "x"], 2, "--adapter"),
    (["add-head", "--range-margin", "20,30"], 1, "--range-margin needs --range-landmark"),
    (["add-head", "--range-landmark", "Liver", "--range-margin", "a,b"], 1, "--range-margin"),
    (["add-head", "--range-landmark", "Liver", "--range-margin=-30,10"], 1, "--range-margin"),
    (["add-head", "--range-landmark", "Kidney_L"], 1, "--range-landmark 'Kidney_L'"),
    (["add-head", "--range-landmark", "Liver"], 1, "--range-landmark 'Liver'"),  # B does not label the liver
    (["prune", "--mode", "magnitude", "--schedule", "0.7,0.5"], 1, "--schedule"),
    (["prune", "--mode", "magnitude", "--schedule", "0.5,abc"], 1, "--schedule"),
    (["prune", "--mode", "magnitude", "--schedule", "0.5,1.0"], 1, "--schedule"),
    (["prune", "--mode", "magnitude", "--rewind", "no/such/checkpoint.pt"], 1, "--rewind"),
    (["prune", "--rewind", "x.pt"], 1, "--rewind"),
    (["prune", "--mode", "sparse"], 2, "--mode"),
    (["prune", "--keep", "0"], 1, "--keep"),
    (["prune", "--steps", "0"], 1, "--steps"),
    (["prune", "--head", "nosuch"], 1, "--head 'nosuch'"),
    (["add-head", "--deep-supervision", "2"], 1, "--deep-supervision"),  # features 4,8,16: one lower scale
    (["prune", "--deep-supervision=-1"], 1, "--deep-supervision"),
]


@pytest.mark.parametrize(("argv", "code", "message"), BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_option_values_are_refused_naming_the_option(
        base: dict[str, Path], models: Path, argv: list[str], code: int, message: str,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    command, *options = argv
    if command == "add-head":
        argv = [command, "demo", "--dataset", str(base["B"]), "--head", "kidneys=Kidney_L,Kidney_R", *options]
    else:
        argv = [command, "demo", "--dataset", str(base["A"]), *([] if "--head" in options else ["--head", "abdomen"]),
                *options]
    before = (models / "demo/weights.safetensors").read_bytes()
    assert main([*argv, "--models-dir", str(models), *TRAIN]) == code
    assert message in caplog.text + capsys.readouterr().err
    assert _manifest(models)["version"] == "1" and (models / "demo/weights.safetensors").read_bytes() == before
    assert not (models / "demo/versions").exists()
