"""segmenter models import | list | check and segmenter run --model with a generated nnU-Net folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segmenter.cli import main
from segmenter.core.volume import Volume
from tests.nnunet_fixtures import ModelSpec, make_model_folder, synthetic_ct


def test_import_list_check_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_model_folder(tmp_path / "src", ModelSpec("cli", n_classes=3))
    ds = json.loads((folder / "dataset.json").read_text())
    ds["labels"] = {"background": 0, "liver": 1, "spleen": 2}
    (folder / "dataset.json").write_text(json.dumps(ds))
    models = str(tmp_path / "models")
    assert main(["models", "import", str(folder), "--id", "abd", "--models-dir", models,
                 "--model-version", "7", "--tile-step", "0.8"]) == 0
    assert main(["models", "list", "--models-dir", models]) == 0
    assert "abd\t7\tnnunet_v2" in capsys.readouterr().out
    assert main(["models", "check", "abd", "--models-dir", models]) == 0
    ct = tmp_path / "ct.nii.gz"
    Volume(synthetic_ct((20, 36, 36)), (1.5, 1.5, 1.5), (0.0, 0.0, 0.0),
           (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)).write(ct)
    out = tmp_path / "out"
    assert main(["run", str(ct), "--out", str(out), "--model", "abd", "--models-dir", models, "--device", "cpu"]) == 0
    doc = json.loads((out / "structures.json").read_text())
    assert doc["model_id"] == "abd" and doc["model_version"] == "7"
    assert {v["structure"] for v in doc["labels"].values()} == {"Liver", "Spleen"}
    labels = Volume.read(out / "labels.nii.gz")
    assert labels.shape == (20, 36, 36) and set(np.unique(labels.array)) <= {0, 1, 2}


def test_check_reports_checksum_mismatch(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "src", ModelSpec("bad"))
    models = str(tmp_path / "models")
    assert main(["models", "import", str(folder), "--id", "m", "--models-dir", models]) == 0
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"tampered")
    assert main(["models", "check", "m", "--models-dir", models]) == 1


def test_unknown_model_is_an_error(tmp_path: Path) -> None:
    ct = tmp_path / "ct.nii.gz"
    Volume(synthetic_ct((4, 8, 8)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
           (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)).write(ct)
    assert main(["run", str(ct), "--out", str(tmp_path / "o"), "--model", "nope",
                 "--models-dir", str(tmp_path)]) == 1
