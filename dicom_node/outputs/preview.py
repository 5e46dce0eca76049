"""QA preview: a few CT slices with the contours drawn, as a PNG and as a Secondary Capture image.

A physicist sees at a glance what was sent: three axial slices through the structures' extent
(at a quarter, half and three quarters of it) and the coronal slice that cuts most of them, each with
every structure's outline in its catalogue colour, and a legend (colour, name as sent, volume).

Orientation: the volume is first turned into display order from its direction matrix, never from
array order: each array axis goes to the patient axis its direction vector points along most (an
oblique volume is shown as the nearest axis-aligned one), and axes are flipped so that images read
as radiologists expect: axial images with patient right on the image left and anterior at the top,
coronal images with patient right on the image left and superior at the top, whatever the patient
position (head/feet first, supine/prone/decubitus) the series was scanned in.

The Secondary Capture (one RGB image, the same picture as the PNG) is a new series of the source
study with an AI-generated SeriesDescription; it refers to the CT images shown.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from scipy import ndimage

from dicom_node.errors import OutputError
from dicom_node.outputs.common import (
    check_grid,
    check_structures,
    complete_deidentification,
    copy_patient_study,
    frame_number,
    iter_structures,
    new_uid,
    series_description,
)
from dicom_node.private_files import make_private_dirs, write_private_bytes
from dicom_node.series_io import CtSeries
from dicom_node.settings import IdentitySettings
from dicom_node.templates import OutputNaming
from segmenter.core.result import SegmentationResult
from segmenter.core.volume import Volume

log = logging.getLogger(__name__)

# (level, width) in HU
WINDOWS: dict[str, tuple[float, float]] = {"lung": (-600.0, 1500.0), "soft_tissue": (40.0, 400.0)}
PANEL_PX = 384  # longer side of each view, in display pixels
OUTLINE_PX = 2  # contour thickness in display pixels
AXIAL_FRACTIONS = (0.25, 0.5, 0.75)  # where in the structures' cranio-caudal extent the axial views lie
BACKGROUND = (0, 0, 0)
TEXT = (255, 255, 255)
LEGEND_ROW_PX = 20


@dataclass(frozen=True)
class DisplayVolume:
    """The volume in display order: ``array[z, y, x]`` with x towards patient left (LPS +x),
    y towards posterior (+y) and z towards superior (+z); spacing (z, y, x) in mm."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    # for each display axis (z, y, x): the array axis it came from and whether it was flipped
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Another array of the volume's shape (a label map, a mask) in the same display order (a view)."""
        out = np.transpose(array, self.axes)
        for axis, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis)
        return out


def display_volume(volume: Volume) -> DisplayVolume:
    """Permute and flip ``volume`` so that its axes run along LPS z (superior), y (posterior), x (left)."""
    d = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)  # column c: patient direction of i, j, k
    patient_axis = [int(np.argmax(np.abs(d[:, c]))) for c in range(3)]  # for i, j, k
    if sorted(patient_axis) != [0, 1, 2]:
        raise OutputError(f"preview: volume direction {np.round(d, 4).tolist()} has two axes along the same "
                          "patient axis; cannot show it as axial and coronal views")
    axes: list[int] = []
    flips: list[bool] = []
    spacing: list[float] = []
    for target in (2, 1, 0):  # display z, y, x = patient axes z, y, x
        c = patient_axis.index(target)  # i=0, j=1, k=2 in SimpleITK order
        axes.append(2 - c)  # numpy order is (k, j, i)
        flips.append(bool(d[target, c] < 0))
        spacing.append(float(volume.spacing[c]))
    display = DisplayVolume(np.empty(0), (spacing[0], spacing[1], spacing[2]),
                            (axes[0], axes[1], axes[2]), (flips[0], flips[1], flips[2]))
    return DisplayVolume(display.apply(volume.array), display.spacing, display.axes, display.flips)


