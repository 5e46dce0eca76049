"""Build nnU-Net v2 trained-model folders with random (seeded, numpy-generated) weights for tests.

The folders look like nnU-Net's own (``dataset.json``, ``plans.json``, ``fold_k/checkpoint_final.pth``
with the keys nnU-Net's trainer writes, numpy scalars in the logs and a ``torch.device`` in
``init_args``), so nnunetv2's predictor can run them too. Weights come from numpy's seeded
generator, so the same call builds the same model on any machine and torch version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segmenter.nnunet.arch import build_network


@dataclass(frozen=True)
class ModelSpec:
    name: str
    configuration: str = "3d_fullres"  # or "2d"
    spacing: tuple[float, ...] = (1.5, 1.5, 1.5)  # (z, y, x) as in the plans; 2 entries for 2d
    patch: tuple[int, ...] = (16, 32, 32)
    n_classes: int = 4  # incl. background
    features: tuple[int, ...] = (4, 8, 16)
    architecture: str = "PlainConvUNet"
    folds: tuple[int, ...] = (0,)
    mirror_axes: tuple[int, ...] | None = None
    seed: int = 0
    anisotropic_strides: bool = False  # first downsampling in-plane only (as nnU-Net plans anisotropic data)
    decoder_convs: int = 1  # convolutions per decoder stage (nnU-Net's own plans and TotalSegmentator: 2)
    dataset_name: str = ""  # the results folder's dataset name; default Dataset999_<name>
    label_names: tuple[str, ...] = ()  # foreground label names in id order; default organ_1..organ_<n-1>
    trainer: str = ""  # default nnUNetTrainer, or nnUNetTrainerNoMirroring without mirror axes
    # every kernel's taps equal (but the first stage's): an untrained network then labels regions, not
    # salt and pepper (its transposed convolutions' checkerboards); a convolution costs the same
    smooth_kernels: bool = False


def _arch_kwargs(spec: ModelSpec) -> dict[str, object]:
    nd = len(spec.patch)
    n = len(spec.features)
    strides = [[1] * nd] + [[2] * nd for _ in range(n - 1)]
    kernels = [[3] * nd for _ in range(n)]
    if spec.anisotropic_strides and nd == 3:
        strides[1] = [1, 2, 2]
        kernels[0] = [1, 3, 3]
    kw: dict[str, object] = {
        "n_stages": n, "features_per_stage": list(spec.features),
        "conv_op": f"torch.nn.modules.conv.Conv{nd}d", "kernel_sizes": kernels, "strides": strides,
        "n_conv_per_stage_decoder": [spec.decoder_convs] * (n - 1), "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{nd}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    if spec.architecture == "PlainConvUNet":
        kw["n_conv_per_stage"] = [2] * n
    else:
        kw["n_blocks_per_stage"] = [1] + [2] * (n - 1)
    return kw


def plans_for(spec: ModelSpec) -> dict[str, object]:
    cfg = {
        "data_identifier": f"nnUNetPlans_{spec.configuration}", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": list(spec.patch), "median_image_size_in_voxels": [64, 64, 64][:len(spec.patch)],
        "spacing": list(spec.spacing), "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": f"dynamic_network_architectures.architectures.unet.{spec.architecture}",
            "arch_kwargs": _arch_kwargs(spec),
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": True,
    }
    return {
        "dataset_name": spec.dataset_name or f"Dataset999_{spec.name}", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.5, 1.0, 1.0],
        "original_median_shape_after_transp": [64, 64, 64], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {spec.configuration: cfg},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 1500.0, "mean": 80.0, "median": 60.0, "min": -1000.0,
            "percentile_00_5": -900.0, "percentile_99_5": 1200.0, "std": 250.0}},
    }


def dataset_for(spec: ModelSpec) -> dict[str, object]:
    labels = {"background": 0}
    if spec.label_names:
        if len(spec.label_names) != spec.n_classes - 1:
            raise ValueError(f"{spec.name}: {len(spec.label_names)} label names for {spec.n_classes - 1} classes")
        labels.update({name: i for i, name in enumerate(spec.label_names, start=1)})
    else:
        labels.update({f"organ_{i}": i for i in range(1, spec.n_classes)})
    return {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 10, "file_ending": ".nii.gz"}


def random_weights(spec: ModelSpec, fold: int) -> dict[str, torch.Tensor]:
    cfg = plans_for(spec)["configurations"][spec.configuration]  # type: ignore[index]
    net = build_network(cfg["architecture"]["network_class_name"], cfg["architecture"]["arch_kwargs"], 1,
                        spec.n_classes)
    rng = np.random.default_rng([spec.seed, fold])
    out: dict[str, torch.Tensor] = {}
    for key, value in net.state_dict().items():
        if key in out:
            continue
        shape = tuple(value.shape)
        if key.endswith("weight") and len(shape) > 1:
            fan_in = int(np.prod(shape[1:]))
            arr = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif key.endswith("weight"):
            arr = 1.0 + 0.1 * rng.normal(size=shape)
        else:
            arr = 0.1 * rng.normal(size=shape)
        if spec.smooth_kernels and len(shape) > 3 and int(np.prod(shape[2:])) > 1:
            if "transpconvs" in key:
                arr = np.broadcast_to(arr.mean(axis=tuple(range(2, len(shape))), keepdims=True) * 2.0, shape)
            elif "encoder.stages.0." not in key:
                arr = np.broadcast_to(arr.mean(axis=tuple(range(2, len(shape))), keepdims=True) / 3.0, shape)
        out[key] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    # the library registers shared modules under several names; give duplicates the same tensor
    net.load_state_dict(out, strict=True)
    return dict(net.state_dict())  # shared modules keep sharing storage: saved once, as nnU-Net saves them


def make_model_folder(root: Path, spec: ModelSpec) -> Path:
    trainer = spec.trainer or ("nnUNetTrainer" if spec.mirror_axes is not None else "nnUNetTrainerNoMirroring")
    folder = root / (spec.dataset_name or f"Dataset999_{spec.name}") / f"{trainer}__nnUNetPlans__{spec.configuration}"
    folder.mkdir(parents=True, exist_ok=True)
    plans, dataset = plans_for(spec), dataset_for(spec)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    for fold in spec.folds:
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        checkpoint = {
            "network_weights": random_weights(spec, fold),
            "optimizer_state": {}, "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.5)], "ema_fg_dice": [np.float64(0.4)],
                        "epoch_start_timestamps": [1.0]},
            "_best_ema": np.float64(0.4), "current_epoch": 1,
            "init_args": {"plans": plans, "configuration": spec.configuration, "fold": fold,
                          "dataset_json": dataset, "device": torch.device("cpu")},
            "trainer_name": trainer,
            "inference_allowed_mirroring_axes": spec.mirror_axes,
        }
        torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0, zero_border: int = 0) -> np.ndarray:
    """A CT-like (z, y, x) float32 image: air, a body ellipse with organs of different HU, bone."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    img = np.full(shape, -1000.0)
    body = (y / 0.8) ** 2 + (x / 0.9) ** 2 < 1
    img[body] = 40.0
    for _ in range(6):
        c = rng.uniform(-0.5, 0.5, 3)
        r = rng.uniform(0.15, 0.35)
        blob = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r ** 2
        img[blob & body] = rng.choice([-600.0, 60.0, 150.0, 700.0])
    img += rng.normal(0, 20, shape)
    if zero_border:
        b = zero_border
        img[:, :b] = 0
        img[:, -b:] = 0
        img[:, :, :b] = 0
    return img.astype(np.float32)


