"""The run page's live part: it polls while the run trains, then has the page reload once so that the header
(status, links to error analysis, review and model files) is current too."""

from __future__ import annotations

from tests.factories import make_run


def test_the_live_part_has_a_polling_page_reload_only_once_the_run_has_ended(db, as_viewer) -> None:  # type: ignore[no-untyped-def]
    fixture = make_run(db, sizes={"train": 4, "dev": 4}, seed=3)
    db.commit()
    live = f"/runs/{fixture.run.id}/live"

    fixture.run.status = "running"
    db.commit()
    running = as_viewer.get(live)
    assert running.status_code == 200 and 'hx-trigger="every 2s"' in running.text
    assert "hx-refresh" not in running.headers

    fixture.run.status = "failed"  # any end: succeeded, failed or cancelled
    db.commit()
    ended = as_viewer.get(live)
    assert ended.status_code == 200 and 'hx-trigger="every 2s"' not in ended.text
    assert ended.headers["hx-refresh"] == "true"
