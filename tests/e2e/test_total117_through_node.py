"""117 classes through the node (``tests/e2e/total117_scenario.py``), judged here.

The scenario runs in a pytest process of its own, started in the background when the session starts
(tests/conftest.py): its minutes of CPU overlap the tests that mostly wait. This test waits for that
process and passes only if it passed; its output is shown either way."""

from __future__ import annotations

import pytest

from tests.conftest import BACKGROUND_RUNS

pytestmark = pytest.mark.e2e


def test_five_part_117_class_model_through_the_node(request: pytest.FixtureRequest) -> None:
    run = request.config.stash[BACKGROUND_RUNS]["test_total117_through_node.py"]
    try:
        code = run.process.wait(timeout=2400)
    except Exception:
        pytest.fail(f"the 117-class scenario did not end in 40 min:\n{run.log.read_text(errors='replace')[-4000:]}")
    output = run.log.read_text(errors="replace")
    print(output[-3000:])
    assert code == 0 and " passed" in output, output[-6000:]
