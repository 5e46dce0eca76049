"""Import an nnU-Net folder, check it, run it as a registered model (one and several parts)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from segmenter.core.errors import ModelError
from segmenter.core.volume import Volume
from segmenter.models.manifest import parse_manifest, read_manifest, verify_weights
from segmenter.nnunet.engine import (
    EngineOptions,
    NnUNetEngine,
    load_checkpoint,
    merge_parts,
)
from segmenter.nnunet.importer import import_nnunet, map_label_names
from tests.nnunet_fixtures import ModelSpec, make_model_folder, synthetic_ct


def _rename_labels(folder: Path, names: list[str]) -> None:
    ds = json.loads((folder / "dataset.json").read_text())
    ds["labels"] = {"background": 0, **{n: i + 1 for i, n in enumerate(names)}}
    (folder / "dataset.json").write_text(json.dumps(ds))


@pytest.fixture()
def ct() -> Volume:
    return Volume(synthetic_ct((20, 40, 36), seed=2), (1.2, 1.2, 2.0), (0.0, 0.0, 0.0),
                  (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def test_import_writes_manifest_with_labels_and_checksums(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "src", ModelSpec("imp", n_classes=4, folds=(0, 1)))
    _rename_labels(folder, ["spleen", "kidney_right", "no_such_organ"])
    manifest = import_nnunet(folder, "abd", tmp_path / "models", version="2.0", tile_step=0.8, mirroring=False)
    again = read_manifest(tmp_path / "models" / "abd")
    assert again.to_json() == manifest.to_json()
    part = again.parts[0]
    assert part.labels == {1: "Spleen", 2: "Kidney_R", 3: None}
    assert part.folds == ("0", "1") and part.configuration == "3d_fullres"
    assert set(part.sha256) == {"fold_0/checkpoint_final.pth", "fold_1/checkpoint_final.pth"}
    verify_weights(again, part)


def test_checksum_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "src", ModelSpec("sum"))
    import_nnunet(folder, "m", tmp_path / "models")
    with (folder / "fold_0" / "checkpoint_final.pth").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="checksum mismatch"):
        NnUNetEngine(read_manifest(tmp_path / "models" / "m"), EngineOptions(device="cpu"))


def test_missing_checksum_is_refused(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "src", ModelSpec("nosum"))
    raw = {"id": "x", "kind": "nnunet_v2", "parts": [{"folder": str(folder), "configuration": "3d_fullres",
                                                      "folds": ["0"]}]}
    with pytest.raises(ModelError, match="no SHA-256"):
        NnUNetEngine(parse_manifest(raw), EngineOptions(device="cpu"))


class Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("code ran",))


def test_checkpoint_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"network_weights": {"w": torch.zeros(1)}, "payload": Evil()}, path)
    with pytest.raises(ModelError, match="weights_only"):
        load_checkpoint(path)


def test_plain_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelError):
        load_checkpoint(path)


def test_nnunet_checkpoint_loads_weights_only(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path, ModelSpec("wo", mirror_axes=(0, 1, 2)))
    ck = load_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    assert ck.mirror_axes == (0, 1, 2) and ck.configuration == "3d_fullres"


@pytest.mark.parametrize("bad,match", [
    ({"kind": "onnx"}, "unknown kind"),
    ({"merge": "vote"}, "unknown merge rule"),
    ({"parts": []}, "at least one part"),
    ({"parts": [{"folder": "f", "configuration": "c", "folds": ["0"], "labels": {"1": "Not_A_Structure"}}]},
     "not a catalogue structure"),
    ({"parts": [{"folder": "f", "configuration": "c", "folds": []}]}, "folds"),
    ({"parts": [{"folder": "f", "configuration": "c", "folds": ["0"], "tile_step": 2}]}, "tile_step"),
])
def test_manifest_errors(bad: dict[str, object], match: str) -> None:
    raw: dict[str, object] = {"id": "m", "kind": "nnunet_v2",
                              "parts": [{"folder": "f", "configuration": "c", "folds": ["0"]}]}
    raw.update(bad)
    with pytest.raises(ModelError, match=match):
        parse_manifest(raw)


def test_engine_segments_a_volume(tmp_path: Path, ct: Volume) -> None:
    folder = make_model_folder(tmp_path / "src", ModelSpec("eng", n_classes=4, patch=(16, 32, 32)))
    _rename_labels(folder, ["liver", "spleen", "stomach"])
    manifest = import_nnunet(folder, "abd", tmp_path / "models", version="3")
    result = NnUNetEngine(manifest, EngineOptions(device="cpu", threads=1)).segment(ct)
    assert result.model_id == "abd" and result.model_version == "3"
    assert result.labels.shape == ct.shape and result.labels.spacing == ct.spacing
    assert [s.name for s in result.structures] == ["Liver", "Spleen", "Stomach"]
    assert set(np.unique(result.labels.array)) <= {0, 1, 2, 3}


def test_multi_part_model_is_one_model(tmp_path: Path, ct: Volume) -> None:
    a = make_model_folder(tmp_path / "src" / "p1", ModelSpec("p1", n_classes=3, seed=1))
    b = make_model_folder(tmp_path / "src" / "p2", ModelSpec("p2", n_classes=3, seed=2))
    _rename_labels(a, ["liver", "spleen"])
    _rename_labels(b, ["kidney_left", "liver"])
    manifest = import_nnunet(tmp_path / "src", "total", tmp_path / "models")
    assert len(manifest.parts) == 2 and manifest.structures() == ["Liver", "Spleen", "Kidney_L"]
    result = NnUNetEngine(manifest, EngineOptions(device="cpu")).segment(ct)
    assert [s.name for s in result.structures] == ["Liver", "Spleen", "Kidney_L"]


def test_merge_rules() -> None:
    first = np.array([[1, 2, 0, 0]])
    second = np.array([[2, 0, 1, 0]])
    maps = [(first, {1: "Liver", 2: "Spleen"}), (second, {1: "Kidney_L", 2: "Liver"})]
    last, structures = merge_parts(maps, "last_wins")
    assert [(s.label, s.name) for s in structures] == [(1, "Liver"), (2, "Spleen"), (3, "Kidney_L")]
    assert last.tolist() == [[1, 2, 3, 0]]
    first_wins, _ = merge_parts([(first, {1: "Liver", 2: "Spleen"}), (np.array([[1, 1, 1, 0]]), {1: "Kidney_L"})],
                                "first_wins")
    assert first_wins.tolist() == [[1, 2, 3, 0]]


def test_label_names_map_to_catalogue() -> None:
    assert map_label_names({0: "background", 1: "kidney_left", 2: "Liver", 3: "lung", 4: "spinal_cord"},
                           {3: "Lung_L"}) == {1: "Kidney_L", 2: "Liver", 3: "Lung_L", 4: "SpinalCord"}


def test_not_an_nnunet_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no nnU-Net"):
        import_nnunet(tmp_path, "x", tmp_path / "models")


def test_unknown_model_steps_are_refused_at_load(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "src", ModelSpec("steps"))
    manifest = import_nnunet(folder, "m", tmp_path / "models")
    raw = manifest.to_json()
    raw["pre"] = [{"step": "cads_reorient"}]
    with pytest.raises(ValueError, match="unknown pre step 'cads_reorient'"):
        parse_manifest(raw, tmp_path / "models" / "m")


def test_registry_reloads_a_model_whose_manifest_changed(tmp_path: Path) -> None:
    """A long-running worker picks up a new version written into the same folder (re-import, add-head)."""
    import os

    from segmenter.registry import get_engine

    folder = make_model_folder(tmp_path / "raw", ModelSpec("Reload", n_classes=3))
    models = tmp_path / "models"
    import_nnunet(folder, "reload", models, version="1")
    first = get_engine("reload", models, "cpu")
    assert get_engine("reload", models, "cpu") is first  # kept warm
    import_nnunet(folder, "reload", models, version="2")
    manifest = models / "reload" / "manifest.json"
    stat = manifest.stat()
    os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # coarse file-system clocks
    second = get_engine("reload", models, "cpu")
    assert second is not first and second.version == "2"
