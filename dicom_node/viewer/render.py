"""One slice of a review volume as an RGB image: the CT under a window/level preset, with the
selected structures drawn in their catalogue colours (outlines, or a translucent fill with outlines).

Pure functions of arrays. The volume is in display order (see :func:`dicom_node.outputs.preview.display_volume`):
``ct[z, y, x]`` with z towards superior, y towards posterior, x towards patient left. The views read
as radiologists expect: axial with patient right on the image left and anterior at the top, coronal
with patient right on the left and superior at the top, sagittal with anterior on the left and
superior at the top. Each view is resampled so that its pixels are square in millimetres (a CT of
3 mm slices and 0.7 mm pixels is not squashed in the coronal and sagittal views): the CT
bilinearly, the label map by nearest neighbour, so outlines follow the voxels.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np
from PIL import Image

from dicom_node.errors import DicomNodeError

VIEW_PX = 512  # the longer side of a rendered view, in pixels
OUTLINE_PX = 2  # outline thickness, in pixels of the rendered view
FILL_ALPHA = 0.35  # opacity of a filled structure
PNG_LEVEL = 1  # zlib level: fast to make, the slices are re-rendered on every change anyway


class ViewerError(DicomNodeError):
    """A job's images cannot be shown: its series or label map is missing, unreadable or off the CT grid."""


class Plane(str, Enum):
    AXIAL = "axial"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"


@dataclass(frozen=True)
class Window:
    level: float
    width: float


# the usual presets, in HU
PRESETS: dict[str, Window] = {
    "lung": Window(level=-600.0, width=1500.0),
    "soft_tissue": Window(level=40.0, width=400.0),
    "bone": Window(level=400.0, width=1800.0),
}


@dataclass(frozen=True)
class ViewStructure:
    """A structure as the viewer draws it: its label in the label map, or its own mask (a structure
    that overlaps others, kept as an extra mask), in display order."""

    name: str
    colour: tuple[int, int, int]
    volume_cm3: float
    label: int  # 0 for an extra mask
    mask: np.ndarray | None = None  # bool (z, y, x), for an extra mask


@dataclass(frozen=True)
class ReviewVolume:
    """A job's CT (HU) and label map in display order, and its structures (the legend's order)."""

    ct: np.ndarray  # int16 (z, y, x)
    labels: np.ndarray  # unsigned integers (z, y, x), 0 = background
    spacing: tuple[float, float, float]  # mm along z, y, x
    structures: tuple[ViewStructure, ...]

    def __post_init__(self) -> None:
        if self.ct.ndim != 3 or self.labels.shape != self.ct.shape:
            raise ViewerError(f"viewer: the label map {self.labels.shape} is not on the CT grid {self.ct.shape}")
        for s in self.structures:
            if s.mask is not None and s.mask.shape != self.ct.shape:
                raise ViewerError(f"viewer: the mask of {s.name} is not on the CT grid")

    def count(self, plane: Plane) -> int:
        """How many slices the plane has."""
        return int(self.ct.shape[{Plane.AXIAL: 0, Plane.CORONAL: 1, Plane.SAGITTAL: 2}[plane]])

    def view_size(self, plane: Plane) -> tuple[int, int]:
        """(width, height) in pixels of the plane's rendered view: square pixels, longer side VIEW_PX."""
        (rows, row_mm), (cols, col_mm) = _extent(self, plane)
        scale = VIEW_PX / max(rows * row_mm, cols * col_mm)
        return max(1, round(cols * col_mm * scale)), max(1, round(rows * row_mm * scale))


def _extent(volume: ReviewVolume, plane: Plane) -> tuple[tuple[int, float], tuple[int, float]]:
    """((rows, row spacing), (columns, column spacing)) of the plane's native slice."""
    z, y, x = volume.ct.shape
    sz, sy, sx = volume.spacing
    if plane is Plane.AXIAL:
        return (y, sy), (x, sx)
    if plane is Plane.CORONAL:
        return (z, sz), (x, sx)
    return (z, sz), (y, sy)


def native_slice(array: np.ndarray, plane: Plane, index: int) -> np.ndarray:
    """The plane's slice of a display-order array, superior at the top of coronal and sagittal views."""
    out: np.ndarray
    if plane is Plane.AXIAL:
        out = array[index]
    elif plane is Plane.CORONAL:
        out = array[::-1, index, :]
    else:
        out = array[::-1, :, index]
    return out


def window_grey(hu: np.ndarray, window: Window) -> np.ndarray:
    """HU -> grey 0..255 (uint8): level - width/2 and below black, level + width/2 and above white, linear between."""
    low = window.level - window.width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - np.float32(low)) * np.float32(255.0 / window.width)
    grey: np.ndarray = np.clip(scaled + 0.5, 0.0, 255.0).astype(np.uint8)
    return grey


