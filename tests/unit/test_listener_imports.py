"""Importing the listener's modules in a fresh interpreter loads nothing of the volume side."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO
from tests.listener_imports import forbidden_modules, imaging_mappings

# what ``dicom-node serve --no-worker`` imports (cli.cmd_serve and the modules it starts)
LISTENER_MODULES = (
    "dicom_node.cli",
    "dicom_node.receive.ae",
    "dicom_node.receive.handlers",
    "dicom_node.receive.storage",
    "dicom_node.scheduler",
    "dicom_node.routing",
    "dicom_node.series",
    "dicom_node.db.engine",
    "dicom_node.db.index",
    "dicom_node.db.jobs",
)


def _modules_after_importing(modules: tuple[str, ...]) -> list[str]:
    code = "import importlib, json, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + \
        "print(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))


def test_listener_modules_leave_the_imaging_stack_unloaded() -> None:
    loaded = _modules_after_importing(LISTENER_MODULES)
    assert "dicom_node.receive.handlers" in loaded  # the import really ran in that interpreter
    assert "SimpleITK" not in loaded
    assert "torch" not in loaded
    assert forbidden_modules(loaded) == []


def test_the_check_sees_the_volume_loader() -> None:
    # the same check on the volume loader must object, or the test above proves nothing
    loaded = _modules_after_importing(("dicom_node.series_io",))
    assert "SimpleITK" in forbidden_modules(loaded)
    assert "dicom_node.series_io" in forbidden_modules(loaded)


def test_forbidden_modules_and_mappings() -> None:
    assert forbidden_modules(["numpy", "torch.nn", "segmenter.core.errors", "segmenter.core.volume",
                              "dicom_node.series_io.loading", "dicom_node.series"]) == \
        ["dicom_node.series_io.loading", "segmenter.core.volume", "torch.nn"]
    maps = ("7f00-7f01 r-xp 00000000 08:01 42 /venv/lib/python3.11/site-packages/SimpleITK/_SimpleITK.so\n"
            "7f02-7f03 r-xp 00000000 08:01 43 /venv/lib/python3.11/site-packages/torch/lib/libtorch_cpu.so\n"
            "7f04-7f05 r-xp 00000000 08:01 44 /usr/lib/x86_64-linux-gnu/libsqlite3.so.0\n"
            "7f06-7f07 rw-p 00000000 00:00 0 \n")
    assert imaging_mappings(maps) == ["/venv/lib/python3.11/site-packages/SimpleITK/_SimpleITK.so",
                                      "/venv/lib/python3.11/site-packages/torch/lib/libtorch_cpu.so"]
