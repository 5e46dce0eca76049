"""Run nnunetv2's own predictor on a model folder and an image; used by the equivalence tests.

Runs in a separate interpreter that has nnunetv2 installed (it pins a torch build the node does not
use), e.g. ``python3 -m venv /tmp/nnunet-venv && /tmp/nnunet-venv/bin/pip install nnunetv2``, then
``NNUNET_REFERENCE_PYTHON=/tmp/nnunet-venv/bin/python pytest tests -k nnunet``.

Usage: python nnunet_reference.py MODEL_FOLDER IMAGE.npy SPACING_Z,Y,X OUT.npy STEP MIRROR(0|1) [FOLDS]
IMAGE.npy is (z, y, x) float32; OUT.npy receives nnU-Net's label map (z, y, x).
"""

import sys
import time

import numpy as np
import torch


def main() -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    folder, image_path, spacing, out, step, mirror = sys.argv[1:7]
    folds = tuple(sys.argv[7].split(",")) if len(sys.argv) > 7 else None
    torch.set_num_threads(max(1, torch.get_num_threads()))
    predictor = nnUNetPredictor(tile_step_size=float(step), use_gaussian=True, use_mirroring=mirror == "1",
                                perform_everything_on_device=torch.cuda.is_available(),
                                device=torch.device("cuda" if torch.cuda.is_available() else "cpu"),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(folder, use_folds=folds, checkpoint_name="checkpoint_final.pth")
    image = np.load(image_path)[None].astype(np.float32)
    props = {"spacing": [float(s) for s in spacing.split(",")]}
    t0 = time.perf_counter()
    seg = predictor.predict_single_npy_array(image, props, None, None, False)
    sys.stderr.write(f"nnunet_reference_seconds {time.perf_counter() - t0:.3f}\n")
    np.save(out, np.asarray(seg))


if __name__ == "__main__":
    main()
