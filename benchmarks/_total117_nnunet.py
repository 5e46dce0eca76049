"""nnU-Net's side of benchmarks/total117.py: the parts through nnUNetPredictor, merged as TotalSegmentator merges.

Runs in an interpreter with nnunetv2 (``.venv-reference``). Reads the CT series with SimpleITK
(nnU-Net's own SimpleITKIO reader), runs ``predict_single_npy_array`` for each part folder in
order (nnU-Net's preprocessing, sliding window and export), and merges the part label maps with
TotalSegmentator's lookup table and ``np.copyto(combined, mapped, where=mapped != 0)`` (its
``nnunet.py``: a later part's foreground overwrites). Prints one JSON line; saves the merged map.

    PY _total117_nnunet.py CT_DIR OUT.npy STEP MIRROR(0|1) DEVICE PART_FOLDER...
"""

import json
import resource
import sys
import time

import numpy as np
import SimpleITK as sitk
import torch


def main() -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    ct_dir, out, step, mirror, device, *parts = sys.argv[1:]
    dev = torch.device(device)
    t0 = time.perf_counter()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(ct_dir))
    image = reader.Execute()
    data = sitk.GetArrayFromImage(image).astype(np.float32)[None]
    props = {"spacing": [float(s) for s in reversed(image.GetSpacing())]}
    times: dict[str, float] = {"read": time.perf_counter() - t0}
    combined = np.zeros(data.shape[1:], dtype=np.uint8)
    names: dict[int, str] = {}
    merge_s = 0.0
    for i, folder in enumerate(parts):
        t0 = time.perf_counter()
        predictor = nnUNetPredictor(tile_step_size=float(step), use_gaussian=True, use_mirroring=mirror == "1",
                                    perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(folder, use_folds=("0",),
                                                       checkpoint_name="checkpoint_final.pth")
        t1 = time.perf_counter()
        seg = np.asarray(predictor.predict_single_npy_array(data, props, None, None, False))
        t2 = time.perf_counter()
        with open(f"{folder}/dataset.json") as fh:
            part_labels = {int(v): k for k, v in json.load(fh)["labels"].items() if int(v) > 0}
        lut = np.zeros(max(part_labels) + 1, dtype=np.uint8)  # TotalSegmentator's per-part lookup table
        for label, name in sorted(part_labels.items()):
            names.setdefault(len(names) + 1, name)
            lut[label] = next(k for k, v in names.items() if v == name)
        mapped = lut[seg]
        np.copyto(combined, mapped, where=mapped != 0)
        merge_s += time.perf_counter() - t2
        times[f"part {i} load"] = t1 - t0
        times[f"part {i}"] = t2 - t0
        del predictor, seg, mapped
    times["merge"] = merge_s
    np.save(out, combined)
    with open(out.replace(".npy", ".json"), "w") as fh:
        json.dump({str(k): v for k, v in names.items()}, fh)
    print(json.dumps({**times, "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


if __name__ == "__main__":
    main()