@dataclass(frozen=True)
class Case:
    """A model and an image for the equivalence tests against nnunetv2's predictor."""

    spec: ModelSpec
    image_spacing_zyx: tuple[float, float, float]
    image_shape: tuple[int, int, int]
    zero_border: int = 0
    tile_step: float = 0.5
    mirroring: bool = True


CASES: dict[str, Case] = {c.spec.name: c for c in [
    # isotropic 3d_fullres, upsampled on export, 1 fold, no mirroring axes in the checkpoint
    Case(ModelSpec("iso3d", n_classes=4), (1.5, 1.5, 1.5), (30, 50, 46)),
    # anisotropic data (separate-z resampling both ways), mirroring over 3 axes, 6 labels
    Case(ModelSpec("aniso3d", spacing=(3.0, 0.8, 0.8), patch=(8, 32, 32), n_classes=6, anisotropic_strides=True,
                   mirror_axes=(0, 1, 2)), (5.0, 0.7, 0.7), (12, 60, 64)),
    # 2d configuration, 5 folds, mirroring, zero border (crop to non-zero), 3 labels
    Case(ModelSpec("twod5", configuration="2d", spacing=(1.0, 1.0), patch=(32, 32), n_classes=3,
                   folds=(0, 1, 2, 3, 4), mirror_axes=(0, 1)), (2.0, 0.8, 0.8), (10, 50, 44), zero_border=4),
    # residual encoder (CADS' ResEnc plans), 2 folds, image smaller than the patch (padding), step 0.8
    Case(ModelSpec("resenc", architecture="ResidualEncoderUNet", n_classes=5, folds=(0, 1), patch=(16, 32, 32)),
         (1.2, 1.0, 1.0), (14, 36, 40), tile_step=0.8),
    # many labels, mirroring switched off at inference although the checkpoint allows it
    Case(ModelSpec("many", n_classes=12, mirror_axes=(0, 1, 2), seed=5), (1.0, 2.0, 2.0), (24, 28, 30),
         mirroring=False),
    # the volume's edges, as nnU-Net plans anisotropic CT: separate-z resampling both ways (5 mm
    # slices to 3 mm, nearest along z), 2 folds, mirroring over 3 axes, an odd number of slices; the
    # first slices and rows are covered only by the rims of tiles, where the float16 Gaussian weights
    # are subnormal and the order in which folds are combined shows
    Case(ModelSpec("edges_sepz", spacing=(3.0, 0.8, 0.8), patch=(8, 32, 32), n_classes=6, anisotropic_strides=True,
                   mirror_axes=(0, 1, 2), folds=(0, 1), seed=3), (5.0, 0.7, 0.7), (25, 48, 44)),
    # the same plans on a CT narrower than the patch in x (padded), cropped to non-zero on three sides
    # and touching the border on the others, 21 slices
    Case(ModelSpec("edges_small", spacing=(3.0, 0.8, 0.8), patch=(8, 32, 32), n_classes=6, anisotropic_strides=True,
                   mirror_axes=(0, 1, 2), folds=(0, 1), seed=3), (5.0, 0.7, 0.7), (21, 56, 34), zero_border=4),
    # thin slices under anisotropic plans: separate z by the target spacing (z downsampled, nearest),
    # 2 folds without mirroring, tile step 0.8
    Case(ModelSpec("edges_thin", spacing=(3.0, 0.8, 0.8), patch=(8, 32, 32), n_classes=4, anisotropic_strides=True,
                   folds=(0, 1), seed=6), (1.25, 0.7, 0.7), (31, 40, 38), tile_step=0.8),
]}
