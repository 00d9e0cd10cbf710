"""Issue 15 item 13: /runs shows each run's dataset and split, filters by dataset, and the baseline badge says
which dataset's baseline it is."""

from __future__ import annotations

import re

from tests.factories import make_run


def _rows(page: str) -> list[str]:
    body = re.search(r"<tbody>(.*?)</tbody>", page, re.S)
    assert body
    return re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)


def test_runs_show_dataset_and_split_filter_by_dataset_and_say_whose_baseline(db, as_viewer, as_reviewer) -> None:
    birds = make_run(db, sizes={"train": 2, "dev": 2}, name="Birds", seed=1)
    cars = make_run(db, sizes={"train": 2, "dev": 2}, name="Cars", seed=2)
    db.commit()
    assert as_reviewer.post(f"/api/runs/{birds.run.id}/baseline").status_code == 200

    page = as_viewer.get("/runs").text
    assert "<th>Dataset</th>" in page and "<th>Split</th>" in page
    rows = {re.search(r'href="/runs/(\d+)"', row).group(1): row for row in _rows(page)}  # type: ignore[union-attr]
    bird_row, car_row = rows[str(birds.run.id)], rows[str(cars.run.id)]
    assert "Birds" in bird_row and f'href="/splits/{birds.split.id}"' in bird_row and "v1" in bird_row
    assert "Cars" in car_row
    assert "baseline of Birds" in bird_row and "baseline" not in car_row
    assert re.search(r'<select name="dataset_id"[^>]*>.*Birds.*Cars', page, re.S)  # the filter

    filtered = as_viewer.get(f"/runs?dataset_id={cars.dataset.id}").text
    assert [re.search(r'href="/runs/(\d+)"', row).group(1) for row in _rows(filtered)] == [str(cars.run.id)]  # type: ignore[union-attr]
    assert re.search(rf'<option value="{cars.dataset.id}" selected>Cars', filtered)

    detail = as_viewer.get(f"/runs/{birds.run.id}").text
    assert "baseline of Birds" in detail
