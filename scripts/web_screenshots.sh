#!/usr/bin/env bash
# Photograph the web admin for the README: run its UI test (headless Chromium) and copy the screenshots it
# takes into docs/screenshots/. The pages show the open dcmqi test series (masked where a viewer looks) and a
# synthetic CT only.
set -euo pipefail
cd "$(dirname "$0")/.."
base="$(mktemp -d)"
trap 'rm -rf "$base"' EXIT
PYTHONPATH="$PWD" .venv/bin/python -m pytest -q -p no:cacheprovider --basetemp="$base" tests/e2e/test_web_ui.py \
    tests/e2e/test_review_ui.py
mkdir -p docs/screenshots
find "$base" -path '*/screenshots/*.png' -exec cp {} docs/screenshots/ \;
ls docs/screenshots
