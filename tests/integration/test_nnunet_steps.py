"""A CADS-shaped model through the engine: pre steps, a part cropped around another part's
structure and pasted back, post steps, result on the input's grid."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segmenter.core.volume import Volume
from segmenter.models.manifest import Manifest, parse_manifest
from segmenter.nnunet.engine import EngineOptions, NnUNetEngine
from segmenter.nnunet.importer import import_nnunet
from tests.nnunet_fixtures import ModelSpec, make_model_folder, synthetic_ct


def _oblique() -> tuple[float, ...]:
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.0, 1.0, -1.0])  # feet-first, rotated
    return tuple(float(v) for v in rot.ravel())


def _two_parts(tmp_path: Path) -> dict[str, Any]:
    for name, labels, seed in (("p1", ["liver", "brain"], 1), ("p2", ["brainstem"], 2)):
        folder = make_model_folder(tmp_path / "src" / name, ModelSpec(name, n_classes=len(labels) + 1, seed=seed))
        ds = json.loads((folder / "dataset.json").read_text())
        ds["labels"] = {"background": 0, **{n: i + 1 for i, n in enumerate(labels)}}
        (folder / "dataset.json").write_text(json.dumps(ds))
    raw = import_nnunet(tmp_path / "src", "cads", tmp_path / "models").to_json()
    assert [sorted(filter(None, p["labels"].values())) for p in raw["parts"]] == [["Brain", "Liver"], ["Brainstem"]]
    raw["parts"][0]["name"], raw["parts"][1]["name"] = "cns", "head"
    return raw


class _Constant:
    """Stands in for a loaded part: labels every voxel it is given 1, and records the input's shape."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, ...]] = []
        self.dataset = type("D", (), {"labels": {0: "background", 1: "brainstem"}})()

    def predict(self, image: np.ndarray, *_: Any) -> np.ndarray:
        self.seen.append(tuple(image.shape))
        return np.ones(image.shape, dtype=np.uint8)


@pytest.mark.parametrize("run_on", ["crop", "full"])
def test_crop_runs_inside_the_box_and_pastes_back(tmp_path: Path, run_on: str) -> None:
    raw = _two_parts(tmp_path)
    raw["parts"][1]["crop"] = {"part": "cns", "label": 2, "half_size_mm": [6, 9, 12], "run_on": run_on}
    engine = NnUNetEngine(parse_manifest(raw, tmp_path / "models" / "cads"), EngineOptions(device="cpu"))
    stub = _Constant()
    engine.parts[1] = stub  # type: ignore[assignment]
    work = Volume(np.zeros((30, 40, 50), np.float32), (1.5, 1.5, 1.5), (0.0, 0.0, 0.0),
                  (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    cns = np.zeros(work.shape, np.uint8)
    cns[10:13, 20:23, 30:33] = 2  # "brain" centred at (k, j, i) = (11, 21, 31)
    maps = {"cns": (cns, engine.manifest.parts[0].labels)}
    labels = engine._run_part(stub, engine.manifest.parts[1], work, maps)  # type: ignore[arg-type]
    box = (slice(3, 19), slice(15, 27), slice(27, 35))  # half sizes 8, 6, 4 voxels along k, j, i
    expected = np.zeros(work.shape, bool)
    expected[box] = True
    assert np.array_equal(labels == 1, expected)
    assert stub.seen == ([(16, 12, 8)] if run_on == "crop" else [work.shape])
    stub.seen.clear()
    empty = engine._run_part(stub, engine.manifest.parts[1], work, {"cns": (np.zeros_like(cns), {2: "Brain"})})
    assert not empty.any() and stub.seen == []  # nothing to crop around: the part does not run


def test_cads_shaped_model_returns_on_the_input_grid(tmp_path: Path) -> None:
    """Feet-first, rotated, anisotropic CT through reorient + 1.5 mm resampling, a cropped part and
    the clean-up; then the same without the clean-up: it may only have removed voxels."""
    raw = _two_parts(tmp_path)
    raw["pre"] = [{"step": "reorient", "to": "RAS"}, {"step": "resample", "spacing_mm": 1.5, "integer": True}]
    raw["parts"][1]["crop"] = {"part": "cns", "structure": "Brain", "half_size_mm": 30}
    ct = Volume(synthetic_ct((24, 44, 40), seed=3), (0.9, 1.1, 2.0), (-20.0, 15.0, 100.0), _oblique())
    results = {}
    for key, post in (("bare", []), ("clean", [{"step": "remove_fragments", "min_voxels": {"*": 5}},
                                               {"step": "keep_largest_component", "structures": ["Liver"]}])):
        manifest: Manifest = parse_manifest({**raw, "post": post}, tmp_path / "models" / "cads")
        results[key] = NnUNetEngine(manifest, EngineOptions(device="cpu", threads=1)).segment(ct)
    out = results["clean"].labels
    assert out.shape == ct.shape and out.spacing == ct.spacing and out.direction == ct.direction
    assert out.origin == ct.origin
    assert [s.name for s in results["clean"].structures] == ["Liver", "Brain", "Brainstem"]
    bare, clean = results["bare"].labels.array, out.array
    assert np.all((clean == bare) | (clean == 0))  # clean-up only clears voxels
    assert 0 < int((clean > 0).sum()) < int((bare > 0).sum())  # random weights leave fragments to clear
    again = NnUNetEngine(parse_manifest({**raw, "post": []}, tmp_path / "models" / "cads"),
                         EngineOptions(device="cpu", threads=1)).segment(ct)
    assert np.array_equal(again.labels.array, bare)  # deterministic
