"""Issue 15 item 18: wording. No "(checked)" on an unchecked box, counts in the singular when there is one,
no job status said twice ("queued queued", "succeeded done"), "seed" only for random seeds."""

from __future__ import annotations

import re

from app.jobs import service as jobs
from app.models import Job
from app.web.templating import env
from tests.factories import make_run


def _text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_counts_are_singular_for_one() -> None:
    counted = env.filters["counted"]
    said = (counted(1, "source"), counted(2, "source"), counted(1_000, "image"))
    assert said == ("1 source", "2 sources", "1,000 images")


def test_the_dataset_and_run_pages_say_1_source_and_1_epoch(db, as_viewer) -> None:
    fixture = make_run(db, sizes={"train": 2, "dev": 2})
    fixture.run.config = {**fixture.run.config, "epochs": 1}
    db.commit()
    dataset = _text(as_viewer.get(f"/datasets/{fixture.dataset.id}").text)
    assert "1 source." in dataset and "1 sources" not in dataset
    assert "1 epoch ·" in _text(as_viewer.get(f"/runs/{fixture.run.id}").text)


def test_a_job_never_says_its_status_twice(db, as_viewer) -> None:
    job = jobs.enqueue(db, kind="demo.sleep", payload={})
    db.commit()
    bar = _text(as_viewer.get(f"/jobs/{job.id}/bar").text)
    assert "queued queued" not in bar and bar.count("queued") == 1
    finished = db.get(Job, job.id)
    assert finished is not None
    finished.status, finished.message, finished.progress = "succeeded", "done", 1.0
    db.commit()
    assert "succeeded done" not in _text(as_viewer.get(f"/jobs/{job.id}/bar").text)
    assert "succeeded done" not in _text(as_viewer.get("/jobs").text)


def test_no_checked_label_on_an_unchecked_box_and_seed_means_a_random_seed(db, as_reviewer) -> None:
    fixture = make_run(db, sizes={"train": 2, "dev": 2})
    db.commit()
    form = as_reviewer.get(f"/datasets/{fixture.dataset.id}/splits").text
    box = re.search(r'<input type="checkbox" name="use_imported"(?P<attrs>[^>]*)>(?P<text>[^<]*)', form)
    assert box and "(checked)" not in box.group("text")
    home = _text(as_reviewer.get("/").text)
    assert "seed's" not in home and "seed's" not in _text(form)
    assert "Random seed" in form
