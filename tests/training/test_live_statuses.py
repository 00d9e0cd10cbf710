"""Every status on a page comes from one source (issue 15.5): a record whose job already runs reads as running
everywhere on its page, and the run page's header is refreshed with its live part, not only at load."""

from __future__ import annotations

import re

from app.jobs import service as jobs
from app.models import Upload
from tests.factories import make_run


def _badge(html: str, marker: str) -> str:
    found = re.search(rf'<span class="badge badge-[a-z_]+"[^>]*{marker}[^>]*>([^<]+)</span>', html)
    assert found is not None, marker
    return found.group(1)


def test_a_queued_run_whose_job_runs_says_running_in_its_header_and_live_part(db, as_viewer) -> None:  # type: ignore[no-untyped-def]
    fixture = make_run(db, sizes={"train": 4, "dev": 4}, seed=8)
    job = jobs.enqueue(db, kind="demo.sleep", payload={"seconds": 1, "steps": 1})
    job.status = "running"
    fixture.run.status, fixture.run.job_id = "queued", job.id
    fixture.run.config = {**fixture.run.config, "human_error": 0.01}
    db.commit()
    page = as_viewer.get(f"/runs/{fixture.run.id}").text
    assert _badge(page, "data-run-status") == "running"
    live = as_viewer.get(f"/runs/{fixture.run.id}/live").text
    # The live answer carries the header badge out of band, so the two cannot drift apart while it trains.
    assert 'id="run-status" data-run-status hx-swap-oob="true">running<' in live
    assert '<span class="job-status">running' in live


def test_a_queued_upload_whose_job_runs_says_ingesting_beside_its_job_bar(db, as_viewer) -> None:  # type: ignore[no-untyped-def]
    fixture = make_run(db, sizes={"dev": 2}, seed=9)
    job = jobs.enqueue(db, kind="demo.sleep", payload={"seconds": 1, "steps": 1})
    job.status, job.message = "running", "grouping near-duplicates"
    upload = Upload(dataset_id=fixture.dataset.id, status="queued", job_id=job.id)
    db.add(upload)
    db.commit()
    panel = as_viewer.get(f"/uploads/{upload.id}/panel").text
    assert _badge(panel, "data-upload-status") == "ingesting"
    assert "grouping near-duplicates" in panel and 'hx-trigger="every 2s"' in panel
