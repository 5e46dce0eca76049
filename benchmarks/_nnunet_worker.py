"""nnU-Net v2's own inference, stage by stage, for benchmarks/nnunet_inference.py.

Runs in an interpreter with nnunetv2 installed. The stages are the ones predict_single_npy_array
runs: DefaultPreprocessor.run_case_npy, predict_logits_from_preprocessed_data,
convert_predicted_logits_to_segmentation_with_correct_shape. Prints one JSON line.
"""

import json
import resource
import sys
import time

import numpy as np
import torch


def main() -> None:
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape,
    )
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    folder, image_path, spacing, out, step, mirror, device = sys.argv[1:8]
    dev = torch.device(device)
    t0 = time.perf_counter()
    predictor = nnUNetPredictor(tile_step_size=float(step), use_gaussian=True, use_mirroring=mirror == "1",
                                perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(folder, use_folds=("0",), checkpoint_name="checkpoint_final.pth")
    image = np.load(image_path)[None].astype(np.float32)
    load = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    props = {"spacing": [float(s) for s in spacing.split(",")]}
    t0, c0 = time.perf_counter(), time.process_time()
    pre = predictor.configuration_manager.preprocessor_class(verbose=False)
    data, _, props = pre.run_case_npy(image, None, props, predictor.plans_manager, predictor.configuration_manager,
                                      predictor.dataset_json)
    data = torch.from_numpy(data).to(dtype=torch.float32, memory_format=torch.contiguous_format)
    t1 = time.perf_counter()
    logits = predictor.predict_logits_from_preprocessed_data(data).cpu()
    t2 = time.perf_counter()
    seg = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager, props)
    t3 = time.perf_counter()
    np.save(out, np.asarray(seg))
    res = {"load": load, "preprocess": t1 - t0, "predict": t2 - t1, "export": t3 - t2, "total": t3 - t0,
           "cpu_s": time.process_time() - c0, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if dev.type == "cuda":
        res["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(res))


if __name__ == "__main__":
    main()
