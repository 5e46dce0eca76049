#!/usr/bin/env bash
# The GPU checks and benchmarks in one run, on a machine with an NVIDIA GPU (within BUDGET_S,
# 570 s by default, so that it fits a 10-minute job slot):
#   1. install the carried wheels (benchmarks/device_wheels.sh) into /tmp/site, offline;
#   2. check the imports and the GPU;
#   3. our CUDA tests: every test file that holds a `torch.cuda.is_available()` skip, whole (with
#      NNUNET_REFERENCE_PYTHON set, so the live comparisons with nnunetv2 in them run too);
#   4. benchmarks/nnunet_inference.py --device cuda --batch 4, against nnU-Net and FastSegmentator;
#   5. the same with 117 classes, ours only;
#   6. ours again with the preprocessing on the host (--preprocess-device off), for the A/B.
# Logs go to $OUT (one per step, plus summary.txt); the step results and tables also go to stdout.
#
# On a machine with network, beforehand:  bash benchmarks/device_wheels.sh   (-> .whl/, ~24 MiB)
# On the GPU machine (a copy of this checkout with .whl/ in it):  bash benchmarks/gpu_session.sh
# A CPU rehearsal (all but CUDA itself; see benchmarks/README.md):
#   PYVER=3.11 bash benchmarks/device_wheels.sh .whl311
#   DEVICE=cpu PYTHON=/tmp/devsim/bin/python WHEELS=.whl311 SITE=/tmp/site311 SLICES=40 CLASSES=4 \
#     BIG_CLASSES=8 BUDGET_S=1800 TESTS_S=600 BENCH_S=600 BENCH117_S=300 OUT=/tmp/gpu-session-rehearsal \
#     bash benchmarks/gpu_session.sh
#
# No `set -e`: a failing step is logged and the next one still runs (GPU time is usually scarce).
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
WHEELS="${WHEELS:-.whl}"
SITE="${SITE:-/tmp/site}"
OUT="${OUT:-/tmp/gpu-session-out}"
SLICES="${SLICES:-300}"
CLASSES="${CLASSES:-25}"
BIG_CLASSES="${BIG_CLASSES:-117}"
BATCH="${BATCH:-4}"
BUDGET_S="${BUDGET_S:-570}"   # within a 600 s job slot, with room left for the summary
# per-step limits (seconds; each also cut to what is left of BUDGET_S); larger for a CPU rehearsal
TESTS_S="${TESTS_S:-180}" BENCH_S="${BENCH_S:-330}" BENCH117_S="${BENCH117_S:-150}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
START=$SECONDS

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME MAX_SECONDS CMD...: run with a time limit cut to what is left of the budget
step() {
  local name=$1 max=$2 left t t0 rc
  shift 2
  left=$((BUDGET_S - (SECONDS - START)))
  t=$((max < left ? max : left))
  if ((t < 30)); then
    note "$name: not run, its limit would be ${t}s (step limit ${max}s, ${left}s of the budget left)"
    return 1
  fi
  local cmd="$*"
  echo "== $name (limit ${t}s): ${cmd:0:300}"
  t0=$SECONDS
  timeout --kill-after=10 "$t" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  note "$name: rc=$rc in $((SECONDS - t0))s$([ "$rc" = 124 ] && echo ' (timed out)')"
  grep -v -e '^INFO - ' -e 'Location .* is ignored' "$OUT/$name.log" | tail -n 30
  return $rc
}

# 1. offline install; /tmp/site first on the path so the carried versions win
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  note "install: no wheels in $WHEELS/ (run benchmarks/device_wheels.sh on a machine with network and copy .whl/ here)"
  exit 1
fi
step install 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# SimpleITK is not carried (53 MB): nnunetv2 and fastsegmentator import it at module level for
# image-file IO, which nothing here uses. A stand-in that fails loudly if anything does.
if ! "$PY" -c "import SimpleITK" 2>/dev/null; then
  mkdir -p "$SITE/SimpleITK"
  cat >"$SITE/SimpleITK/__init__.py" <<'EOF'
"""Stand-in written by benchmarks/gpu_session.sh: the real SimpleITK was not copied to this machine."""


def __getattr__(name):
    raise AttributeError(f"SimpleITK.{name}: SimpleITK is a stand-in in this run (benchmarks/gpu_session.sh); "
                         "only image-file IO needs it, which the benchmark does not use")
EOF
  note "install: SimpleITK stand-in written to $SITE/SimpleITK"
fi

# 2. what this machine is, and whether all three sides import
step env 90 bash -c '
  nvidia-smi -L 2>&1 | head -4; nproc
  "$0" - <<EOF
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
import segmenter.nnunet.engine
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from fastsegmentator.totalseg_infer import FastPredictor
import cupy
for n in ["numpy", "scipy", "scikit-image", "nnunetv2", "fastsegmentator", "dynamic-network-architectures",
          "acvl-utils", "pandas", "scikit-learn", "pytest"]:
    print(" ", n, md.version(n))
print("  cupy", cupy.__version__)
EOF
  "$0" -m pip check 2>&1 | grep -v "^dicom-autocontour-node" | sed "s/^/pip check: /" | head -30 || true' "$PY"
env_rc=$?

# 3. our CUDA tests (whole files, so a new CUDA test in them is not missed)
mapfile -t TEST_FILES < <(grep -rl --include='test_*.py' "cuda.is_available" tests | sort)
# the device's pytest plugins (xdist, cov, timeout...) are not needed and must not get in the way
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
# nnunetv2 is here anyway: the live equivalence tests compare with it instead of skipping
NNUNET_REFERENCE_PYTHON="$(command -v "$PY")" step tests "$TESTS_S" "$PY" -m pytest -q -rs -p no:cacheprovider "${TEST_FILES[@]}"
if [ "$DEVICE" = cuda ] && grep -q "no CUDA device" "$OUT/tests.log"; then
  note "tests: WARNING: CUDA tests were skipped (no CUDA device seen by torch)"
fi

# 4. ours vs nnU-Net vs FastSegmentator; 5. 117 classes, ours only
FIX=()
[ "$DEVICE" = cpu ] && FIX=(--fastseg-cpu-fix)  # FastSegmentator 0.1.1's CPU path needs it (see the worker)
if [ "$env_rc" = 0 ]; then
  step bench "$BENCH_S" "$PY" benchmarks/nnunet_inference.py --device "$DEVICE" --batch "$BATCH" --slices "$SLICES" \
    --classes "$CLASSES" --nnunet-python "$PY" --fastseg-python "$PY" "${FIX[@]}"
else
  note "bench: not run, the imports failed (see $OUT/env.log)"
fi
step bench117 "$BENCH117_S" "$PY" benchmarks/nnunet_inference.py --device "$DEVICE" --batch "$BATCH" --slices "$SLICES" \
  --classes "$BIG_CLASSES" --skip-nnunet --skip-fastseg

# 6. A/B of our preprocessing on the GPU (the default there): the same run with it on the host
step prep_host "${PREP_S:-90}" "$PY" benchmarks/nnunet_inference.py --device "$DEVICE" --batch "$BATCH" \
  --slices "$SLICES" --classes "$CLASSES" --skip-nnunet --skip-fastseg --preprocess-device off

note "total: $((SECONDS - START))s; logs in $OUT"
echo "== summary"; cat "$SUMMARY"
