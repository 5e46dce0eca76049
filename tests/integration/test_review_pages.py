"""The review viewer's routes over real HTTP: view.json, the CT and overlay PNG layers, what they refuse;
the review pages' wording of waited time."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dicom_node.db.admin_tables import Role
from dicom_node.db.engine import open_index
from dicom_node.web.routes.review_pages import waited_text
from tests.conftest import make_settings
from tests.review_helpers import PATIENT_ID, HeldCt, held_ct_job
from tests.web_server import WebNode, serve_web


@pytest.fixture()
def held(tmp_path: Path) -> Iterator[tuple[WebNode, HeldCt]]:
    settings = make_settings(tmp_path)
    factory = open_index(settings.node.database_url)
    job = held_ct_job(settings, factory, slices=20, size=128)
    with serve_web(settings, factory) as web:
        web.add_user("phil", Role.PHYSICIST)
        web.add_user("vic", Role.VIEWER)
        yield web, job


def _image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_the_viewer_routes_draw_a_held_jobs_slices(held: tuple[WebNode, HeldCt]) -> None:
    web, job = held
    client, _csrf = web.login("vic")  # images carry no patient data: every role sees them
    assert client.get(f"/review/{job.job_id}/view.json", follow_redirects=False).status_code == 200
    view = client.get(f"/review/{job.job_id}/view.json").json()
    assert {p: (v["count"], v["width"], v["height"]) for p, v in view["planes"].items()} == {
        "axial": (20, 512, 512), "coronal": (128, 512, 100), "sagittal": (128, 512, 100)}  # 102.4 x 20 mm
    assert [s["name"] for s in view["structures"]] == ["Lung_L", "Lung_R", "SpinalCord", "External"]
    assert view["structures"][0]["colour"] == "#ffb300" and view["presets"]["lung"] == {"level": -600, "width": 1500}
    ct = client.get(f"/review/{job.job_id}/ct/axial/10.png?window=lung")
    assert ct.headers["content-type"] == "image/png" and "max-age" in ct.headers["cache-control"]
    lung, bone = _image(ct.content), _image(client.get(f"/review/{job.job_id}/ct/axial/10.png?window=bone").content)
    soft = _image(client.get(f"/review/{job.job_id}/ct/axial/10.png?window=soft_tissue").content)
    assert lung.shape == (512, 512) and soft[0, 0] == 0 and 50 < lung[0, 0] < 70  # air: black, dark grey
    assert lung[256, 256] > soft[256, 256] > bone[256, 256]  # the body's 40 HU under each preset
    overlay = _image(client.get(f"/review/{job.job_id}/overlay/axial/10.png?shown=0&fill=true").content)
    assert overlay.shape == (512, 512, 4)
    coloured = overlay[overlay[..., 3] > 0]
    assert len(coloured) > 1000 and np.all(coloured[:, :3] == (255, 179, 0))  # Lung_L alone, filled
    assert not _image(client.get(f"/review/{job.job_id}/overlay/axial/10.png").content)[..., 3].any()
    assert client.get(f"/review/{job.job_id}/overlay/coronal/127.png?shown=0,1,2,3").status_code == 200
    assert client.get(f"/review/{job.job_id}/ct/axial/20.png").status_code == 404
    assert client.get(f"/review/{job.job_id}/ct/axial/1.png?window=liver").status_code == 422
    assert client.get(f"/review/{job.job_id}/ct/oblique/1.png").status_code == 422
    assert client.get(f"/review/{job.job_id}/overlay/axial/1.png?shown=a").status_code == 422
    assert client.get("/review/999/view.json").status_code == 404
    assert client.get("/review/999").status_code == 404
    page = client.get(f"/review/{job.job_id}")
    assert PATIENT_ID not in page.text and 'id="approve"' not in page.text
    phil, _ = web.login("phil")
    page = phil.get(f"/review/{job.job_id}").text
    assert PATIENT_ID in page and 'id="approve"' in page and 'data-structure="External"' in page
    (web.settings.worker.output_dir / f"job-{job.job_id:06d}" / "labels.nii.gz").unlink()  # gone: loaded again
    gone = client.get(f"/review/{job.job_id}/view.json")
    assert gone.status_code == 409 and "label map" in gone.json()["detail"]
    anonymous = web.login("phil")[0]
    anonymous.cookies.clear()
    assert anonymous.get(f"/review/{job.job_id}/ct/axial/1.png").status_code in (303, 401)


@pytest.mark.parametrize(("seconds", "text"), [(-3, "0 s"), (45, "45 s"), (125, "2 min"),
                                               (3 * 3600 + 300, "3 h 05 min"), (2 * 86400 + 4 * 3600 + 59, "2 d 4 h")])
def test_waited_time_in_words(seconds: int, text: str) -> None:
    assert waited_text(seconds) == text
