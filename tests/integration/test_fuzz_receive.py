"""A bounded run of the atheris target on the C-STORE parsing (``tests/fuzz/fuzz_receive.py``).

Seeded with the corpus builders' datasets, it runs for 15 s in a subprocess; any exception other
than a refusal, a hang over 10 s per input or more than 2 GB of memory fails the test with the
input libFuzzer wrote. ``scripts/fuzz.sh SECONDS`` runs the same target for longer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

TARGET = REPO / "tests" / "fuzz" / "fuzz_receive.py"
SECONDS = 15
CANARY = b"\x01canary input"  # the input tests/fuzz/fuzz_receive.py raises on with FUZZ_RECEIVE_CANARY=1


def _run(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(extra_env or {})}
    return subprocess.run([sys.executable, str(TARGET), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=SECONDS + 120)


def test_fuzzing_the_receive_parsing_finds_nothing(tmp_path: Path) -> None:
    seeds, corpus, artifacts = tmp_path / "seeds", tmp_path / "corpus", tmp_path / "artifacts"
    corpus.mkdir()
    artifacts.mkdir()
    written = _run(["--write-seeds", str(seeds)], tmp_path)
    assert written.returncode == 0, written.stderr[-3000:]
    assert int(written.stdout.strip()) >= 50
    run = _run([f"-max_total_time={SECONDS}", "-seed=13", "-timeout=10", "-rss_limit_mb=2048",
                f"-artifact_prefix={artifacts}/", str(corpus), str(seeds)], tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0 and not list(artifacts.iterdir()), output[-6000:]
    assert "Done " in output, output[-3000:]  # libFuzzer's summary: the target really ran


def test_an_input_that_raises_fails_the_run(tmp_path: Path) -> None:
    # the harness reports a finding: with the canary on, the target raises on the canary input
    canary = tmp_path / "canary"
    canary.write_bytes(CANARY)
    run = _run([str(canary)], tmp_path, {"FUZZ_RECEIVE_CANARY": "1"})
    assert run.returncode != 0 and "canary input" in run.stdout + run.stderr, (run.stdout + run.stderr)[-3000:]
    clean = _run([str(canary)], tmp_path)  # without it the same input is an ordinary refusal
    assert clean.returncode == 0, (clean.stdout + clean.stderr)[-3000:]
