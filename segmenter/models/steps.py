"""Model-level steps a manifest declares around its parts: what CADS runs around its nnU-Net models.

Declarations only (parsed and validated when the manifest loads; an unknown step or key is a
``ManifestError``, a ``ValueError``); ``model_steps_apply`` runs them. Keys (documented for users in
README, "Model-level steps"):

``pre`` (on the input volume, in order, before any part runs)
    ``{"step": "reorient", "to": "RAS"}``: permute and flip the voxel axes (no interpolation) so the
    i, j, k axes point as close as possible to the three letters (nibabel's axis codes; CADS: RAS).
    ``{"step": "resample", "spacing_mm": [1.5, 1.5, 1.5], "order": 3, "integer": true}``: zoom each axis
    to the spacing (scipy ``zoom`` semantics, as CADS calls it; ``integer`` truncates intensities as
    CADS's int32 NIfTI does). The working grid is then axis-aligned: rotation is removed from the
    geometry, the network only ever sees the voxel grid.
``post`` (on the merged label map, on the grid the parts ran on, in order)
    ``{"step": "keep_largest_component", "structures": ["Liver"], "count": 1, "connectivity": 26}``
    ``{"step": "remove_fragments", "min_voxels": {"Liver": 2200, "*": 100}}`` (or ``"min_mm3"``):
    connected components of a structure smaller than its threshold are cleared, the largest one
    included (CADS's clean-up); ``"*"`` is the default for structures not listed.
Part ``crop`` (a part that depends on an earlier part's output)
    ``{"part": "cns", "structure": "Brain", "min_voxels": 2000, "half_size_mm": [150, 150, 200],
    "run_on": "crop", "else_above": {"part": "spine", "structures": ["C1", "C7"]}}``

After the post steps, the pre steps are undone in reverse order on the label map: the result is on
the input's own grid.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from segmenter.core.catalogue import load_catalogue
from segmenter.core.errors import ModelError

log = logging.getLogger(__name__)

AXIS_LETTERS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}  # LPS world
CONNECTIVITIES = (6, 18, 26)
RUN_ON = ("crop", "full")


class ManifestError(ModelError, ValueError):
    """A manifest entry is unknown or malformed (a ModelError for the node, a ValueError for callers)."""


@dataclass(frozen=True)
class Reorient:
    to: str = "RAS"

    def to_json(self) -> dict[str, Any]:
        return {"step": "reorient", "to": self.to}


@dataclass(frozen=True)
class Resample:
    spacing_mm: tuple[float, float, float]  # along the i, j, k axes
    order: int = 3
    integer: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"step": "resample", "spacing_mm": list(self.spacing_mm), "order": self.order, "integer": self.integer}


@dataclass(frozen=True)
class KeepLargestComponent:
    structures: tuple[str, ...] | None = None  # None: every structure
    count: int = 1
    connectivity: int = 26

    def to_json(self) -> dict[str, Any]:
        return {"step": "keep_largest_component", "structures": list(self.structures) if self.structures else "*",
                "count": self.count, "connectivity": self.connectivity}


@dataclass(frozen=True)
class RemoveFragments:
    minimum: dict[str, float] = field(default_factory=dict)  # structure (or "*") -> threshold
    unit: str = "voxels"  # or "mm3"
    connectivity: int = 26

    def threshold(self, structure: str) -> float:
        return self.minimum.get(structure, self.minimum.get("*", 0.0))

    def to_json(self) -> dict[str, Any]:
        return {"step": "remove_fragments", f"min_{self.unit}": dict(self.minimum), "connectivity": self.connectivity}


@dataclass(frozen=True)
class AboveFallback:
    part: str
    structures: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"part": self.part, "structures": list(self.structures)}


@dataclass(frozen=True)
class Crop:
    part: str  # an earlier part's name
    structure: str | None  # catalogue name that part produces ...
    label: int | None  # ... or its own label id
    half_size_mm: tuple[float, float, float]  # along the working grid's i, j, k axes
    min_voxels: int = 1
    run_on: str = "crop"
    else_above: AboveFallback | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"part": self.part, "half_size_mm": list(self.half_size_mm),
                               "min_voxels": self.min_voxels, "run_on": self.run_on}
        if self.structure is not None:
            out["structure"] = self.structure
        if self.label is not None:
            out["label"] = self.label
        if self.else_above is not None:
            out["else_above"] = self.else_above.to_json()
        return out


PreStep = Reorient | Resample
PostStep = KeepLargestComponent | RemoveFragments


def _keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {unknown} (allowed: {sorted(allowed)})")


def _number(value: Any, where: str, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ManifestError(f"{where}: expected a number, got {value!r}")
    if positive and not value > 0:
        raise ManifestError(f"{where}: must be positive, got {value!r}")
    return float(value)


def _triple(value: Any, where: str) -> tuple[float, float, float]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value] * 3
    if not isinstance(value, list) or len(value) != 3:
        raise ManifestError(f"{where}: expected a number or three numbers (i, j, k axes), got {value!r}")
    return tuple(_number(v, where) for v in value)  # type: ignore[return-value]


def _structure(name: Any, where: str) -> str:
    if not isinstance(name, str) or name not in load_catalogue():
        raise ManifestError(f"{where}: {name!r} is not a catalogue structure")
    return name


def _connectivity(raw: Mapping[str, Any], where: str) -> int:
    value = raw.get("connectivity", 26)
    if value not in CONNECTIVITIES:
        raise ManifestError(f"{where}: connectivity must be one of {CONNECTIVITIES}, got {value!r}")
    return int(value)


def axis_codes(code: Any, where: str) -> str:
    """Validate three axis letters, one from each of L/R, P/A, S/I."""
    if not isinstance(code, str) or len(code) != 3 or any(c not in AXIS_LETTERS for c in code.upper()):
        raise ManifestError(f"{where}: 'to' must be three of L/R, P/A, S/I (e.g. 'RAS'), got {code!r}")
    letters: str = code.upper()
    if sorted(AXIS_LETTERS[c][0] for c in letters) != [0, 1, 2]:
        raise ManifestError(f"{where}: 'to' must name each of the three world axes once, got {letters!r}")
    return letters


def _step_name(raw: Any, where: str) -> str:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: a step must be an object with a 'step' key, got {raw!r}")
    name = raw.get("step")
    if not isinstance(name, str):
        raise ManifestError(f"{where}: 'step' is missing")
    return name


def parse_pre_step(raw: Any, where: str) -> PreStep:
    name = _step_name(raw, where)
    where = f"{where} ({name})"
    if name == "reorient":
        _keys(raw, {"step", "to"}, where)
        return Reorient(axis_codes(raw.get("to", "RAS"), where))
    if name == "resample":
        _keys(raw, {"step", "spacing_mm", "order", "integer"}, where)
        if "spacing_mm" not in raw:
            raise ManifestError(f"{where}: 'spacing_mm' is missing")
        order = raw.get("order", 3)
        if order not in (0, 1, 2, 3, 4, 5) or isinstance(order, bool):
            raise ManifestError(f"{where}: order must be an integer 0..5, got {order!r}")
        integer = raw.get("integer", False)
        if not isinstance(integer, bool):
            raise ManifestError(f"{where}: 'integer' must be true or false, got {integer!r}")
        return Resample(_triple(raw["spacing_mm"], f"{where} spacing_mm"), int(order), integer)
    raise ManifestError(f"{where}: unknown pre step {name!r} (known: reorient, resample)")


def parse_post_step(raw: Any, where: str) -> PostStep:
    name = _step_name(raw, where)
    where = f"{where} ({name})"
    if name == "keep_largest_component":
        _keys(raw, {"step", "structures", "count", "connectivity"}, where)
        structures = raw.get("structures", "*")
        names: tuple[str, ...] | None = None
        if structures != "*":
            if not isinstance(structures, list) or not structures:
                raise ManifestError(f"{where}: 'structures' must be '*' or a non-empty list of names")
            names = tuple(_structure(s, where) for s in structures)
        count = raw.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ManifestError(f"{where}: 'count' must be a positive integer, got {count!r}")
        return KeepLargestComponent(names, count, _connectivity(raw, where))
    if name == "remove_fragments":
        _keys(raw, {"step", "min_voxels", "min_mm3", "connectivity"}, where)
        units = [u for u in ("voxels", "mm3") if f"min_{u}" in raw]
        if len(units) != 1:
            raise ManifestError(f"{where}: give exactly one of 'min_voxels' and 'min_mm3'")
        value = raw[f"min_{units[0]}"]
        if not isinstance(value, dict):
            value = {"*": value}
        minimum = {(k if k == "*" else _structure(k, where)): _number(v, f"{where} {k}", positive=False)
                   for k, v in value.items()}
        return RemoveFragments(minimum, units[0], _connectivity(raw, where))
    raise ManifestError(f"{where}: unknown post step {name!r} (known: keep_largest_component, remove_fragments)")


def parse_crop(raw: Any, where: str) -> Crop:
    where = f"{where} crop"
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: must be an object")
    _keys(raw, {"part", "structure", "label", "min_voxels", "half_size_mm", "run_on", "else_above"}, where)
    part = raw.get("part")
    if not isinstance(part, str) or not part:
        raise ManifestError(f"{where}: 'part' must name an earlier part")
    if ("structure" in raw) == ("label" in raw):
        raise ManifestError(f"{where}: give exactly one of 'structure' (catalogue name) and 'label' (the part's id)")
    structure = _structure(raw["structure"], where) if "structure" in raw else None
    label = raw.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, int) or label <= 0):
        raise ManifestError(f"{where}: 'label' must be a positive integer, got {label!r}")
    if "half_size_mm" not in raw:
        raise ManifestError(f"{where}: 'half_size_mm' is missing")
    run_on = raw.get("run_on", "crop")
    if run_on not in RUN_ON:
        raise ManifestError(f"{where}: run_on must be one of {RUN_ON}, got {run_on!r}")
    min_voxels = raw.get("min_voxels", 1)
    if isinstance(min_voxels, bool) or not isinstance(min_voxels, int) or min_voxels < 1:
        raise ManifestError(f"{where}: 'min_voxels' must be a positive integer, got {min_voxels!r}")
    fallback = None
    if raw.get("else_above") is not None:
        fb = raw["else_above"]
        if not isinstance(fb, dict):
            raise ManifestError(f"{where} else_above: must be an object")
        _keys(fb, {"part", "structures"}, f"{where} else_above")
        if not isinstance(fb.get("part"), str) or not isinstance(fb.get("structures"), list) or not fb["structures"]:
            raise ManifestError(f"{where} else_above: needs 'part' and a non-empty 'structures' list")
        fallback = AboveFallback(fb["part"], tuple(_structure(s, f"{where} else_above") for s in fb["structures"]))
    return Crop(part, structure, label, _triple(raw["half_size_mm"], f"{where} half_size_mm"), min_voxels, run_on,
                fallback)


def check_references(part_names: list[str], part_structures: list[set[str]], crops: list[Crop | None],
                     post: tuple[PostStep, ...], where: str) -> None:
    """Crops refer to earlier parts and to structures those parts produce; post steps to
    structures the model produces."""
    if len(set(part_names)) != len(part_names):
        raise ManifestError(f"{where}: part names must be unique, got {part_names}")
    for i, crop in enumerate(crops):
        if crop is None:
            continue
        refs: list[tuple[str, tuple[str, ...]]] = [(crop.part, (crop.structure,) if crop.structure else ())]
        if crop.else_above is not None:
            refs.append((crop.else_above.part, crop.else_above.structures))
        for name, structures in refs:
            if name not in part_names[:i]:
                raise ManifestError(f"{where} part {part_names[i]!r} crop: {name!r} is not an earlier part "
                                    f"(earlier: {part_names[:i]})")
            missing = [s for s in structures if s not in part_structures[part_names.index(name)]]
            if missing:
                raise ManifestError(f"{where} part {part_names[i]!r} crop: part {name!r} does not produce {missing}")
    produced = set().union(*part_structures) if part_structures else set()
    for step in post:
        names = step.structures if isinstance(step, KeepLargestComponent) else tuple(
            k for k in step.minimum if k != "*")
        missing = [s for s in names or () if s not in produced]
        if missing:
            raise ManifestError(f"{where} post {type(step).__name__}: the model does not produce {missing}")
