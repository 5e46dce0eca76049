"""Each training command keeps its checkpoints in its own work folder, outside the model folder;
``--resume`` never picks up another command's checkpoint and fails in one line; ``prune`` leaves no
work behind and judges its Dice limit, relative to the unpruned Dice, on cases it did not train on.

Tiny networks trained for a few iterations on the synthetic phantoms (tests/multihead_phantoms.py), as
in tests/integration/test_multihead_cli_options.py: what is checked is where files go and what the
commands say, not segmentation quality.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from segmenter.cli import main
from segmenter.training.data import RawDataset
from tests.multihead_phantoms import ABDOMEN, deterministic_torch, write_dataset

TRAIN = ["--iterations", "6", "--log-every", "3", "--checkpoint-every", "3"]
KIDNEYS = ["--head", "kidneys=Kidney_L,Kidney_R"]


@pytest.fixture(scope="module", autouse=True)
def _deterministic() -> Iterator[None]:
    yield from deterministic_torch()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Datasets and version 1 of model "demo" (head abdomen), trained through the CLI."""
    root = tmp_path_factory.mktemp("work")
    paths = {"A": write_dataset(root / "A", 2, ABDOMEN, ("Liver", "Spleen"), seed=11),
             "B": write_dataset(root / "B", 2, ABDOMEN, ("Kidney_L", "Kidney_R"), seed=12),
             "one": write_dataset(root / "one", 1, ABDOMEN, ("Liver", "Spleen"), seed=13),
             "models": root / "models"}
    assert main(["train", "--id", "demo", "--dataset", str(paths["A"]), "--head", "abdomen=Liver,Spleen",
                 "--features", "4,8,16", "--patch", "16,32,32", "--models-dir", str(paths["models"]), *TRAIN]) == 0
    return paths


@pytest.fixture
def models(base: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(base["models"], tmp_path / "models"))


def _version(model_folder: Path) -> str:
    return str(json.loads((model_folder / "manifest.json").read_text())["version"])


def _one_line_error(caplog: pytest.LogCaptureFixture, text: str) -> None:
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and text in errors[0].getMessage() and "\n" not in errors[0].getMessage()
    assert "Traceback" not in caplog.text


def test_the_model_folder_holds_no_training_checkpoint(base: dict[str, Path]) -> None:
    assert sorted(p.name for p in (base["models"] / "demo").iterdir()) == ["manifest.json", "weights.safetensors"]
    assert (base["models"] / ".work/demo/train/checkpoint.pt").is_file()


def test_add_head_resume_after_train_does_not_load_trains_checkpoint(base: dict[str, Path], models: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    before = (models / "demo/weights.safetensors").read_bytes()
    argv = ["add-head", "demo", "--dataset", str(base["B"]), *KIDNEYS, "--models-dir", str(models), *TRAIN]
    assert main([*argv, "--resume"]) == 1
    _one_line_error(caplog, "--resume: no checkpoint of add-head-kidneys for model 'demo'")
    assert _version(models / "demo") == "1" and (models / "demo/weights.safetensors").read_bytes() == before
    assert not (models / "demo/versions").exists()
    # another job's checkpoint put into add-head's folder is refused in one line too
    work = models / ".work/demo/add-head-kidneys"
    work.mkdir(parents=True)
    shutil.copy2(models / ".work/demo/train/checkpoint.pt", work / "checkpoint.pt")
    caplog.clear()
    assert main([*argv, "--resume"]) == 1
    _one_line_error(caplog, "trains heads ['abdomen'], not ['kidneys']")


def test_resume_from_a_checkpoint_that_does_not_fit_is_one_line(base: dict[str, Path], models: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    assert main(["train", "--id", "demo", "--dataset", str(base["A"]), "--head", "abdomen=Liver,Spleen",
                 "--features", "4,8,16,32", "--patch", "16,32,32", "--models-dir", str(models), "--resume",
                 *TRAIN]) == 1
    _one_line_error(caplog, "does not fit this model")


def test_add_head_resumes_from_its_own_checkpoint(base: dict[str, Path], models: Path,
                                                  caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO)
    argv = ["add-head", "demo", "--dataset", str(base["B"]), *KIDNEYS, "--models-dir", str(models)]
    assert main([*argv, *TRAIN, "--out", str(tmp_path / "first")]) == 0
    assert (models / ".work/demo/add-head-kidneys/checkpoint.pt").is_file()
    assert not list((tmp_path / "first").glob("checkpoint*"))
    caplog.clear()
    assert main([*argv, "--iterations", "9", "--log-every", "3", "--checkpoint-every", "3", "--resume",
                 "--out", str(tmp_path / "second")]) == 0
    assert "at iteration 6" in caplog.text and "resumed from" in caplog.text
    assert _version(tmp_path / "second") == "2" and _version(models / "demo") == "1"


def _prune(base: dict[str, Path], models: Path, *extra: str) -> int:
    return main(["prune", "demo", "--head", "abdomen", "--models-dir", str(models), "--max-dice-drop", "1",
                 *TRAIN, *extra])


def test_prune_holds_cases_out_for_its_dice_check_and_leaves_no_work(base: dict[str, Path], models: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert _prune(base, models, "--dataset", str(base["A"])) == 0
    assert not (models / ".work/demo/prune-abdomen").exists()
    assert sorted(p.name for p in (models / "demo").iterdir()) == [
        "manifest.json", "prune-report-abdomen.json", "versions", "weights.safetensors"]
    report = json.loads((models / "demo/prune-report-abdomen.json").read_text())
    cases = [c.name for c in RawDataset.read(base["A"]).cases]
    held = report["validation"]["held_out"]
    assert report["validation"]["dataset"] == "A" and len(held) == 1 and held[0] in cases
    assert report["validation"]["training_cases"] == 1
    assert f"held out of training ({held[0]})" in caplog.text
    step = json.loads((models / "demo/manifest.json").read_text())["multihead"]["history"][-1]
    assert step["action"] == "prune" and step["validation"] == report["validation"]
    # the limit is relative to the unpruned Dice: 0.02 is 2 % of it
    before, after = report["dice_before"], report["dice_after"]
    relative = max((b - after[k]) / b if b > 0 else -after[k] for k, b in before.items())
    assert report["max_relative_drop"] == pytest.approx(relative)
    assert report["accepted"] == (relative <= report["max_dice_drop"]) and report["max_dice_drop"] == 1


def test_prune_with_validation_given_trains_on_every_case(base: dict[str, Path], models: Path) -> None:
    assert _prune(base, models, "--dataset", str(base["A"]), "--validation", str(base["one"])) == 0
    report = json.loads((models / "demo/prune-report-abdomen.json").read_text())
    assert report["validation"] == {"dataset": "one", "held_out": [], "training_cases": 2}


def test_prune_without_cases_to_hold_out_asks_for_validation(base: dict[str, Path], models: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    assert _prune(base, models, "--dataset", str(base["one"])) == 1
    _one_line_error(caplog, "give --validation DATASET")
    assert _version(models / "demo") == "1" and not (models / "demo/versions").exists()
