"""Our nnU-Net inference vs nnunetv2's own predictor on generated model folders.

nnunetv2 needs a torch build the node does not use, so it lives in a venv of its own, a test-only
dependency. Its label maps for the cases in ``tests/nnunet_fixtures.CASES`` are also stored in
``tests/data/nnunet_reference`` (regenerate with ``tests/tools/make_nnunet_goldens.py``), so the
comparison runs without it too; with ``NNUNET_REFERENCE_PYTHON`` pointing at an interpreter that
has nnunetv2 it also runs live. ``scripts/test.sh`` (the CI's command) builds that interpreter
with ``scripts/reference_env.sh`` and requires it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segmenter.nnunet.engine import NnUNetPartModel
from tests.nnunet_fixtures import CASES, Case, make_model_folder, synthetic_ct

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "nnunet_reference"
MIN_AGREEMENT = 0.999
MIN_SLICE_AGREEMENT = 0.99  # on every slice along each axis: differences gather at the volume's edges


def _assert_agrees(name: str, ours: np.ndarray, ref: np.ndarray) -> None:
    """>= 99.9 % of all voxels and >= 99 % of every single slice, in each of the three directions
    (axial slices, and the rows and columns where tiles' rims meet the image border)."""
    assert ours.shape == ref.shape
    same = ours == ref
    agreement = float(same.mean())
    assert agreement >= MIN_AGREEMENT, f"{name}: only {agreement:.5f} of voxels agree with nnU-Net"
    for axis, direction in enumerate(("slice", "row", "column")):
        per_slice = same.mean(axis=tuple(a for a in range(3) if a != axis))
        worst = int(per_slice.argmin())
        assert per_slice[worst] >= MIN_SLICE_AGREEMENT, (
            f"{name}: {direction} {worst} of {len(per_slice)} agrees with nnU-Net on only "
            f"{per_slice[worst]:.4f} of its voxels ({int((~same).sum())} voxels differ in all)")


def _ours(case: Case, folder: Path, image: np.ndarray, preprocess_on_device: bool | None = None) -> np.ndarray:
    model = NnUNetPartModel.load(folder, None, [str(f) for f in case.spec.folds], tile_step=case.tile_step,
                                 mirroring=case.mirroring)
    model.preprocess_on_device = preprocess_on_device
    return model.predict(image, case.image_spacing_zyx, torch.device("cpu"))


@pytest.mark.parametrize("preprocessing", ["numpy", "torch"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_nnunet_golden(name: str, preprocessing: str, tmp_path: Path) -> None:
    """Both preprocessing paths: numpy (the CPU's) and torch (the GPU's, here run on the CPU)."""
    case = CASES[name]
    folder = make_model_folder(tmp_path, case.spec)
    image = synthetic_ct(case.image_shape, seed=1, zero_border=case.zero_border)
    ours = _ours(case, folder, image, preprocess_on_device=preprocessing == "torch")
    ref = np.load(GOLDEN / f"{name}.npz")["labels"]
    assert ours.shape == ref.shape == case.image_shape
    assert len(np.unique(ref)) >= 2, "a degenerate reference would prove nothing"
    _assert_agrees(name, ours, ref)


def _reference_python() -> str:
    """nnunetv2's interpreter; ``scripts/test.sh`` builds it and sets NNUNET_REFERENCE_REQUIRED, so
    there a missing one fails instead of skipping."""
    python = os.environ.get("NNUNET_REFERENCE_PYTHON", "")
    required = bool(os.environ.get("NNUNET_REFERENCE_REQUIRED"))
    if not python or not Path(python).exists():
        message = f"no nnunetv2 interpreter (NNUNET_REFERENCE_PYTHON={python!r})"
        if required:
            pytest.fail(message + "; scripts/reference_env.sh builds one")
        pytest.skip(message)
    return python


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_nnunet_live(name: str, tmp_path: Path) -> None:
    python = _reference_python()
    sys.path.insert(0, str(ROOT / "tests" / "tools"))
    from make_nnunet_goldens import reference

    case = CASES[name]
    folder = make_model_folder(tmp_path, case.spec)
    image = synthetic_ct(case.image_shape, seed=1, zero_border=case.zero_border)
    ref = reference(python, folder, image, case.image_spacing_zyx, case.tile_step,
                    case.mirroring, tmp_path)
    ours = _ours(case, folder, image)
    assert ours.shape == ref.shape == case.image_shape
    _assert_agrees(name, ours, ref)


def test_deterministic(tmp_path: Path) -> None:
    case = CASES["iso3d"]
    folder = make_model_folder(tmp_path, case.spec)
    image = synthetic_ct(case.image_shape, seed=1)
    assert np.array_equal(_ours(case, folder, image), _ours(case, folder, image))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(tmp_path: Path) -> None:
    case = CASES["aniso3d"]
    folder = make_model_folder(tmp_path, case.spec)
    image = synthetic_ct(case.image_shape, seed=1)
    model = NnUNetPartModel.load(folder, None, ["0"], mirroring=True, batch_size=4)
    gpu = model.predict(image, case.image_spacing_zyx, torch.device("cuda"))
    cpu = model.predict(image, case.image_spacing_zyx, torch.device("cpu"))
    assert float((gpu == cpu).mean()) >= MIN_AGREEMENT
    # on CUDA the engine preprocesses there; the tensor it gets equals the CPU's numpy result
    on_gpu = model._preprocess(image[None], case.image_spacing_zyx, torch.device("cuda"))
    on_cpu = model._preprocess(image[None], case.image_spacing_zyx, torch.device("cpu"))
    assert isinstance(on_gpu.data, torch.Tensor) and on_gpu.data.device.type == "cuda"
    np.testing.assert_allclose(on_gpu.data.cpu().numpy(), on_cpu.data, rtol=0, atol=2e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_deterministic(tmp_path: Path) -> None:
    """Same input, same device, same labels: batched tiles, autocast and the device preprocessing
    included."""
    case = CASES["many"]
    folder = make_model_folder(tmp_path, case.spec)
    image = synthetic_ct(case.image_shape, seed=1)
    model = NnUNetPartModel.load(folder, None, ["0"], mirroring=True, batch_size=4)
    runs = [model.predict(image, case.image_spacing_zyx, torch.device("cuda")) for _ in range(3)]
    assert all(np.array_equal(runs[0], r) for r in runs[1:])


def test_memory_bounded_export(tmp_path: Path) -> None:
    """60 classes exported to 48x256x256: full float logits there would be 755 MB; with a 16 MB chunk
    budget the whole export must add far less than that to the process's peak RSS."""
    code = f"""
import resource, sys, numpy as np, torch
sys.path.insert(0, {str(ROOT)!r})
from segmenter.nnunet.export import logits_to_labels
from segmenter.nnunet.plans import Resampling
torch.manual_seed(0)
logits = torch.randn(60, 24, 128, 128).half()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
labels = logits_to_labels(logits, (48, 256, 256), Resampling(1, 0, None), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0),
                          chunk_bytes=16 * 2**20)
grow = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
assert labels.shape == (48, 256, 256) and labels.dtype == np.uint8
print(grow)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grow_mb = float(out.stdout.strip())
    assert grow_mb < 200, f"export grew peak RSS by {grow_mb:.0f} MB"


@pytest.mark.parametrize("name", ["iso3d", "aniso3d"])
def test_streamed_equals_whole_image_path(name: str, tmp_path: Path) -> None:
    """Exporting slab by slab as the sliding window finishes them changes no voxel."""
    case = CASES[name]
    folder = make_model_folder(tmp_path, case.spec)
    image = synthetic_ct(case.image_shape, seed=1, zero_border=case.zero_border)
    model = NnUNetPartModel.load(folder, None, [str(f) for f in case.spec.folds], tile_step=case.tile_step,
                                 mirroring=case.mirroring)
    model.stream = True
    streamed = model.predict(image, case.image_spacing_zyx, torch.device("cpu"))
    model.stream = False
    whole = model.predict(image, case.image_spacing_zyx, torch.device("cpu"))
    assert np.array_equal(streamed, whole)
