"""FastSegmentator's inference, stage by stage, for benchmarks/nnunet_inference.py.

Runs in an interpreter with fastsegmentator installed (``scripts/reference_env.sh``). Drives its
predictor through its own entry point, ``predictor.inference(image, properties, use_softmax)``,
and times the stages by wrapping the calls that method makes (nothing of theirs is copied here):

- preprocess: ``predictor.preprocess`` (crop, normalise, resample to the plans' spacing),
- predict: from there until the export starts (padding, ``_internal_predict_sliding_window_return_logits``,
  removing the padding),
- export: ``nnunet_infer_nii.convert_predicted_logits_to_segmentation_with_correct_shape``
  (logits back to the input grid, argmax, undo the crop),
- total: the whole ``inference`` call.

Arguments: model folder, CT .npy (z, y, x), spacing "z,y,x", output .npy, tile step, mirroring
(1/0), device, then optionally ``predictor=fast|simple``, ``seg=argmax|threshold`` and
``cpu_bbox_fix=1``.

``predictor=fast`` (default) is ``totalseg_infer.FastPredictor``, the predictor of FastSegmentator's
TotalSegmentator path: order-3 cubic B-spline input resampling in torch (nnU-Net's scipy order 3),
on whatever device the tensor is on. ``predictor=simple`` is ``nnunet_infer_nii.SimplePredictor``
(its plain nnU-Net CLI): its preprocessor's trilinear resampling moves the image to "cuda"
unconditionally, so it only runs where CUDA is available.

``seg=argmax`` (default) passes ``use_softmax=True``: softmax then argmax, nnU-Net's own rule, so
the three label maps are comparable. ``seg=threshold`` is FastSegmentator's default for most
TotalSegmentator tasks (class of the largest logit where that logit is >= 0.5, else background).

``cpu_bbox_fix=1``: FastSegmentator 0.1.1 cannot preprocess on the CPU. Its ``crop_to_nonzero``
hands the (torch, CPU) non-zero mask to acvl_utils' numpy ``get_bbox_from_mask``, whose
``np.any(mask[z])`` calls ``Tensor.any(axis=None, out=None)`` and fails with "TypeError: any()
received an invalid combination of arguments - got (out=NoneType, axis=NoneType, )" (torch 2.14.1,
numpy 2.4.6). With this option the worker wraps that one function so that it gets the mask as a
numpy array: the same function on the same values, the same bounding box; nothing else changes.
It is off by default so that the failure shows; on CUDA their path uses its own CuPy bounding box
and the option changes nothing.

Prints one JSON line with the keys of ``_nnunet_worker.py`` (and a few more). On CUDA
``gpu_peak_gb`` is torch's allocator only: the CuPy memory pool their crop uses for the non-zero
mask is not in it.
"""

import json
import resource
import sys
import time

import numpy as np
import torch


def _sync(dev: torch.device) -> None:
    # CUDA kernels run asynchronously: stage boundaries must wait for them to be meaningful
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main() -> None:
    folder, image_path, spacing, out, step, mirror, device = sys.argv[1:8]
    opts = dict(a.split("=", 1) for a in sys.argv[8:])
    kind, seg_rule = opts.get("predictor", "fast"), opts.get("seg", "argmax")
    bbox_fix = opts.get("cpu_bbox_fix", "0") == "1"
    if kind not in ("fast", "simple") or seg_rule not in ("argmax", "threshold") or not opts.keys() <= {
            "predictor", "seg", "cpu_bbox_fix"}:
        raise SystemExit(f"bad options {opts}: predictor=fast|simple, seg=argmax|threshold, cpu_bbox_fix=0|1")
    import fastsegmentator
    from fastsegmentator import nnunet_infer_nii
    if bbox_fix:
        from fastsegmentator._vendor.nnunetv2.preprocessing.cropping import cropping
        bbox_of = cropping.get_bbox_from_mask_cpu
        cropping.get_bbox_from_mask_cpu = lambda mask: bbox_of(np.asarray(mask))
    if kind == "fast":
        # importing totalseg_infer also registers its trainer stubs with nnunet_infer_nii
        from fastsegmentator.totalseg_infer import FastPredictor as Predictor
    else:
        Predictor = nnunet_infer_nii.SimplePredictor

    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", 0)  # as their CLI does: empty_cache and friends want an index
    t0 = time.perf_counter()
    predictor = Predictor(tile_step_size=float(step), use_gaussian=True, use_mirroring=mirror == "1",
                          perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                          verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(folder, use_folds=("0",), checkpoint_name="checkpoint_final.pth")
    predictor.network.to(dev)
    image = np.load(image_path)[None].astype(np.float32)
    load = time.perf_counter() - t0

    marks: dict[str, float] = {}

    def timed(fn, start: str, end: str):  # type: ignore[no-untyped-def]
        def wrapper(*a, **k):  # type: ignore[no-untyped-def]
            _sync(dev)
            marks[start] = time.perf_counter()
            r = fn(*a, **k)
            _sync(dev)
            marks[end] = time.perf_counter()
            return r
        return wrapper

    # instance attribute shadows the method; the module global is what inference() looks up
    predictor.preprocess = timed(predictor.preprocess, "pre0", "pre1")
    predictor._internal_predict_sliding_window_return_logits = timed(
        predictor._internal_predict_sliding_window_return_logits, "sw0", "sw1")
    nnunet_infer_nii.convert_predicted_logits_to_segmentation_with_correct_shape = timed(
        nnunet_infer_nii.convert_predicted_logits_to_segmentation_with_correct_shape, "exp0", "exp1")

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # their preprocessor reads "spacing" and writes the crop/shape keys the export reads back;
    # no "_can_fwd_perm": the array is already in the orientation the model expects
    props: dict[str, object] = {"spacing": [float(s) for s in spacing.split(",")]}
    t0, c0 = time.perf_counter(), time.process_time()
    seg = predictor.inference(image, props, use_softmax=seg_rule == "argmax")
    _sync(dev)
    t3 = time.perf_counter()
    cpu = time.process_time() - c0
    missing = {"pre0", "pre1", "sw0", "sw1", "exp0", "exp1"} - marks.keys()
    if missing:
        raise SystemExit(f"fastsegmentator {fastsegmentator.__version__}: inference() did not go through "
                         f"the wrapped stages ({sorted(missing)} not seen); the stage split needs updating")
    np.save(out, np.asarray(seg))
    res = {"load": load, "preprocess": marks["pre1"] - t0, "predict": marks["exp0"] - marks["pre1"],
           "sliding_window": marks["sw1"] - marks["sw0"], "export": marks["exp1"] - marks["exp0"],
           "total": t3 - t0, "cpu_s": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "fastsegmentator": fastsegmentator.__version__, "predictor": kind, "seg": seg_rule, "cpu_bbox_fix": bbox_fix,
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if dev.type == "cuda":
        res["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(res))


if __name__ == "__main__":
    main()
