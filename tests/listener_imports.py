"""What the listening process may load: nothing of the volume and segmentation side.

``dicom-node serve --no-worker`` receives, indexes and dispatches; the imaging stack (SimpleITK,
torch, highdicom, scikit-image) and the volume loader belong to the worker process only.
"""

from __future__ import annotations

# top-level packages of the imaging stack
IMAGING_PACKAGES = ("SimpleITK", "torch", "highdicom", "skimage")
# the node's own volume side
VOLUME_MODULES = ("dicom_node.series_io", "dicom_node.pipeline", "dicom_node.worker", "dicom_node.outputs")
# the segmenter modules the listener needs: the error type (for exit codes) and the structure
# catalogue the settings carry (pure Python over the package's JSON and CSV data)
SEGMENTER_ALLOWED = frozenset({"segmenter", "segmenter.core", "segmenter.core.errors", "segmenter.core.catalogue",
                               "segmenter.core.tg263"})
# shared libraries that would show the imaging stack mapped into a process (/proc/<pid>/maps)
IMAGING_LIBRARIES = ("_SimpleITK", "SimpleITK", "libtorch", "/torch/")


def forbidden_modules(names: list[str]) -> list[str]:
    """The module names in ``names`` that a listening process must not have loaded."""
    bad = []
    for name in names:
        top = name.split(".")[0]
        if top in IMAGING_PACKAGES:
            bad.append(name)
        elif any(name == m or name.startswith(m + ".") for m in VOLUME_MODULES):
            bad.append(name)
        elif top == "segmenter" and name not in SEGMENTER_ALLOWED:
            bad.append(name)
    return sorted(bad)


def imaging_mappings(maps_text: str) -> list[str]:
    """Lines of a /proc/<pid>/maps text that map a library of the imaging stack."""
    return sorted({line.split()[-1] for line in maps_text.splitlines()
                   if len(line.split()) >= 6 and any(lib in line.split()[-1] for lib in IMAGING_LIBRARIES)})