def _resample(grey: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (grey.shape[1], grey.shape[0]) == size:
        return grey
    return np.asarray(Image.fromarray(grey, "L").resize(size, Image.Resampling.BILINEAR))


def _nearest(shape: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the native slice that each pixel of a (width, height) view shows."""
    rows = np.minimum((np.arange(size[1]) + 0.5) * (shape[0] / size[1]), shape[0] - 1).astype(np.intp)
    cols = np.minimum((np.arange(size[0]) + 0.5) * (shape[1] / size[0]), shape[1] - 1).astype(np.intp)
    return rows, cols


def _edge(region: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Pixels within OUTLINE_PX of a pixel of another value (or the image border), inside ``region``."""
    edge = np.zeros(values.shape, dtype=bool)
    for shift in range(1, OUTLINE_PX + 1):
        edge[:shift, :] = True
        edge[-shift:, :] = True
        edge[:, :shift] = True
        edge[:, -shift:] = True
        edge[shift:, :] |= values[shift:, :] != values[:-shift, :]
        edge[:-shift, :] |= values[:-shift, :] != values[shift:, :]
        edge[:, shift:] |= values[:, shift:] != values[:, :-shift]
        edge[:, :-shift] |= values[:, :-shift] != values[:, shift:]
    inside: np.ndarray = edge & region
    return inside


def ct_slice(volume: ReviewVolume, plane: Plane, index: int, window: Window) -> np.ndarray:
    """The (height, width) uint8 grey image of slice ``index`` of ``plane`` under ``window``."""
    _check_index(volume, plane, index)
    return _resample(window_grey(native_slice(volume.ct, plane, index), window), volume.view_size(plane))


def overlay_slice(volume: ReviewVolume, plane: Plane, index: int, shown: frozenset[str],
                  fill: bool = False) -> np.ndarray:
    """The (height, width, 4) uint8 RGBA layer of the structures named in ``shown`` on slice ``index``:
    opaque outlines in their colours, and with ``fill`` a translucent fill inside; clear elsewhere."""
    _check_index(volume, plane, index)
    width, height = volume.view_size(plane)
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    drawn = [s for s in volume.structures if s.name in shown]
    if not drawn:
        return rgba
    native = native_slice(volume.labels, plane, index)
    rows, cols = _nearest(native.shape, (width, height))
    same = native.shape == (height, width)

    def sampled(array: np.ndarray) -> np.ndarray:
        return array if same else array[rows[:, None], cols[None, :]]

    for s in drawn:  # the containing structures (External) first: what lies inside them is drawn over them
        if s.mask is not None:
            mask = sampled(native_slice(s.mask, plane, index))
            colour = np.asarray((*s.colour, 255), dtype=np.uint8)
            _draw(rgba, mask, mask, lambda _where, c=colour: c, fill)  # type: ignore[misc]
    labelled = [s for s in drawn if s.mask is None]
    if labelled:
        top = max(int(native.max(initial=0)), max(s.label for s in labelled))
        colours = np.zeros((top + 1, 4), dtype=np.uint8)
        for s in labelled:
            colours[s.label] = (*s.colour, 255)
        values = sampled(native)
        _draw(rgba, colours[:, 3][values] > 0, values, lambda where: colours[values[where]], fill)
    return rgba


def _check_index(volume: ReviewVolume, plane: Plane, index: int) -> None:
    if not 0 <= index < volume.count(plane):
        raise ViewerError(f"viewer: {plane.value} slice {index} is outside 0..{volume.count(plane) - 1}")


def _draw(rgba: np.ndarray, region: np.ndarray, values: np.ndarray,
          colour: Callable[[np.ndarray], np.ndarray], fill: bool) -> None:
    """Outline (and with ``fill`` a translucent inside) of ``region`` into ``rgba``; ``colour(where)``
    gives the RGBA of the pixels a boolean array selects."""
    if not region.any():
        return
    if fill:
        inside = colour(region).copy()
        inside[..., 3] = round(FILL_ALPHA * 255)
        rgba[region] = inside
    edge = _edge(region, values)
    rgba[edge] = colour(edge)


def compose(grey: np.ndarray, overlay: np.ndarray) -> np.ndarray:
    """The overlay laid over the grey image (alpha blending): (height, width, 3) uint8."""
    alpha = overlay[..., 3:4].astype(np.float32) / 255.0
    base = grey[..., None].astype(np.float32)
    out = base * (1.0 - alpha) + overlay[..., :3].astype(np.float32) * alpha
    rgb: np.ndarray = (out + 0.5).astype(np.uint8)
    return rgb


def render_slice(volume: ReviewVolume, plane: Plane, index: int, window: Window,
                 shown: frozenset[str], fill: bool = False) -> np.ndarray:
    """The slice as one RGB picture: the CT under ``window`` with the structures in ``shown`` drawn."""
    return compose(ct_slice(volume, plane, index, window), overlay_slice(volume, plane, index, shown, fill))


def png_bytes(image: np.ndarray) -> bytes:
    """A grey (h, w), RGB or RGBA (h, w, 3|4) uint8 image as PNG (fast compression)."""
    mode = "L" if image.ndim == 2 else {3: "RGB", 4: "RGBA"}[image.shape[2]]
    buffer = io.BytesIO()
    Image.fromarray(image, mode).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()
