"""The embedding map's frame times in real Chromium at 100,000 points, while panning and zooming.

A dataset of as many images is bulk-inserted into SQLite (bench/pages.py's builder), a map of generated 2-D
points (200 clusters of unequal spread) is written beside it, and ``errorbook serve`` serves the page to headless
Debian Chromium (Playwright, software rendering, as the browser tests run it). In the page a requestAnimationFrame
loop records frame timestamps while the bench drags (pan) and turns the wheel (zoom); the figure is the p95 of the
frame-to-frame times during those gestures. The same run also measures the map.js of another git revision
(``--baseline``, default main) served in place of today's, so the two figures compare on one machine and load.

    python bench/map_browser.py [--points 100000] [--baseline main] [--colour suspicion]

Goal (issue 16): 100k points pan and zoom smoothly: p95 frame time <= 33 ms (30 frames a second).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy.orm import Session  # noqa: E402

from app.core.db import make_engine  # noqa: E402
from app.core.migrate import upgrade_to_head  # noqa: E402
from app.embeddings.store import EmbeddingStore, MapStore  # noqa: E402
from app.models import EmbeddingSet  # noqa: E402

BACKBONE = "efficientnet_lite0"
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1400, "height": 1000}
# Records every frame's timestamp while window.__recording is set (the page's own clock).
RECORDER = """() => {
  window.__frames = [];
  window.__recording = false;
  const tick = (t) => { if (window.__recording) window.__frames.push(t); requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
}"""


def _pages_module():  # bench/ is not a package: load the sibling builder by path
    spec = importlib.util.spec_from_file_location("bench_pages", ROOT / "bench" / "pages.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def generated_layout(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.05, 0.95, size=(200, 2))
    spreads = rng.uniform(0.005, 0.05, size=200)
    which = rng.integers(200, size=count)
    return np.clip(centres[which] + spreads[which, None] * rng.standard_normal((count, 2)), 0, 1).astype(np.float32)


def _frame_times(page, gestures) -> list[float]:  # type: ignore[no-untyped-def]
    page.evaluate("() => { window.__frames = []; window.__recording = true; }")
    gestures()
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    frames = page.evaluate("() => { window.__recording = false; return window.__frames; }")
    return [b - a for a, b in zip(frames, frames[1:], strict=False)]


def measure(browser, base: str, token: str, dataset_id: int, *, script: str | None, colour: str, points: int) -> dict:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport=VIEWPORT, extra_http_headers={"authorization": f"Bearer {token}"})
    page = context.new_page()
    if script is not None:
        page.route("**/static/js/map.js", lambda route: route.fulfill(body=script, content_type="text/javascript"))
    page.goto(f"{base}/datasets/{dataset_id}/map")
    page.wait_for_function(
        f"() => document.querySelector('[data-map-canvas]').getAttribute('data-points') === '{points}'", timeout=120_000
    )
    if colour != "label":
        page.select_option('[data-map-controls] select[name="by"]', colour)
        page.wait_for_function(
            "() => /colour: /.test(document.querySelector('[data-map-status]').textContent)", timeout=120_000
        )
    page.evaluate(RECORDER)
    box = page.locator("[data-map-canvas]").bounding_box()
    assert box is not None
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def pan() -> None:
        for round_ in range(3):
            page.mouse.move(cx, cy)
            page.mouse.down()
            page.mouse.move(cx + 200 * (-1) ** round_, cy + 120, steps=40)
            page.mouse.up()

    def zoom() -> None:
        page.mouse.move(cx, cy)
        for step in range(40):
            page.mouse.wheel(0, -60 if step < 20 else 60)

    results = {"pan": _frame_times(page, pan), "zoom": _frame_times(page, zoom)}
    paints = page.evaluate("() => (window.errorbookMap && window.errorbookMap.paints) || []")
    context.close()
    return {**results, "paints": paints}


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95)) if values else float("nan")


def _report(name: str, found: dict) -> float:
    both = found["pan"] + found["zoom"]
    paint = (
        f"; paint itself median {statistics.median(found['paints']):.1f} ms, p95 {_p95(found['paints']):.1f} ms"
        if found["paints"]
        else ""
    )
    print(
        f"{name}: pan p95 {_p95(found['pan']):.1f} ms ({len(found['pan'])} frames), zoom p95 {_p95(found['zoom']):.1f} ms "
        f"({len(found['zoom'])} frames), both p95 {_p95(both):.1f} ms, median {statistics.median(both):.1f} ms{paint}"
    )
    return _p95(both)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--baseline", default="main", help="git revision whose static/js/map.js to compare with")
    parser.add_argument("--colour", default="suspicion", help="colour by (label, subset, correct, issue, suspicion)")
    args = parser.parse_args()
    pages = _pages_module()
    baseline = subprocess.run(
        ["git", "show", f"{args.baseline}:static/js/map.js"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="errorbook-map-browser-") as scratch:
        data_dir = Path(scratch)
        url = f"sqlite:///{data_dir / 'errorbook.db'}"
        engine = make_engine(url)
        upgrade_to_head(engine)
        data = pages.build(engine, images=args.points, dev=min(10_000, args.points // 10))
        with Session(engine) as session:
            dataset_id = session.get(pages.Run, data.run_id).dataset_id
            session.add(EmbeddingSet(dataset_id=dataset_id, backbone=BACKBONE, status="ready", count=args.points))
            session.commit()
        store = EmbeddingStore(data_dir / "embeddings", dataset_id=dataset_id, backbone=BACKBONE)
        MapStore(store).write(np.arange(1, args.points + 1), generated_layout(args.points))
        with pages.serving(url, data_dir) as base, sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            )
            try:
                print(
                    f"{args.points:,} points coloured by {args.colour}, viewport {VIEWPORT['width']}x{VIEWPORT['height']}, "
                    f"headless Chromium (software); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
                )
                old = measure(
                    browser, base, data.token, dataset_id, script=baseline, colour=args.colour, points=args.points
                )
                new = measure(
                    browser, base, data.token, dataset_id, script=None, colour=args.colour, points=args.points
                )
            finally:
                browser.close()
        before = _report(f"map.js of {args.baseline}", old)
        after = _report("map.js of this tree", new)
        print(
            f"p95 frame time: this tree {after:.1f} ms vs {args.baseline} {before:.1f} ms ({before / after:.1f}x); "
            f"goal <= 33 ms: {after / 33:.2f} of it"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
