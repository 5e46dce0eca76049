"""Classical segmenter on synthetic CT phantoms built in patient space, in several storage orientations.

The phantom is defined in DICOM LPS millimetres (+x patient left, +y posterior, +z superior): an
elliptic trunk, a right lung larger than the left one, a trachea with two bronchi, a vertebra with
a canal (the arch open on some slices), a couch slab behind the back (in front of the chest when
prone) with a thin strap touching the skin. Each orientation samples the same anatomy through its
own direction matrix, so a segmenter that decides left/right from array indices fails here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from segmenter import __version__
from segmenter.classical.engine import EXTERNAL, segment
from segmenter.classical.orient import Canonical
from segmenter.core.errors import ModelError, VolumeError
from segmenter.core.metrics import dice
from segmenter.core.result import SegmentationResult
from segmenter.core.volume import Volume
from segmenter.registry import get_engine, known_ids

SHAPE_IJK = (96, 96, 36)  # i, j, k sizes
SPACING = (2.5, 2.5, 3.0)


@dataclass(frozen=True)
class Phantom:
    volume: Volume
    truth: dict[str, np.ndarray]  # name -> boolean mask in the volume's array order
    direction: np.ndarray


def _inside_ellipsoid(p: np.ndarray, centre: tuple[float, float, float],
                      axes: tuple[float, float, float]) -> np.ndarray:
    return sum(((p[..., n] - centre[n]) / axes[n]) ** 2 for n in range(3)) <= 1.0


def _tube(p: np.ndarray, a: tuple[float, float, float], b: tuple[float, float, float], radius: float) -> np.ndarray:
    a_, b_ = np.asarray(a), np.asarray(b)
    ab = b_ - a_
    t = np.clip(((p - a_) @ ab) / float(ab @ ab), 0.0, 1.0)
    closest = a_ + t[..., None] * ab
    return np.linalg.norm(p - closest, axis=-1) <= radius


def make_phantom(direction: np.ndarray, prone: bool = False, joined: bool = False, seed: int = 0) -> Phantom:
    """The same anatomy sampled on a grid with ``direction`` (columns: patient directions of i, j, k)."""
    ni, nj, nk = SHAPE_IJK
    extent = np.array([ni - 1, nj - 1, nk - 1]) * np.array(SPACING)
    # Centre the grid on the patient-space origin whatever the direction.
    origin = -direction @ (extent / 2)
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    idx = np.stack([i, j, k], axis=-1) * np.array(SPACING)
    p = idx @ direction.T + origin  # (k, j, i, 3) LPS mm
    x, y, z = p[..., 0], p[..., 1], p[..., 2]

    body = ((x / 105.0) ** 2 + (y / 80.0) ** 2 <= 1.0)
    # Lungs end 8 mm below the top so that the trachea stands alone on the upper slices.
    lung_r = _inside_ellipsoid(p, (-48.0, -5.0, 0.0), (32.0, 40.0, 38.0))
    lung_l = _inside_ellipsoid(p, (45.0, -5.0, -5.0), (25.0, 34.0, 33.0))
    if joined:
        # Aerated lung meeting in front of the heart (anterior junction): one air component.
        junction = _tube(p, (-30.0, -35.0, 0.0), (30.0, -35.0, 0.0), 5.0)
        lung_r |= junction & (x < 0)
        lung_l |= junction & (x >= 0)
    trachea = _tube(p, (0.0, -20.0, 60.0), (0.0, -20.0, 15.0), 8.0)
    bronchi = (_tube(p, (0.0, -20.0, 15.0), (-35.0, -12.0, -15.0), 5.0)
               | _tube(p, (0.0, -20.0, 15.0), (32.0, -12.0, -15.0), 5.0))
    airway = trachea | bronchi
    r_spine = np.hypot(x, y - 55.0)
    canal = r_spine <= 7.0
    vertebral_body = np.hypot(x, y - 32.0) <= 13.0
    arch = (r_spine > 7.0) & (r_spine <= 12.0)
    # Between two vertebrae the arch is open behind the canal (6 mm of every 24 mm).
    gap = (np.floor((z + 60.0) / 6.0) % 4 == 0) & (y > 55.0) & (np.abs(x) < 4.0)
    arch &= ~gap
    bone = vertebral_body | arch
    couch_y = -1.0 if prone else 1.0
    couch = (couch_y * y >= 92.0) & (couch_y * y <= 100.0) & (np.abs(x) <= 120.0)
    strap = (couch_y * y >= 78.0) & (couch_y * y <= 92.0) & (np.abs(x) <= 1.5)

    rng = np.random.default_rng(seed)
    hu = np.full(p.shape[:3], -1000.0)
    hu[body] = 40.0
    hu[body & (np.hypot(x, y) > 95.0)] = -90.0  # subcutaneous fat rim
    hu[couch | (strap & ~body)] = 250.0
    hu[bone] = 700.0
    # Fatty marrow in the vertebral body: a second soft-tissue hole enclosed by bone, in front of the canal.
    hu[np.hypot(x, y - 32.0) <= 6.0] = 60.0
    hu[canal] = 30.0
    lungs = (lung_l | lung_r) & body
    hu[lungs] = -850.0
    hu[airway] = -1000.0
    hu += rng.normal(0.0, 15.0, hu.shape)
    array = hu.astype(np.int16)
    volume = Volume(array, SPACING, tuple(float(v) for v in origin), tuple(float(v) for v in direction.ravel()))
    truth = {"External": body, "Lung_L": lung_l & body & ~airway, "Lung_R": lung_r & body & ~airway,
             "Trachea": trachea, "airway": airway, "SpinalCord": canal, "Bone": bone, "couch": couch | (strap & ~body),
             "trachea_above_lungs": trachea & (z > 40.0)}
    return Phantom(volume, truth, direction)


ORIENTATIONS = {  # name: (direction, prone, lungs joined)
    "HFS": (np.diag([1.0, 1.0, 1.0]), False, False),
    "FFS": (np.diag([-1.0, 1.0, -1.0]), False, False),
    "HFP": (np.diag([-1.0, -1.0, 1.0]), True, False),
    "FFP-joined": (np.diag([1.0, -1.0, -1.0]), True, True),
    # i along patient y, j along patient x: a transposed storage order.
    "transposed": (np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), False, False),
}


def physical_centroid(mask: np.ndarray, volume: Volume) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    idx = np.array([i.mean(), j.mean(), k.mean()]) * np.array(volume.spacing)
    return np.asarray(volume.origin) + np.asarray(volume.direction).reshape(3, 3) @ idx


@pytest.fixture(scope="module", params=sorted(ORIENTATIONS))
def segmented(request: pytest.FixtureRequest) -> tuple[Phantom, SegmentationResult]:
    direction, prone, joined = ORIENTATIONS[request.param]
    phantom = make_phantom(direction, prone=prone, joined=joined)
    return phantom, segment(phantom.volume)


def test_result_is_on_the_input_grid_with_catalogue_names(segmented: tuple[Phantom, SegmentationResult]) -> None:
    phantom, result = segmented
    assert result.model_id == "builtin-classical" and result.model_version == __version__
    assert result.labels.array.dtype == np.uint8
    assert result.labels.shape == phantom.volume.shape
    assert (result.labels.spacing, result.labels.origin, result.labels.direction) == (
        phantom.volume.spacing, phantom.volume.origin, phantom.volume.direction)
    assert [s.name for s in result.structures] == ["Lung_L", "Lung_R", "Trachea", "SpinalCord", "Bone"]
    assert len({s.label for s in result.structures}) == 5
    assert set(result.extra_masks) == {EXTERNAL}
    assert result.extra_masks[EXTERNAL].dtype == bool and result.extra_masks[EXTERNAL].shape == phantom.volume.shape


def test_left_and_right_lung_follow_patient_coordinates(segmented: tuple[Phantom, SegmentationResult]) -> None:
    phantom, result = segmented
    left, right = result.mask("Lung_L"), result.mask("Lung_R")
    assert physical_centroid(left, phantom.volume)[0] > 20.0, "Lung_L must lie at patient left (+x)"
    assert physical_centroid(right, phantom.volume)[0] < -20.0, "Lung_R must lie at patient right (-x)"
    assert dice(left, phantom.truth["Lung_L"]) >= 0.9
    assert dice(right, phantom.truth["Lung_R"]) >= 0.9


def test_trachea_is_found_and_kept_out_of_the_lungs(segmented: tuple[Phantom, SegmentationResult]) -> None:
    phantom, result = segmented
    trachea = result.mask("Trachea")
    above = phantom.truth["trachea_above_lungs"]
    assert (trachea & above).sum() >= 0.9 * above.sum()
    assert (trachea & ~ndilate(phantom.truth["airway"] | phantom.truth["Lung_L"] | phantom.truth["Lung_R"])).sum() == 0
    lungs = result.mask("Lung_L") | result.mask("Lung_R")
    assert not (lungs & above).any()
    # The main bronchi leave the trachea for both lungs; at least their first centimetre is airway, not lung.
    assert (lungs & phantom.truth["Trachea"]).sum() <= 0.05 * phantom.truth["Trachea"].sum()


def ndilate(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=2)


def test_spinal_cord_follows_the_canal_through_open_arches(segmented: tuple[Phantom, SegmentationResult]) -> None:
    phantom, result = segmented
    cord = result.mask("SpinalCord")
    assert dice(cord, phantom.truth["SpinalCord"]) >= 0.7
    # Present on every axial slice the canal crosses, including those where the arch is open.
    z_axis = 2 - int(np.argmax(np.abs(phantom.direction[2])))  # array axis along patient z
    others = tuple(a for a in range(3) if a != z_axis)
    crossing = phantom.truth["SpinalCord"].any(axis=others)
    found = cord.any(axis=others)
    assert found[crossing][1:-1].all()


def test_bone_matches_the_vertebra(segmented: tuple[Phantom, SegmentationResult]) -> None:
    phantom, result = segmented
    bone = result.mask("Bone")
    assert dice(bone, phantom.truth["Bone"]) >= 0.8
    assert not (bone & phantom.truth["SpinalCord"]).any(), "the canal is not bone"


def test_external_contains_everything_and_leaves_out_the_couch(segmented: tuple[Phantom, SegmentationResult]) -> None:
    phantom, result = segmented
    external = result.mask(EXTERNAL)
    assert not ((result.labels.array > 0) & ~external).any()
    # The one voxel of the strap that touches the skin may stay; nothing of the couch beyond it.
    assert not (external & phantom.truth["couch"] & ~ndilate(phantom.truth["External"])).any()
    assert dice(external, phantom.truth["External"]) >= 0.97


def test_canonical_round_trip_for_every_axis_order() -> None:
    rng = np.random.default_rng(1)
    array = rng.integers(0, 100, size=(4, 5, 6)).astype(np.int16)
    for perm in [(0, 1, 2), (1, 0, 2), (2, 1, 0), (1, 2, 0)]:
        for signs in [(1, 1, 1), (-1, 1, -1), (-1, -1, 1)]:
            direction = np.zeros((3, 3))
            for n, p in enumerate(perm):
                direction[p, n] = signs[n]
            volume = Volume(array, (1.0, 2.0, 3.0), (0.0, 0.0, 0.0), tuple(direction.ravel()))
            canonical = Canonical.of(volume)
            out = canonical.to_canonical(array)
            assert np.array_equal(canonical.from_canonical(out), array)
            # Spacing follows the patient axes: canonical axis 2 is x, which image axis perm.index(0) carries.
            assert canonical.spacing[2] == (1.0, 2.0, 3.0)[perm.index(0)]


def test_oblique_direction_is_refused() -> None:
    c, s = np.cos(np.radians(45)), np.sin(np.radians(45))
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    volume = Volume(np.zeros((2, 3, 3), dtype=np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction)
    with pytest.raises(VolumeError, match="oblique"):
        segment(volume)


def test_air_only_volume_gives_empty_structures() -> None:
    volume = Volume(np.full((4, 32, 32), -1000, dtype=np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                    (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    result = segment(volume)
    assert not result.labels.array.any()
    assert not result.extra_masks[EXTERNAL].any()


def test_registry_maps_builtin_ids_and_refuses_unknown_ones() -> None:
    for model_id in ("builtin", "builtin-classical"):
        engine = get_engine(model_id)
        assert engine.model_id == "builtin-classical" and engine.version == __version__
    assert {"builtin", "builtin-classical"} <= set(known_ids())
    with pytest.raises(ModelError, match="builtin-classical"):
        get_engine("nnunet-does-not-exist")
