#!/usr/bin/env bash
# Fuzz the C-STORE parsing (header scan, checks at the door, index metadata) with atheris.
#
#   scripts/fuzz.sh [SECONDS] [CORPUS_DIR]
#
# SECONDS defaults to 600. CORPUS_DIR (default var/fuzz/corpus) keeps the inputs that found new
# coverage, so a later run goes on from there; it is seeded from the corpus builders in tests/corpus.
# A finding is written to var/fuzz/artifacts/ (crash-*, timeout-*, oom-*) and the script exits non-zero;
# replay one with: .venv/bin/python tests/fuzz/fuzz_receive.py var/fuzz/artifacts/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
corpus="${2:-var/fuzz/corpus}"
artifacts="var/fuzz/artifacts"
seeds="var/fuzz/seeds"
python=".venv/bin/python"
mkdir -p "$corpus" "$artifacts"
PYTHONPATH="$PWD" "$python" tests/fuzz/fuzz_receive.py --write-seeds "$seeds" >/dev/null
exec env PYTHONPATH="$PWD" "$python" tests/fuzz/fuzz_receive.py \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$corpus" "$seeds"