@dataclass(frozen=True)
class StructureView:
    name: str  # as sent (template rename applied)
    colour: tuple[int, int, int]
    volume_cm3: float
    label: int  # its value in the label map; 0 for an extra mask
    mask: np.ndarray | None  # an extra mask in display order (a view of the result's array, no copy)

    def plane(self, labels: np.ndarray, index: tuple[slice | int, ...]) -> np.ndarray:
        """The structure's 2D mask in one display plane; ``labels`` is the label map in display order."""
        return labels[index] == self.label if self.mask is None else self.mask[index]


@dataclass(frozen=True)
class PreviewView:
    """One rendered view: RGB pixels (patient right on the left) and what it shows."""

    title: str
    rgb: np.ndarray  # (rows, columns, 3) uint8
    orientation: tuple[str, str, str, str]  # letters at the left, right, top and bottom edges
    source_slice: int | None  # index into series.datasets of an axial view's CT image


@dataclass(frozen=True)
class Preview:
    image: np.ndarray  # the composed picture (rows, columns, 3) uint8, as in the PNG and the SC
    views: tuple[PreviewView, ...]
    dataset: Dataset  # the Secondary Capture image

    def png_bytes(self) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(self.image, "RGB").save(buffer, format="PNG")
        return buffer.getvalue()

    def save_png(self, path: Path) -> Dataset:
        """Write the PNG and return the Secondary Capture (what the pipeline sends)."""
        self.write_png(path)
        return self.dataset

    def write_png(self, path: Path) -> None:
        try:
            make_private_dirs(path.parent)
            tmp = path.with_name(f".{path.name}.tmp")
            write_private_bytes(tmp, self.png_bytes())
            tmp.replace(path)
        except OSError as exc:
            raise OutputError(f"cannot write the preview PNG {path}: {exc}") from exc
        log.debug("wrote %s", path)


def choose_window(names: list[str]) -> str:
    """Lung window when lungs are among the structures, soft tissue otherwise."""
    return "lung" if any(name.lower().startswith("lung") for name in names) else "soft_tissue"


def render_views(series: CtSeries, result: SegmentationResult, naming: OutputNaming | None = None,
                 window: str | None = None) -> tuple[list[PreviewView], list[StructureView]]:
    """The axial and coronal views with the outlines drawn, and the structures shown (legend order)."""
    naming = naming or OutputNaming()
    check_grid(series, result)
    if not series.has_pixels:
        raise OutputError("preview: the CT series was read without its pixel data (load_series(pixels=False))")
    boxes = check_structures(result, naming.catalogue)
    display = display_volume(series.volume)
    voxel_cm3 = result.labels.voxel_volume_mm3 / 1000.0
    if window is not None and window not in WINDOWS:
        raise OutputError(f"preview: window {window!r} is not one of {', '.join(WINDOWS)}")
    labels = display.apply(result.labels.array)
    label_of = {x.name: x.label for x in result.structures}
    structures: list[StructureView] = []
    inner: list[StructureView] = []  # containing structures (External) do not set the extent
    names: list[str] = []
    for s in iter_structures(result, boxes, naming.catalogue):  # one cropped mask at a time: memory stays low
        extra = s.name in result.extra_masks
        view = StructureView(naming.display(s.name), s.info.colour, s.voxel_count * voxel_cm3,
                             0 if extra else label_of[s.name],
                             display.apply(np.asarray(result.extra_masks[s.name], dtype=bool)) if extra else None)
        structures.append(view)
        names.append(s.name)
        if s.info.rt_type != "EXTERNAL":
            inner.append(view)
    if not structures:
        raise OutputError("preview: no non-empty structure to show")
    window = window or choose_window(names)
    union = _union(labels, inner or structures)
    zs = np.flatnonzero(union.any(axis=(1, 2)))
    per_y = np.count_nonzero(union, axis=(0, 2))  # structure voxels in each coronal plane
    del union
    views = []
    for number, fraction in enumerate(AXIAL_FRACTIONS, start=1):
        z = round(zs[0] + fraction * (zs[-1] - zs[0]))
        views.append(_render(display, labels, structures, window, "axial", z,
                             f"Axial {number}/{len(AXIAL_FRACTIONS)} (slice {_source_index(display, z) + 1})",
                             _source_index(display, z)))
    y = int(np.argmax(per_y))  # the coronal plane that cuts the most of the structures
    views.append(_render(display, labels, structures, window, "coronal", y, "Coronal", None))
    return views, structures


