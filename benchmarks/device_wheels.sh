#!/usr/bin/env bash
# Download, on a machine with network, the wheels a GPU machine without network lacks for
# benchmarks/gpu_session.sh:
# our CUDA tests, benchmarks/nnunet_inference.py --device cuda and its two anchors, nnU-Net v2
# (nnunetv2) and FastSegmentator. It keeps the total under 60 MiB (LIMIT_MIB) and says so, for GPU
# machines that take only a small upload beside the checkout.
#
#   bash benchmarks/device_wheels.sh            # -> .whl/ (ignored by git through .whl/.gitignore)
#   PYVER=3.11 bash benchmarks/device_wheels.sh .whl311   # the same set for a CPU rehearsal here
#
# Then copy the checkout with .whl/ to the GPU machine and run `bash benchmarks/gpu_session.sh` there
# (benchmarks/README.md, section nnunet_inference).
#
# What the device has: Python 3.12 with torch 2.11.0+cu130, numpy 2.5.2, cupy-cuda13x 14.2.0 and,
# by its package list (read 2026-11-17), among others
# scipy, scikit-image, pandas, scikit-learn, pytest, requests, rich, httpx, tqdm, einops, joblib,
# msgpack, python-dateutil, threadpoolctl, narwhals. What the three sides import, traced with an
# import hook in the reference venv (scripts/reference_env.sh), versions pinned to that venv's:
# - ours: numpy, scipy, torch only (segmenter/nnunet/engine.py, nnunet_plans.py, tests/nnunet_fixtures.py);
#   none of pydicom, pynetdicom, highdicom, SimpleITK... is on the engine path. The tests need pytest,
#   and tests/conftest.py imports sqlalchemy and dicom_node.settings (stdlib otherwise).
# - nnunetv2 2.8.1 / fastsegmentator 0.1.1 on the predictor path: acvl_utils (which imports blosc2,
#   which imports httpx and rich), batchgenerators(v2), dynamic_network_architectures, nibabel,
#   pandas and sklearn (imported by their resampling modules), requests, tqdm, threadpoolctl; and
#   when nnunetv2 loads a model, its trainer module: cc3d (connected-components-3d, through
#   batchgeneratorsv2 and acvl_utils.morphology), matplotlib and seaborn (its logger).
#   (Found by a CPU rehearsal of gpu_session.sh: the module imports alone do not show the last ones.)
# By default only what the device lacks is downloaded (~24 MiB); FULL=1 also takes the packages the
# device is listed with, at the reference venv's versions (~49 MiB), should a version there not do.
# Left out on purpose:
# - SimpleITK (53 MB, more than the rest together): both import it at module level for image-file
#   IO only, which the benchmark never uses (it hands them arrays); gpu_session.sh puts a stand-in
#   module in its place that fails loudly if anything calls it.
# - imagecodecs (28 MB): tifffile imports it inside try/except; not used on this path.
# - cupy-cuda12x (fastsegmentator's pin): the device's cupy-cuda13x provides `cupy`.
# - cucim, dicom2nifti, xmltodict (fastsegmentator: lazy, TotalSegmentator/NIfTI paths only);
#   graphviz, matplotlib, seaborn, yacs, einops (nnunetv2: training and plotting only);
#   future, unittest2 (batchgenerators, unused).
# Version clashes between the two anchors in one /tmp/site are checked below from every wheel's
# Requires-Dist; the only ones are fastsegmentator's pins (torch==2.5.1, torchvision==0.20.1,
# dynamic-network-architectures<0.4), which scripts/reference_env.sh also overrides (see there).
set -euo pipefail
cd "$(dirname "$0")/.."

DEST="${1:-.whl}"
PYVER="${PYVER:-3.12}"
LIMIT_MIB="${LIMIT_MIB:-60}"
CHECK_PY="${CHECK_PY:-.venv/bin/python}"  # any interpreter with `packaging`, for the clash check

MISSING=(  # not on the device
  nnunetv2==2.8.1 fastsegmentator==0.1.1 dynamic-network-architectures==0.4.4
  batchgenerators==0.25.5 batchgeneratorsv2==0.3.6 nibabel==5.4.2
  # acvl_utils imports blosc2 at module level; blosc2 needs pydantic and httpx[http2]
  blosc2==4.15.0 ndindex==1.10.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 h2==4.4.1 hpack==4.2.0 hyperframe==6.1.0 sniffio==1.3.1
  connected-components-3d==4.1.1  # nnunetv2's trainer module, imported when it loads a model
  sqlalchemy==2.1.9  # tests/conftest.py
)
ON_DEVICE=(  # listed on the device; downloaded only with FULL=1
  msgpack==1.2.4 httpx==0.29.0 httpcore==1.0.9 h11==0.16.0 anyio==4.16.0 click==8.5.1
  rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0
  pandas==3.1.1 python-dateutil==4.0.0 six==1.17.0 tzdata==2026.6
  scikit-learn==1.9.1 joblib==1.6.0 narwhals==2.29.0 threadpoolctl==3.8.0 cloudpickle==3.1.3
  tqdm==4.70.1 requests==2.34.2 urllib3==2.8.0 charset-normalizer==3.5.3 certifi==2026.10.19.post1
  idna==3.21 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4 typing-extensions==4.16.0
)
# nibabel needs a backport below Python 3.12 (the CPU rehearsal here runs 3.11)
[ "$PYVER" != 3.12 ] && MISSING+=(importlib-resources==7.1.0)
WHEELS=("${MISSING[@]}")
[ "${FULL:-0}" = 1 ] && WHEELS+=("${ON_DEVICE[@]}")
# published as source only (pure Python): built into a wheel here
SDISTS=(acvl-utils==0.2.6)

mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # the set is exactly this run's: no wheel left from a FULL=1 run or older pins
printf '*\n' >"$DEST/.gitignore"
PLAT=(--only-binary=:all: --python-version "$PYVER" --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# pip prints a warning per missing local index folder on this machine: keep only what matters
quiet() { grep -v -e "^WARNING: Location 'file://" -e '^$' || true; }
python3 -m pip download -q --disable-pip-version-check --no-deps "${PLAT[@]}" -d "$DEST" "${WHEELS[@]}" 2>&1 | quiet
for s in "${SDISTS[@]}"; do
  name="${s%%==*}"
  if ! ls "$DEST/${name//-/_}"-*.whl >/dev/null 2>&1; then
    python3 -m pip wheel -q --disable-pip-version-check --no-deps -w "$DEST" "$s" 2>&1 | quiet
  fi
done

# every carried wheel's requirements against the carried set and what the device has
"$CHECK_PY" - "$DEST" "$PYVER" "${ON_DEVICE[@]}" <<'EOF'
import sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon
dest, pyver = Path(sys.argv[1]), sys.argv[2]
env = {"python_version": pyver, "python_full_version": pyver + ".0", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
# on the device already (versions as far as known; None: present, version not known)
device = {"torch": "2.11.0", "torchvision": "0.26.0", "numpy": "2.5.2", "cupy-cuda13x": "14.2.0"}
device.update({canon(n): None for n in ["scipy", "scikit-image", "pillow", "tifffile", "imageio", "lazy-loader",
                                        "networkx", "timm", "sympy", "filelock", "fsspec", "jinja2", "pyyaml",
                                        "huggingface-hub", "safetensors", "einops", "matplotlib", "seaborn",
                                        "colorama"]})
device.update({canon(r.split("==")[0]): None for r in sys.argv[3:]})
# declared but not needed on this path (see the header of this script), or fastsegmentator's own pins
accepted = {"simpleitk", "imagecodecs", "cupy-cuda12x", "cucim-cu12", "dicom2nifti", "graphviz", "matplotlib",
            "seaborn", "yacs", "einops", "future", "unittest2",
            ("fastsegmentator", "torch"), ("fastsegmentator", "torchvision"),
            ("fastsegmentator", "dynamic-network-architectures"), ("dynamic-network-architectures", "timm")}
carried = {}
for whl in sorted(dest.glob("*.whl")):
    name, version = whl.name.split("-")[:2]
    carried[canon(name)] = (version, whl)
problems, accepted_seen = [], []
for name, (version, whl) in carried.items():
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        reqs = [ln.split(":", 1)[1].strip() for ln in z.read(meta).decode().splitlines()
                if ln.startswith("Requires-Dist:")]
    for r in map(Requirement, reqs):
        if r.marker and not r.marker.evaluate(env):
            continue
        dep = canon(r.name)
        have = carried[dep][0] if dep in carried else device.get(dep, "absent") if dep in device else "absent"
        ok = have not in ("absent",) and (have is None or not r.specifier or r.specifier.contains(have, prereleases=True))
        if ok:
            continue
        line = f"{name} {version} requires {r}: {'not carried, not on the device' if have == 'absent' else 'have ' + str(have)}"
        (accepted_seen if dep in accepted or (name, dep) in accepted else problems).append(line)
print(f"device_wheels: {len(carried)} wheels for Python {pyver}; requirements left unmet on purpose:")
for line in accepted_seen:
    print("  " + line)
if problems:
    print("device_wheels: UNEXPECTED unmet or clashing requirements:")
    for line in problems:
        print("  " + line)
    sys.exit(1)
print("device_wheels: no other clash between the carried wheels and the device's packages")
EOF

total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
mib=$(awk -v b="$total" 'BEGIN{printf "%.1f", b/1048576}')
echo "device_wheels: $(ls "$DEST"/*.whl | wc -l) wheels in $DEST, $mib MiB (limit $LIMIT_MIB MiB; the carry limit is 64 MiB)"
ls -S "$DEST"/*.whl | head -5 | while read -r f; do printf '  %6.1f MiB  %s\n' "$(awk -v b="$(stat -c %s "$f")" 'BEGIN{print b/1048576}')" "$(basename "$f")"; done
awk -v m="$mib" -v l="$LIMIT_MIB" 'BEGIN{exit !(m <= l)}' || { echo "device_wheels: over $LIMIT_MIB MiB" >&2; exit 1; }
