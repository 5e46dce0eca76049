#!/usr/bin/env bash
# Build the reference interpreter for the nnU-Net anchors: a venv with nnunetv2 (nnU-Net's own
# predictor) and fastsegmentator (nnU-Net/TotalSegmentator with every stage on the GPU), used by
#   benchmarks/nnunet_inference.py  (--nnunet-python / --fastseg-python, or the env vars below)
#   tests/integration/test_nnunet_equivalence.py  (NNUNET_REFERENCE_PYTHON, live comparison)
#
#   bash scripts/reference_env.sh [VENV]        # default /tmp/nnunet-venv
#   WITH_FASTSEG=0 bash scripts/reference_env.sh .venv-reference   # nnunetv2 only (scripts/test.sh)
#   export NNUNET_REFERENCE_PYTHON=/tmp/nnunet-venv/bin/python FASTSEG_PYTHON=$NNUNET_REFERENCE_PYTHON
#
# Idempotent: every step is a pinned `pip install`, a no-op when already satisfied; running it
# again on a finished venv only re-checks the imports. Prints the packages it added or changed.
#
# Why the pins:
# - torch 2.14.1 / torchvision 0.29.1: the CUDA build that lies on this machine's disk (other
#   versions download GBs). It runs on the CPU too. nnunetv2 accepts it; fastsegmentator pins
#   torch==2.5.1, hence it is installed with --no-deps.
# - nnunetv2 2.8.1: the version of the README's figures. It pulls dynamic-network-architectures
#   0.4.x where fastsegmentator asks for <0.4; the only parts fastsegmentator uses
#   (PlainConvUNet, its building blocks, convert_dim_to_conv_op, get_matching_instancenorm) are the
#   same in 0.3.1 and 0.4.4, so one venv serves both anchors.
# - fastsegmentator's other requirements are nnunetv2's too, except: cupy (imported at module
#   level by its cropping module, used only for CUDA tensors; `import cupy` works without a GPU),
#   cucim, dicom2nifti and xmltodict (imported lazily on its TotalSegmentator/NIfTI paths only, not
#   on the nnU-Net predictor path the benchmark drives), so those three are left out.
set -euo pipefail

VENV="${1:-/tmp/nnunet-venv}"
PYTHON="${PYTHON:-python3}"
TORCH_PINS="${TORCH_PINS:-torch==2.14.1 torchvision==0.29.1}"
NNUNET_PIN="${NNUNET_PIN:-nnunetv2==2.8.1}"
FASTSEG_PIN="${FASTSEG_PIN:-fastsegmentator==0.1.1}"
# cupy-cuda12x is what fastsegmentator declares; on a CUDA 13 machine set CUPY_PIN=cupy-cuda13x.
CUPY_PIN="${CUPY_PIN:-cupy-cuda12x}"
# WITH_FASTSEG=0: nnunetv2 only (what the tests need; scripts/test.sh), no fastsegmentator and cupy
WITH_FASTSEG="${WITH_FASTSEG:-1}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "reference_env: creating $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q --disable-pip-version-check)
before="$(mktemp)"; after="$(mktemp)"
trap 'rm -f "$before" "$after"' EXIT
"$PY" -m pip freeze --all 2>/dev/null | sort >"$before"

# torch first, alone, so that nothing later can pick another build for it
# shellcheck disable=SC2086
"${PIP[@]}" $TORCH_PINS
"${PIP[@]}" "$NNUNET_PIN"
if [ "$WITH_FASTSEG" = 1 ]; then
  "${PIP[@]}" --no-deps "$FASTSEG_PIN"
  # pip reports fastsegmentator's torch==2.5.1 / torchvision==0.20.1 pins as a conflict from here on:
  # expected, see above
  "${PIP[@]}" "$CUPY_PIN"
fi

"$PY" -m pip freeze --all 2>/dev/null | sort >"$after"
changes="$(comm -13 "$before" "$after" || true)"
if [ -n "$changes" ]; then
  echo "reference_env: installed or changed in $VENV:"
  echo "$changes" | sed 's/^/  /'
else
  echo "reference_env: $VENV already complete, nothing installed"
fi

# The imports both benchmark workers make; fails loudly here rather than in the middle of a benchmark.
WITH_FASTSEG="$WITH_FASTSEG" "$PY" - <<'EOF'
import importlib.metadata as md
import os
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: F401
names = ["torch", "torchvision", "nnunetv2", "dynamic-network-architectures", "acvl-utils",
         "batchgenerators", "numpy", "scipy", "SimpleITK"]
if os.environ["WITH_FASTSEG"] == "1":
    from fastsegmentator.nnunet_infer_nii import SimplePredictor, convert_predicted_logits_to_segmentation_with_correct_shape  # noqa: F401
    from fastsegmentator.totalseg_infer import FastPredictor  # noqa: F401  (the predictor _fastseg_worker.py uses)
    names.insert(3, "fastsegmentator")
cupy = [d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("cupy")]
print("reference_env: ok, " + ", ".join(f"{n} {md.version(n)}" for n in names + cupy)
      + f"; CUDA available: {torch.cuda.is_available()}")
EOF
if [ "$WITH_FASTSEG" = 1 ]; then
  echo "reference_env: export NNUNET_REFERENCE_PYTHON=$PY FASTSEG_PYTHON=$PY"
else
  echo "reference_env: export NNUNET_REFERENCE_PYTHON=$PY  (no fastsegmentator: WITH_FASTSEG=0)"
fi
