#!/usr/bin/env bash
# Install the node into ./.venv (idempotent). Python 3.11+ with venv is all it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch first and pinned: the CPU wheel 2.13.0 is what the project range admits without a CUDA download
.venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/pip install --quiet --disable-pip-version-check -e ".${EXTRAS:-}"
echo "installed: $(.venv/bin/dicom-node --version)"
