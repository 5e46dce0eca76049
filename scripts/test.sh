#!/usr/bin/env bash
# Install what the tests need (Debian packages, the node with its test extras), make sure the local
# PostgreSQL is up with the test database, run the lint and type checks, and run the whole suite. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# systemd: systemd-analyze rates and verifies the unit files (tests/unit/test_systemd_units.py);
# chromium: the web admin's UI tests drive it headless with Playwright (no browser download)
$SUDO apt-get install -y -qq --no-install-recommends dcmtk orthanc dicom3tools plastimatch systemd chromium >/dev/null
# PostgreSQL 127.0.0.1:5432 (database `test`, trust auth) backs the scale-out path tests: started,
# waited for, and its role and database created where missing; without it the rest still runs
bash scripts/test_db.sh || echo "test.sh: no test database; the PostgreSQL tests will fail" >&2
EXTRAS="[test]" bash scripts/install.sh
# lint and type checks (configured in pyproject.toml) before anything slow; an error ends the run here
.venv/bin/ruff check dicom_node segmenter tests benchmarks
PYTHONPATH="$PWD" .venv/bin/mypy dicom_node segmenter
# nnU-Net's own predictor, a test-only dependency in a venv of its own (it needs another torch build):
# the equivalence tests compare our engine with it live on every run, not only with stored outputs
WITH_FASTSEG=0 bash scripts/reference_env.sh .venv-reference
export NNUNET_REFERENCE_PYTHON="$PWD/.venv-reference/bin/python" NNUNET_REFERENCE_REQUIRED=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
