"""The faster CPU settings as manifest options: tile step and mirroring change what they should,
are validated, and the fast TotalSegmentator models (3 mm, 6 mm) import as models of their own.

The tile and mirror counts are the calls of the real network's encoder, seen by a forward hook."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segmenter.core.errors import ModelError
from segmenter.core.volume import Volume
from segmenter.models.manifest import parse_manifest, read_manifest
from segmenter.nnunet.arch import UNet
from segmenter.nnunet.engine import EngineOptions, NnUNetEngine
from segmenter.nnunet.importer import import_nnunet
from tests.nnunet_fixtures import ModelSpec, make_model_folder
from tests.totalseg_model import PLANS, make_total_fast, total_names

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1.5 mm plans, patch 16x32x32, a checkpoint that allows mirroring over all three axes."""
    spec = ModelSpec("fastopts", n_classes=3, mirror_axes=(0, 1, 2), label_names=("liver", "spleen"))
    return make_model_folder(tmp_path_factory.mktemp("fast"), spec)


def _ct() -> Volume:
    """40x80x80 voxels at the plans' 1.5 mm and no zero voxel: nnU-Net neither crops nor resamples,
    so the sliding window covers exactly this grid."""
    rng = np.random.default_rng(1)
    return Volume((rng.normal(0, 100, (40, 80, 80)) + 50).astype(np.float32), (1.5, 1.5, 1.5), (0.0, 0.0, 0.0),
                  IDENTITY)


def _encoder_calls(manifest_dir: Path, **options: object) -> tuple[int, np.ndarray]:
    engine = NnUNetEngine(read_manifest(manifest_dir), EngineOptions(device="cpu", threads=1, **options))  # type: ignore[arg-type]
    calls = []
    for net in engine.parts[0].networks:
        assert isinstance(net, UNet)
        net.encoder.register_forward_hook(lambda _m, args, _out: calls.append(int(args[0].shape[0])))
    labels = engine.segment(_ct()).labels.array
    return sum(calls), labels


@pytest.mark.parametrize("step,tiles", [
    (0.5, 4 * 4 * 4),  # per axis ceil((40 - 16) / 8) + 1 = 4 and ceil((80 - 32) / 16) + 1 = 4
    (0.8, 3 * 3 * 3),  # ceil(24 / 12.8) + 1 = 3 and ceil(48 / 25.6) + 1 = 3
])
def test_tile_step_sets_the_number_of_tiles(folder: Path, tmp_path: Path, step: float, tiles: int) -> None:
    import_nnunet(folder, "m", tmp_path, tile_step=step, mirroring=False)
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["parts"][0]["tile_step"] == step
    calls, _ = _encoder_calls(tmp_path / "m")
    assert calls == tiles


def test_mirroring_off_runs_no_mirrored_pass(folder: Path, tmp_path: Path) -> None:
    import_nnunet(folder, "on", tmp_path, tile_step=0.8, mirroring=True)
    import_nnunet(folder, "off", tmp_path, tile_step=0.8, mirroring=False)
    on, labels_on = _encoder_calls(tmp_path / "on")
    off, labels_off = _encoder_calls(tmp_path / "off")
    assert on == 8 * 27  # the tile itself and its 7 flips over 3 axes
    assert off == 27
    assert (labels_on != labels_off).any()  # the mirrored passes took part in the labels
    # an EngineOptions override wins over the manifest, both ways
    assert _encoder_calls(tmp_path / "on", mirroring=False)[0] == 27
    assert _encoder_calls(tmp_path / "off", mirroring=True)[0] == 8 * 27


def test_a_checkpoint_without_mirroring_axes_is_never_mirrored(tmp_path: Path) -> None:
    """TotalSegmentator's NoMirroring trainers allow no axes: mirroring on in the manifest is then a no-op."""
    spec = ModelSpec("nomirror", n_classes=3, mirror_axes=None, label_names=("liver", "spleen"))
    plain = make_model_folder(tmp_path / "src", spec)
    import_nnunet(plain, "m", tmp_path / "models", tile_step=0.8, mirroring=True)
    assert _encoder_calls(tmp_path / "models" / "m")[0] == 27


def test_import_cli_records_the_fast_options(folder: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "segmenter.cli", "models", "import", str(folder), "--id", "quick",
                           "--models-dir", str(tmp_path), "--tile-step", "0.8", "--no-mirroring"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    part = read_manifest(tmp_path / "quick").parts[0]
    assert (part.tile_step, part.mirroring) == (0.8, False)


@pytest.mark.parametrize("key,value", [
    ("tile_step", 0), ("tile_step", 1.2), ("tile_step", "0.8"), ("tile_step", True), ("tile_step", None),
    ("mirroring", "false"), ("mirroring", 0), ("mirroring", None),
])
def test_fast_options_are_validated(key: str, value: object) -> None:
    part: dict[str, object] = {"folder": "f", "configuration": "3d_fullres", "folds": ["0"], key: value}
    with pytest.raises(ModelError, match=key):
        parse_manifest({"id": "m", "kind": "nnunet_v2", "parts": [part]})


@pytest.mark.parametrize("resolution", ["3mm", "6mm"])
def test_fast_totalsegmentator_models_import_as_one_part_of_117_structures(tmp_path: Path, resolution: str) -> None:
    """``--fast`` (3 mm) and ``--fastest`` (6 mm) are separate nnU-Net models: they import like any."""
    fast = make_total_fast(tmp_path / "src", resolution)
    assert fast.name == "nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres"
    manifest = import_nnunet(fast.parent.parent, f"total-{resolution}", tmp_path / "models", tile_step=0.8,
                             mirroring=False)
    assert len(manifest.parts) == 1 and len(manifest.structures()) == 117
    assert len(json.loads((fast / "dataset.json").read_text())["labels"]) == 118
    assert [n for n in total_names()][:3] == ["spleen", "kidney_right", "kidney_left"]
    engine = NnUNetEngine(manifest, EngineOptions(device="cpu"))
    part = engine.parts[0]
    assert part.config.spacing == (PLANS[resolution].spacing,) * 3
    assert part.settings.mirror_axes is None and part.settings.tile_step == 0.8
    assert sum(p.numel() for p in part.networks[0].parameters()) > 10_000_000  # the real network's size
