"""The review viewer's slices: presets map HU to grey as stated, structures are drawn in their colours
where their masks are and nowhere else, views have square pixels and read as radiologists expect, and
a job's volume is loaded once (from its real CT and label map) however many requests ask for it."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dicom_node.viewer.render import (
    PRESETS,
    Plane,
    ReviewVolume,
    ViewerError,
    ViewStructure,
    Window,
    compose,
    ct_slice,
    overlay_slice,
    png_bytes,
    render_slice,
    window_grey,
)
from dicom_node.viewer.volumes import JobImages, VolumeCache, colour_of, job_images, load_review_volume

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def test_presets_are_the_usual_windows_and_map_hu_to_grey_linearly() -> None:
    assert PRESETS == {"lung": Window(-600, 1500), "soft_tissue": Window(40, 400), "bone": Window(400, 1800)}
    for window in PRESETS.values():
        low, high = window.level - window.width / 2, window.level + window.width / 2
        hu = np.array([low - 500, low, window.level, high, high + 500, low + window.width / 4])
        assert window_grey(hu, window).tolist() == [0, 0, 128, 255, 255, 64]
    soft = PRESETS["soft_tissue"]
    assert window_grey(np.array([-1000, -160, 0, 240, 1000]), soft).tolist() == [0, 0, 102, 255, 255]
    lung = PRESETS["lung"]
    assert window_grey(np.array([-1000, -600]), lung).tolist() == [60, 128]  # air is not black in the lung window


def _phantom() -> ReviewVolume:
    """20 slices of 3 mm, 40 x 40 pixels of 1 mm; a cube with label 1 (red), label 2 (green) beside it,
    and an extra mask (blue) overlapping the cube; water everywhere (0 HU)."""
    ct = np.zeros((20, 40, 40), dtype=np.int16)
    ct[15:, :, :] = 1000  # the superior slices are bone
    labels = np.zeros(ct.shape, dtype=np.uint8)
    labels[5:10, 10:20, 10:20] = 1
    labels[5:10, 25:30, 25:30] = 2
    extra = np.zeros(ct.shape, dtype=bool)
    extra[7:12, 15:25, 15:25] = True
    return ReviewVolume(ct, labels, (3.0, 1.0, 1.0), (
        ViewStructure("Cube", RED, 1.5, 1), ViewStructure("Other", GREEN, 0.4, 2),
        ViewStructure("Extra", BLUE, 1.5, 0, extra)))


def _region(volume: ReviewVolume, plane: Plane, index: int, mask: np.ndarray) -> np.ndarray:
    """Where a display-order mask falls in the plane's rendered view (nearest neighbour, as drawn)."""
    other = ReviewVolume(volume.ct, mask.astype(np.uint8), volume.spacing, (ViewStructure("m", RED, 0, 1),))
    return overlay_slice(other, plane, index, frozenset({"m"}), fill=True)[..., 3] > 0


def test_colours_appear_where_the_mask_is_and_only_for_the_structures_shown() -> None:
    volume = _phantom()
    cube = volume.labels == 1
    for plane, index in ((Plane.AXIAL, 7), (Plane.CORONAL, 15), (Plane.SAGITTAL, 15)):
        outline = overlay_slice(volume, plane, index, frozenset({"Cube"}))
        where = _region(volume, plane, index, cube)
        drawn = outline[..., 3] > 0
        assert drawn.any() and not (drawn & ~where).any(), plane  # the outline lies inside the mask
        assert np.all(outline[drawn] == (*RED, 255))
        assert not drawn[where].all()  # an outline, not a fill: the middle stays clear
        filled = overlay_slice(volume, plane, index, frozenset({"Cube"}), fill=True)
        assert np.array_equal(filled[..., 3] > 0, where), plane  # the fill covers the mask exactly
        assert np.all(filled[where][:, :3] == RED)
        assert set(np.unique(filled[where][:, 3])) == {89, 255}  # translucent inside, opaque outline
    axial = overlay_slice(volume, Plane.AXIAL, 8, frozenset({"Cube", "Other", "Extra"}), fill=True)
    extra = volume.structures[2].mask
    assert extra is not None
    for colour, mask in ((GREEN, volume.labels == 2), (BLUE, extra & ~cube), (RED, cube)):
        assert np.all(axial[_region(volume, Plane.AXIAL, 8, mask)][:, :3] == colour)  # the cube over the extra mask
    none = overlay_slice(volume, Plane.AXIAL, 8, frozenset({"Other"}))
    assert not np.any(none[_region(volume, Plane.AXIAL, 8, cube)][:, 3])  # the cube is not selected: not drawn
    assert not overlay_slice(volume, Plane.AXIAL, 8, frozenset())[..., 3].any()


def test_views_have_square_pixels_and_read_superior_up() -> None:
    volume = _phantom()
    assert volume.view_size(Plane.AXIAL) == (512, 512)
    assert volume.view_size(Plane.CORONAL) == (341, 512)  # 40 mm wide, 60 mm high
    assert volume.view_size(Plane.SAGITTAL) == (341, 512)
    cube = _region(volume, Plane.CORONAL, 15, volume.labels == 1)
    rows, cols = np.flatnonzero(cube.any(axis=1)), np.flatnonzero(cube.any(axis=0))
    assert abs((rows[-1] - rows[0] + 1) / (cols[-1] - cols[0] + 1) - 15 / 10) < 0.05  # 15 mm high, 10 mm wide
    grey = ct_slice(volume, Plane.CORONAL, 0, PRESETS["soft_tissue"])
    assert grey.shape == (512, 341)
    assert grey[:100].min() == 255 and grey[-100:].max() == 102  # bone (superior) at the top
    sagittal = ct_slice(volume, Plane.SAGITTAL, 0, PRESETS["bone"])
    assert sagittal[0, 0] > sagittal[-1, 0]
    with pytest.raises(ViewerError, match=r"outside 0\.\.19"):
        ct_slice(volume, Plane.AXIAL, 20, PRESETS["lung"])


