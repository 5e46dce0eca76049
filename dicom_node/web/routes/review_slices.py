"""The review viewer's images: a job's geometry and structures (``view.json``), and its slices as PNG
layers, the CT under a window preset and the selected structures' overlay (drawn over it in the page).

The two layers are separate so that a new preset fetches only CT slices and a structure toggle only
overlays; every slice is drawn from the job's volume held in memory (:class:`VolumeCache`), and the
browser keeps each PNG (the URL names everything drawn). Any signed-in role may see them: they carry
no patient data.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from dicom_node.db import overview
from dicom_node.db.index import series_instance_paths
from dicom_node.review.queue import review_entry
from dicom_node.viewer.render import PRESETS, Plane, ReviewVolume, ViewerError, ct_slice, overlay_slice, png_bytes
from dicom_node.viewer.volumes import VolumeCache, job_images
from dicom_node.web.auth import Reader
from dicom_node.web.state import node_state

log = logging.getLogger(__name__)
router = APIRouter()
MAX_ID = 2**31 - 1
CACHED_JOBS = 2  # volumes kept in memory: a 300-slice CT and its label map are about 240 MB
IMAGE_HEADERS = {"Cache-Control": "private, max-age=3600"}  # a URL always draws the same picture
PLANE = Path(pattern="^(axial|coronal|sagittal)$")
INDEX = Path(ge=0, le=4095)
WINDOW = Query("soft_tissue", pattern=f"^({'|'.join(PRESETS)})$")
SHOWN = Query("", max_length=2000, pattern=r"^(\d{1,4}(,\d{1,4})*)?$",
              description="indices in view.json's structures list, comma-separated")


class PlaneOut(BaseModel):
    count: int = Field(description="slices in this plane: the index of a slice URL is 0..count-1")
    width: int = Field(description="pixels of a rendered slice (square pixels in mm)")
    height: int


class ViewStructureOut(BaseModel):
    name: str = Field(description="catalogue name")
    colour: str = Field(description="catalogue colour, #rrggbb")
    volume_ml: float


class WindowOut(BaseModel):
    level: float
    width: float


class ViewOut(BaseModel):
    job_id: int
    planes: dict[str, PlaneOut] = Field(description="axial, coronal, sagittal")
    spacing_mm: tuple[float, float, float] = Field(description="voxel size along z (superior), y (posterior), "
                                                              "x (patient left)")
    structures: list[ViewStructureOut] = Field(description="in the order an overlay's shown indices count")
    presets: dict[str, WindowOut] = Field(description="the window presets a CT slice URL may name")


def volume_cache(request: Request) -> VolumeCache:
    cache: VolumeCache | None = getattr(request.app.state, "review_volumes", None)
    if cache is None:  # one per app, made on first use
        cache = request.app.state.review_volumes = VolumeCache(CACHED_JOBS)
    return cache


def job_volume(request: Request, job_id: int) -> ReviewVolume:
    """The job's volume (from the cache), or 404 / 409 saying why it cannot be shown."""
    state = node_state(request)
    with state.factory() as session:
        job = overview.job(session, job_id)
        if job is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        paths = series_instance_paths(session, job.series_id)
    def colours() -> dict[str, tuple[int, int, int]]:  # the colours the page's structure list shows
        entry = review_entry(state.settings, state.factory, job_id)
        return {} if entry is None else {s.name: s.colour for s in entry.structures}

    try:
        return volume_cache(request).get(job_images(job_id, paths, state.settings.worker.output_dir, colours))
    except ViewerError as exc:
        log.warning("job %d: its images cannot be shown: %s", job_id, exc)
        raise HTTPException(status_code=409, detail=str(exc)) from exc


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers=IMAGE_HEADERS)


def _hex(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


@router.get("/review/{job_id}/view.json", response_model=ViewOut, tags=["review"],
            responses={404: {"description": "no such job"},
                       409: {"description": "its series or label map is gone or unreadable"}})
def view_json(request: Request, _who: Reader, job_id: int = Path(ge=1, le=MAX_ID)) -> ViewOut:
    """What the viewer draws: each plane's slice count and view size, the structures (name, colour,
    volume in ml, in the order ``shown`` indexes) and the window presets."""
    volume = job_volume(request, job_id)
    planes = {}
    for plane in Plane:
        width, height = volume.view_size(plane)
        planes[plane.value] = PlaneOut(count=volume.count(plane), width=width, height=height)
    return ViewOut(job_id=job_id, planes=planes, spacing_mm=volume.spacing,
                   structures=[ViewStructureOut(name=s.name, colour=_hex(s.colour), volume_ml=round(s.volume_cm3, 1))
                               for s in volume.structures],
                   presets={name: WindowOut(level=w.level, width=w.width) for name, w in PRESETS.items()})


def _slice(request: Request, job_id: int, plane: str, index: int) -> tuple[ReviewVolume, Plane]:
    volume = job_volume(request, job_id)
    which = Plane(plane)
    if index >= volume.count(which):
        raise HTTPException(status_code=404, detail=f"{plane} slices are 0..{volume.count(which) - 1}")
    return volume, which


@router.get("/review/{job_id}/ct/{plane}/{index}.png", include_in_schema=False)
def ct_png(request: Request, _who: Reader, job_id: int = Path(ge=1, le=MAX_ID), plane: str = PLANE,
           index: int = INDEX, window: str = WINDOW) -> Response:
    volume, which = _slice(request, job_id, plane, index)
    return _png(png_bytes(ct_slice(volume, which, index, PRESETS[window])))


@router.get("/review/{job_id}/overlay/{plane}/{index}.png", include_in_schema=False)
def overlay_png(request: Request, _who: Reader, job_id: int = Path(ge=1, le=MAX_ID), plane: str = PLANE,
                index: int = INDEX, shown: str = SHOWN, fill: bool = Query(False)) -> Response:
    volume, which = _slice(request, job_id, plane, index)
    picked = {int(n) for n in shown.split(",") if n}
    names = frozenset(s.name for n, s in enumerate(volume.structures) if n in picked)
    return _png(png_bytes(overlay_slice(volume, which, index, names, fill)))
