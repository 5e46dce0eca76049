#!/usr/bin/env bash
# Kill the node at N random points (default 20) and report lost, partial and duplicate deliveries.
# Needs what the test command installs (dcmtk, Orthanc) and ../shared/data beside the repository.
#   bash scripts/crash_test.sh [RUNS] [--seed S] [--work DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-20}
shift || true
PYTHONPATH="$PWD" exec .venv/bin/python -m tests.e2e.crash_random --runs "$RUNS" "$@"