def test_the_composed_picture_blends_the_overlay_and_encodes_as_png() -> None:
    volume = _phantom()
    rgb = render_slice(volume, Plane.AXIAL, 7, PRESETS["soft_tissue"], frozenset({"Cube"}), fill=True)
    grey = ct_slice(volume, Plane.AXIAL, 7, PRESETS["soft_tissue"])
    overlay = overlay_slice(volume, Plane.AXIAL, 7, frozenset({"Cube"}), fill=True)
    assert np.array_equal(rgb, compose(grey, overlay))
    inside = overlay[..., 3] == 89
    assert np.all(rgb[inside] == (155, 66, 66))  # 35 % red over grey 102
    assert np.all(rgb[overlay[..., 3] == 0] == 102)
    for image in (rgb, grey, overlay):
        assert png_bytes(image).startswith(b"\x89PNG")


def _job(tmp_path: Path, shared_data: Path, nsclc_ct_files: list[Path]) -> JobImages:
    """The NSCLC CT with its derived label map kept as a job's output (plus the body as an extra mask)."""
    out = tmp_path / "outputs" / "job-000007"
    out.mkdir(parents=True)
    shutil.copy(shared_data / "ct" / "nsclc_lung1_001" / "derived" / "labels_from_rtstruct.nii.gz",
                out / "labels.nii.gz")
    names = {"1": "GTVp", "2": "SpinalCord", "3": "Lung_L", "4": "Lung_R"}
    (out / "structures.json").write_text(json.dumps({"labels": names, "extra_masks": []}))
    return job_images(7, [str(p) for p in nsclc_ct_files], tmp_path / "outputs",
                      lambda: {"GTVp": (1, 2, 3)})  # as the review queue lists it (a department colour, say)


def test_a_jobs_real_ct_and_label_map_load_in_display_order(
        tmp_path: Path, shared_data: Path, nsclc_ct_files: list[Path]) -> None:
    volume = load_review_volume(_job(tmp_path, shared_data, nsclc_ct_files))
    assert volume.ct.shape == (134, 512, 512) and volume.spacing == (3.0, 0.9765625, 0.9765625)
    voxel_cm3 = 3.0 * 0.9765625**2 / 1000
    got = {s.name: round(s.volume_cm3 / voxel_cm3) for s in volume.structures}
    assert got == {"GTVp": 54639, "SpinalCord": 15618, "Lung_L": 789769, "Lung_R": 1036805}  # SOURCE.md's counts
    colours = {s.name: s.colour for s in volume.structures}
    assert colours["Lung_L"] == colour_of("Lung_L") == (255, 179, 0) and colours["GTVp"] == (1, 2, 3)
    lung_l = volume.labels == 3
    assert lung_l[:, :, 256:].sum() > 100 * lung_l[:, :, :256].sum()  # the left lung on the image's right
    started = time.perf_counter()
    for index in range(40, 80):
        png_bytes(overlay_slice(volume, Plane.AXIAL, index, frozenset({"Lung_L", "Lung_R"})))
        png_bytes(ct_slice(volume, Plane.AXIAL, index, PRESETS["lung"]))
    per_slice_ms = (time.perf_counter() - started) / 40 * 1000
    print(f"axial slice (CT and overlay PNGs) rendered in {per_slice_ms:.1f} ms on average")
    assert per_slice_ms < 250  # tens of ms on a quiet 2-core VM; the bound leaves room for a busy one


def test_a_job_without_a_kept_label_map_says_so(tmp_path: Path, nsclc_ct_files: list[Path]) -> None:
    with pytest.raises(ViewerError, match="no label map kept"):
        load_review_volume(job_images(3, [str(p) for p in nsclc_ct_files[:5]], tmp_path))
    with pytest.raises(ViewerError, match="holds no instances"):
        load_review_volume(job_images(3, [], tmp_path))


def test_the_cache_loads_each_job_once_and_keeps_the_last_few() -> None:
    loads: list[int] = []
    gate = threading.Event()

    def loader(job: JobImages) -> ReviewVolume:
        loads.append(job.job_id)
        gate.wait(5)
        return _phantom()

    cache = VolumeCache(2, loader)
    jobs = [JobImages(n, (), Path(f"/nonexistent/{n}")) for n in (1, 2, 3)]
    got: list[ReviewVolume] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(jobs[0]))) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    gate.set()
    for thread in threads:
        thread.join()
    assert loads == [1] and len(got) == 8 and all(v is got[0] for v in got)
    cache.get(jobs[1])
    cache.get(jobs[0])  # job 1 used last: job 2 goes when job 3 comes
    cache.get(jobs[2])
    cache.get(jobs[0])
    assert loads == [1, 2, 3] and len(cache) == 2
    cache.get(jobs[1])
    assert loads == [1, 2, 3, 2]
