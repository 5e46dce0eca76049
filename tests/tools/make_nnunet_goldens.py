"""Regenerate tests/data/nnunet_reference/*.npz: nnunetv2's label maps for tests/nnunet_fixtures.CASES.

    .venv/bin/python tests/tools/make_nnunet_goldens.py /tmp/nnunet-venv/bin/python [CASE ...]

The second interpreter must have nnunetv2 (see nnunet_reference.py). The model folders and images
are rebuilt from seeds in the tests, so only nnU-Net's outputs are stored (a few KB each). Naming
cases regenerates only those (all cases without names).
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.nnunet_fixtures import CASES, make_model_folder, synthetic_ct  # noqa: E402

OUT = ROOT / "tests" / "data" / "nnunet_reference"


def reference(python: str, folder: Path, image: np.ndarray, case_spacing: tuple[float, ...], step: float,
              mirroring: bool, work: Path) -> np.ndarray:
    np.save(work / "image.npy", image)
    cmd = [python, str(ROOT / "tests" / "tools" / "nnunet_reference.py"), str(folder), str(work / "image.npy"),
           ",".join(map(str, case_spacing)), str(work / "ref.npy"), str(step), "1" if mirroring else "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    return np.load(work / "ref.npy")


def main() -> None:
    python, names = sys.argv[1], sys.argv[2:] or list(CASES)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            case = CASES[name]
            work = Path(tmp) / name
            work.mkdir()
            folder = make_model_folder(work, case.spec)
            image = synthetic_ct(case.image_shape, seed=1, zero_border=case.zero_border)
            seg = reference(python, folder, image, case.image_spacing_zyx, case.tile_step, case.mirroring, work)
            np.savez_compressed(OUT / f"{name}.npz", labels=seg.astype(np.uint8))
            print(name, seg.shape, np.unique(seg))


if __name__ == "__main__":
    main()
