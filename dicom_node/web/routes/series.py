"""Series: instance count, completion state and reason; search by patient ID, accession number or UID;
PHI (patient ID, accession number) masked for viewers, who may not search by it either."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path as FilePath
from typing import Any

import pydicom
from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydicom.errors import InvalidDicomError

from dicom_node.db import overview
from dicom_node.db.overview import SeriesRow
from dicom_node.web.auth import Principal, Reader
from dicom_node.web.phi import PHI_KEYWORDS, masked
from dicom_node.web.schemas import SeriesDetailOut
from dicom_node.web.state import node_state, render

router = APIRouter()
MAX_ID = 2**31 - 1
PATIENT_ID = Query("", max_length=64)
UID = Query("", max_length=64)
ACCESSION = Query("", max_length=16)


def _out(row: SeriesRow, who: Principal) -> SeriesRow:
    return replace(row, patient_id=masked(row.patient_id, who.role),
                   accession_number=masked(row.accession_number, who.role))


def header_of(path: str | None, who: Principal) -> dict[str, str]:
    """The identifying elements of one stored instance (read from its file, not kept in the index), masked."""
    if path is None:
        return {}
    try:
        ds = pydicom.dcmread(FilePath(path), stop_before_pixels=True, specific_tags=list(PHI_KEYWORDS))
    except (OSError, InvalidDicomError):
        return {}
    return {k: masked(str(ds.get(k, "") or ""), who.role) for k in PHI_KEYWORDS}


def search(request: Request, who: Principal, patient_id: str, uid: str, limit: int,
           accession: str = "") -> list[SeriesRow]:
    # a viewer may list series but not search by a patient identifier (the search would reveal it)
    if patient_id and masked(patient_id, who.role) != patient_id:
        raise HTTPException(status_code=403, detail="your role may not search by patient ID")
    if accession and masked(accession, who.role) != accession:
        raise HTTPException(status_code=403, detail="your role may not search by accession number")
    with node_state(request).factory() as session:
        return [_out(r, who) for r in overview.series_list(session, patient_id, uid, limit, accession)]


def detail(request: Request, who: Principal, series_id: int) -> SeriesDetailOut:
    with node_state(request).factory() as session:
        row = overview.series_row(session, series_id)
        if row is None:
            raise HTTPException(status_code=404, detail=f"no series {series_id}")
        path = overview.first_instance_path(session, series_id)
        jobs = [j.id for j in overview.jobs_list(session, series_id=series_id)]
    return SeriesDetailOut(series=_out(row, who), header=header_of(path, who), jobs=jobs)


@router.get("/api/series", response_model=list[SeriesRow], tags=["series"],
            responses={403: {"description": "a search by patient ID or accession number by a role that may not "
                                             "see them"}})
def api_series(request: Request, who: Reader, patient_id: str = PATIENT_ID, uid: str = UID,
               accession: str = ACCESSION, limit: int = Query(100, ge=1, le=1000)) -> list[SeriesRow]:
    return search(request, who, patient_id, uid, limit, accession)


@router.get("/api/series/{series_id}", response_model=SeriesDetailOut, tags=["series"],
            responses={404: {"description": "no such series"}})
def api_series_detail(request: Request, who: Reader, series_id: int = Path(ge=1, le=MAX_ID)) -> SeriesDetailOut:
    return detail(request, who, series_id)


@router.get("/series", include_in_schema=False)
def series_page(request: Request, who: Reader, patient_id: str = PATIENT_ID, uid: str = UID,
                accession: str = ACCESSION) -> Any:
    return render(request, "series.html", {"rows": search(request, who, patient_id, uid, 200, accession),
                                           "patient_id": patient_id, "uid": uid, "accession": accession})


@router.get("/series/{series_id}", include_in_schema=False)
def series_detail_page(request: Request, who: Reader, series_id: int = Path(ge=1, le=MAX_ID)) -> Any:
    return render(request, "series_detail.html", {"d": detail(request, who, series_id)})