def _source_index(display: DisplayVolume, z: int) -> int:
    """The array slice k (index into series.datasets) that display slice z is, for axial series."""
    if display.axes[0] != 0:
        return -1  # slices are not axial: an axial view mixes images
    return display.array.shape[0] - 1 - z if display.flips[0] else z


def _union(labels: np.ndarray, structures: list[StructureView]) -> np.ndarray:
    """Where any of ``structures`` is (display order, bool)."""
    union = np.isin(labels, [s.label for s in structures if s.mask is None])
    for s in structures:
        if s.mask is not None:
            union |= s.mask
    return union


def _render(display: DisplayVolume, labels: np.ndarray, structures: list[StructureView], window: str, plane: str,
            index: int, title: str, source: int | None) -> PreviewView:
    if plane == "axial":
        hu = display.array[index].astype(np.float32)  # rows posterior-wards, columns left-wards
        masks = [s.plane(labels, (index,)) for s in structures]
        row_mm, col_mm = display.spacing[1], display.spacing[2]
        letters = ("R", "L", "A", "P")
    else:  # coronal: superior at the top
        hu = display.array[::-1, index, :].astype(np.float32)
        masks = [s.plane(labels, (slice(None, None, -1), index, slice(None))) for s in structures]
        row_mm, col_mm = display.spacing[0], display.spacing[2]
        letters = ("R", "L", "S", "I")
    scale = PANEL_PX / max(hu.shape[0] * row_mm, hu.shape[1] * col_mm)
    size = (max(1, round(hu.shape[1] * col_mm * scale)), max(1, round(hu.shape[0] * row_mm * scale)))  # (w, h)
    level, width = WINDOWS[window]
    grey = np.clip((hu - (level - width / 2)) / width, 0.0, 1.0) * 255.0
    grey = np.asarray(Image.fromarray(grey, "F").resize(size, Image.Resampling.BILINEAR))
    rgb = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    rows = np.minimum((np.arange(size[1]) + 0.5) / size[1] * hu.shape[0], hu.shape[0] - 1).astype(np.intp)
    cols = np.minimum((np.arange(size[0]) + 0.5) / size[0] * hu.shape[1], hu.shape[1] - 1).astype(np.intp)
    for structure, mask in zip(structures, masks, strict=True):
        if not mask.any():
            continue
        big = mask[np.ix_(rows, cols)]  # nearest neighbour: the outline follows the voxels exactly
        outline = big & ~ndimage.binary_erosion(big, iterations=OUTLINE_PX, border_value=0)
        rgb[outline] = structure.colour
    return PreviewView(title, rgb, letters, None if source is None or source < 0 else source)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError, TypeError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def compose(views: list[PreviewView], structures: list[StructureView], heading: str) -> np.ndarray:
    """Views side by side with titles and orientation letters, then the legend, on a black canvas."""
    font, small = _font(16), _font(14)
    gap, title_px = 12, 24
    width = sum(v.rgb.shape[1] for v in views) + gap * (len(views) + 1)
    view_h = max(v.rgb.shape[0] for v in views)
    legend_h = LEGEND_ROW_PX * ((len(structures) + 2) // 3) + gap
    height = title_px + gap + title_px + view_h + gap + legend_h + gap
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, gap // 2), heading, fill=TEXT, font=font)
    x, top = gap, title_px + gap
    for view in views:
        h, w = view.rgb.shape[:2]
        draw.text((x, top), view.title, fill=TEXT, font=small)
        y0 = top + title_px
        canvas.paste(Image.fromarray(view.rgb, "RGB"), (x, y0))
        left, right, up, down = view.orientation
        if h < 48:  # a thin view (a short scan's coronal slice): letters would hide it
            x += w + gap
            continue
        draw.text((x + 3, y0 + h // 2 - 8), left, fill=(255, 255, 0), font=small)
        draw.text((x + w - 14, y0 + h // 2 - 8), right, fill=(255, 255, 0), font=small)
        draw.text((x + w // 2 - 4, y0 + 2), up, fill=(255, 255, 0), font=small)
        draw.text((x + w // 2 - 4, y0 + h - 18), down, fill=(255, 255, 0), font=small)
        x += w + gap
    y_legend = top + title_px + view_h + gap
    column_w = (width - gap) // 3
    for n, s in enumerate(structures):
        lx, ly = gap + (n % 3) * column_w, y_legend + (n // 3) * LEGEND_ROW_PX
        draw.rectangle((lx, ly + 3, lx + 14, ly + 15), fill=s.colour)
        draw.text((lx + 20, ly), f"{s.name}  {s.volume_cm3:.1f} cm3", fill=TEXT, font=small)
    return np.asarray(canvas, dtype=np.uint8)


def build_preview(series: CtSeries, result: SegmentationResult, identity: IdentitySettings,
                  naming: OutputNaming | None = None, window: str | None = None) -> Preview:
    """Render the views and wrap the composed picture as a Secondary Capture image, or OutputError."""
    naming = naming or OutputNaming()
    views, structures = render_views(series, result, naming, window)
    heading = (f"{identity.series_description_prefix} contours: {result.model_id} {result.model_version}"
               + (f", template {naming.template_name}" if naming.template_name else "")
               + " - QA preview, not for diagnosis")
    image = compose(views, structures, heading)
    dataset = _secondary_capture(series, result, identity, image, views)
    log.info("preview: %d views, %d structures, %dx%d pixels", len(views), len(structures),
             image.shape[1], image.shape[0])
    return Preview(image, tuple(views), dataset)


def _secondary_capture(series: CtSeries, result: SegmentationResult, identity: IdentitySettings,
                       image: np.ndarray, views: list[PreviewView]) -> Dataset:
    source = series.datasets[0]
    try:
        sc = hd.sc.SCImage(
            pixel_array=image,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            study_instance_uid=series.study_uid,
            series_instance_uid=new_uid(identity.uid_root),
            series_number=identity.preview_series_number,
            sop_instance_uid=new_uid(identity.uid_root),
            instance_number=1,
            manufacturer=identity.manufacturer,
            patient_orientation=("L", "P"),  # of the axial views; the coronal one reads L, F
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise OutputError(f"highdicom refused the preview Secondary Capture: {exc}") from exc
    copy_patient_study(source, sc)  # patient and study exactly as in the source CT
    sc.SeriesDescription = series_description(identity, "QA preview", result)
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.Laterality = ""  # Type 2C in General Series: the picture shows both sides, so empty
    sc.BurnedInAnnotation = "NO"  # text is structure names and the model, no patient identification
    sc.ManufacturerModelName = identity.manufacturer_model_name
    sc.SoftwareVersions = identity.software_version
    sc.DeviceSerialNumber = identity.device_serial_number
    if identity.institution_name:
        sc.InstitutionName = identity.institution_name
    sc.DerivationDescription = ("Contours of an automatic segmentation drawn on CT slices (QA preview); "
                                f"model {result.model_id} {result.model_version}")[:1024]
    shown = sorted({v.source_slice for v in views if v.source_slice is not None})
    if shown:
        references = []
        for k in shown:
            item = Dataset()
            item.ReferencedSOPClassUID = series.datasets[k].SOPClassUID
            item.ReferencedSOPInstanceUID = series.datasets[k].SOPInstanceUID
            frame = frame_number(series, k)
            if frame is not None:
                item.ReferencedFrameNumber = frame
            references.append(item)
        sc.SourceImageSequence = references
    complete_deidentification(sc)
    return sc
