"""The whole product, the way a user meets it: headless Chromium against a real ``errorbook serve`` with its
embedded worker, on SQLite and on Postgres.

A small learnable dataset (coloured shapes from two sources, 8 target labels flipped on purpose) goes in as
a folder and as a zip; the target source is set; a split is previewed and made; a run trains from the form while
its page updates; dev errors are tagged with the keyboard and the ceiling table follows; a review campaign fixes
the flipped labels in dev and test; the re-scored metrics improve; the split's ImageFolder export holds the fixes.

Every page is saved as a screenshot under the test's tmp dir, and, when ERRORBOOK_SCREENSHOT_DIR is set, there
too under stable names (the README's pictures come from that: see README "Pages")."""

from __future__ import annotations

import io
import os
import re
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import Page, expect

from tests.browser import add_user, chromium, log_in, serve, server_env

pytestmark = [pytest.mark.browser, pytest.mark.slow]

COLOURS = {"red": (214, 48, 49), "green": (39, 174, 96), "blue": (41, 98, 255)}
WEB_PER_CLASS, PHONE_PER_CLASS = 8, 20
DATA_SEED = 8  # with it the flipped labels land in dev (3) and in test (3): see the assertion below
FLIPPED = 8  # target images filed under the wrong class: what the review must find
VIEWPORT = {"width": 1280, "height": 800}
DOCS_MAX_HEIGHT = 1500  # README pictures: the top of long pages is enough, and keeps each file small
JOB_TIMEOUT_MS = 240_000
USER, PASSWORD = "ada", "ada-password-123"


@dataclass
class Picture:
    path: str  # as uploaded: class folder / file
    truth: str


@dataclass
class Data:
    folder: Path
    archive: Path
    pictures: dict[str, Picture] = field(default_factory=dict)  # by file name

    @property
    def flipped(self) -> set[str]:
        return {name for name, p in self.pictures.items() if p.path.split("/")[0] != p.truth}


def _shape(colour: tuple[int, int, int], rng: np.random.Generator, *, phone: bool) -> bytes:
    """The class's shape in its colour on a background tinted with it; phone pictures are darker and noisier."""
    side = 96
    tint = rng.uniform(0.25, 0.45)
    background = tuple(int((1 - tint) * rng.integers(215, 245) + tint * c) for c in colour)
    picture = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(picture)
    x0, y0 = (int(v) for v in rng.integers(4, 36, 2))
    x1, y1 = (int(v) for v in rng.integers(60, 92, 2))
    fill = tuple(int(np.clip(c + rng.normal(0, 12), 0, 255)) for c in colour)
    # Each class has its shape as well as its colour: red discs, green squares, blue triangles.
    if colour == COLOURS["red"]:
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif colour == COLOURS["green"]:
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    # A grey stroke somewhere, so that no two pictures look alike to the near-duplicate detector.
    grey = int(rng.integers(60, 160))
    draw.line([tuple(int(v) for v in rng.integers(0, side, 2)) for _ in range(3)], fill=(grey,) * 3, width=5)
    pixels = np.asarray(picture, dtype=np.float64)
    if phone:
        pixels = pixels * 0.85
    pixels = np.clip(pixels + rng.normal(0, 12 if phone else 6, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def _make_data(root: Path, *, seed: int = DATA_SEED) -> Data:
    rng = np.random.default_rng(seed)  # pictures
    names = list(COLOURS)
    data = Data(folder=root / "web-photos", archive=root / "phone-photos.zip")
    for label in names:
        for index in range(WEB_PER_CLASS):
            name = f"web_{label}_{index:02d}.jpg"
            path = data.folder / label / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_shape(COLOURS[label], rng, phone=False))
            data.pictures[name] = Picture(f"{label}/{name}", label)
    # Which labels to flip comes from a generator of its own: tuning the pictures must not move them.
    flip_rng = np.random.default_rng([seed, 1])
    flip = set(flip_rng.choice(len(names) * PHONE_PER_CLASS, size=FLIPPED, replace=False).tolist())
    with zipfile.ZipFile(data.archive, "w") as archive:
        for number in range(len(names) * PHONE_PER_CLASS):
            truth = names[number % len(names)]
            filed = names[(number + 1) % len(names)] if number in flip else truth
            name = f"phone_{number:03d}.jpg"
            archive.writestr(f"{filed}/{name}", _shape(COLOURS[truth], rng, phone=True))
            data.pictures[name] = Picture(f"{filed}/{name}", truth)
    return data


class Clock:
    """Prints how long each step took (for the report, never asserted: timing belongs in bench/)."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.step = "start"

    def __call__(self, step: str) -> None:
        now = time.monotonic()
        print(f"journey: {self.step} {now - self.last:.1f} s (total {now - self.started:.1f} s)")
        self.step, self.last = step, now


class Shots:
    """Full-page screenshots under the tmp dir; with ERRORBOOK_SCREENSHOT_DIR, also the README's copies."""

    def __init__(self, tmp_dir: Path) -> None:
        self.tmp_dir = tmp_dir
        tmp_dir.mkdir(parents=True, exist_ok=True)
        docs = os.environ.get("ERRORBOOK_SCREENSHOT_DIR")
        self.docs = Path(docs) if docs else None
        if self.docs:
            self.docs.mkdir(parents=True, exist_ok=True)
        self.taken: list[str] = []

    def __call__(self, page: Page, name: str) -> None:
        page.screenshot(path=str(self.tmp_dir / f"{name}.png"), full_page=True)
        self.taken.append(name)
        if self.docs:
            height = min(int(page.evaluate("document.documentElement.scrollHeight")), DOCS_MAX_HEIGHT)
            target = self.docs / f"{name}.png"
            page.screenshot(
                path=str(target), full_page=True, clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height}
            )
            _shrink(target)


def _shrink(path: Path) -> None:
    """Screenshots of a UI have few colours: a 256-colour palette keeps them sharp at a fraction of the size."""
    with Image.open(path) as picture:
        small = picture.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def _percent(text: str) -> float:
    found = re.search(r"(-?[0-9.]+)\s*%", text)
    assert found, text
    return float(found.group(1))


def _rescored(page: Page, scope: str, subset: str) -> tuple[float, float]:
    """(error before, error after) of one subset from a re-scored cell ``12.5% → 3.1%``."""
    text = page.inner_text(f'{scope} [data-rescored="{subset}"]')
    before, after = text.split("→")
    return _percent(before), _percent(after)


@pytest.fixture
def served(fresh_database, tmp_path: Path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    env = server_env(data_dir=tmp_path / "data", database_url=fresh_database.url)
    add_user(env, USER, password=PASSWORD, role="admin")
    with serve(env, tmp_path / "serve.log", worker=True) as base_url:
        yield base_url


def test_a_user_takes_a_dataset_from_upload_to_fixed_labels_and_export(served: str, tmp_path: Path) -> None:
    base = served
    data = _make_data(tmp_path / "input")
    shots = Shots(tmp_path / "screenshots")
    clock = Clock()
    with chromium() as browser:
        context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(30_000)

        # -- log in ---------------------------------------------------------------------------------------------
        clock("log in")
        page.goto(f"{base}/login?next=/datasets")
        shots(page, "login")
        log_in(page, base, USER, PASSWORD, then="/datasets")

        # -- create a dataset ------------------------------------------------------------------------------------
        clock("dataset")
        page.fill('input[name="name"]', "Colour shapes")
        page.fill('input[name="description"]', "Shapes from the web and from phones; phones are what we serve.")
        page.click("button:has-text('Create')")
        page.wait_for_selector("h1:has-text('Colour shapes')")
        dataset_url = page.url
        dataset_id = int(dataset_url.rstrip("/").rsplit("/", 1)[-1])

        # -- upload a folder, then a zip: bytes first, then the ingest job ---------------------------------------
        clock("uploads")
        for source, pick, what, expected in (
            ("web", "[data-pick-folder]", data.folder, WEB_PER_CLASS * len(COLOURS)),
            ("phone", "[data-pick-files]", data.archive, PHONE_PER_CLASS * len(COLOURS)),
        ):
            page.goto(f"{base}/datasets/{dataset_id}/upload")
            page.fill('input[name="source"]', source)
            page.set_input_files(pick, str(what))
            expect(page.locator("[data-start]")).to_be_enabled()
            page.click("[data-start]")
            expect(page.locator("[data-progress]")).to_be_visible()  # the byte progress bar
            page.wait_for_selector("[data-upload-panel] .job progress")  # the ingest job's bar
            page.wait_for_selector('[data-upload-panel][data-status="done"]', timeout=JOB_TIMEOUT_MS)
            assert page.evaluate("document.querySelector('[data-bytes-progress]').value") == 1
            expect(page.locator('[data-upload-panel] [data-count="accepted"]')).to_have_text(str(expected))
            expect(page.locator('[data-upload-panel] [data-count="rejected"]')).to_have_text("0")
            shots(page, "upload")

        # -- the dataset page: counts by label and source; the target source ------------------------------------
        clock("target")
        page.goto(dataset_url)
        expect(page.locator("[data-image-count]")).to_have_text(str(len(data.pictures)))
        page.select_option('select[name="target_source"]', "phone")
        page.click("button:has-text('Set target')")
        expect(page.locator("[data-target]")).to_have_text("phone")
        counts = page.inner_text("[data-counts]")
        assert all(label in counts for label in COLOURS) and "target" in counts
        page.locator("#image-grid .thumb img").first.wait_for()
        shots(page, "dataset")
        page.goto(f"{base}/datasets")
        expect(page.locator("[data-datasets]")).to_contain_text("phone")
        shots(page, "datasets")

        # -- preview, then create a split: dev and test hold target images only ----------------------------------
        clock("split")
        page.goto(f"{base}/datasets/{dataset_id}/splits")
        expect(page.locator('select[name="target_source"]')).to_have_value("phone")
        page.wait_for_selector("#split-preview h2")
        page.fill('input[name="target_train_fraction"]', "0.25")
        page.locator('input[name="target_train_fraction"]').dispatch_event("change")
        # The preview follows the form: a quarter of the 60 target images to train leaves 23 each for dev and test.
        expect(page.locator("#split-preview tr.total")).to_contain_text("23")
        shots(page, "split-form")
        page.click("button:has-text('Create this split')")
        page.wait_for_url(re.compile(r"/splits/\d+$"))
        split_url = page.url
        _reload_until(page, "h1 .badge", "ready")
        composition = page.inner_text("main")
        assert "phone" in composition and "web" in composition
        shots(page, "split")

        # -- train from the form; the run page updates by itself -------------------------------------------------
        clock("training")
        page.click("a:has-text('Train on this split')")
        page.wait_for_selector("h1:has-text('New training run')")
        expect(page.locator('select[name="backbone"]')).to_have_value("efficientnet_lite0")
        page.select_option('select[name="mode"]', "linear")
        page.fill('input[name="epochs"]', "12")
        page.fill('input[name="lr"]', "0.01")
        page.fill('input[name="patience"]', "12")
        page.fill('input[name="human_error_percent"]', "1")
        shots(page, "run-form")
        page.click("button:has-text('Start training')")
        page.wait_for_url(re.compile(r"/runs/\d+$"))
        run_url = page.url
        # The page follows the job by itself (the test never reloads it): progress messages, then the curves.
        seen = _watch_run(page)
        assert seen[-1][0] == "succeeded", f"the run ended {seen[-1]}"
        assert len({message for _, message, _ in seen}) >= 2, seen
        expect(page.locator("#run-live svg.chart polyline")).to_have_count(4)  # loss and accuracy, train and dev
        expect(page.locator("#run-live svg.chart").first).to_contain_text("epoch")
        expect(page.locator("#run-live")).to_contain_text("Error by subset")
        expect(page.locator("a:has-text('Error analysis')")).to_be_visible()
        accuracy = {
            row.locator("td").nth(0).inner_text(): _percent(row.locator("td").nth(2).inner_text())
            for row in page.locator("section:has(h2:text-is('Error by subset')) tbody tr").all()
        }
        assert accuracy["dev"] >= 70, accuracy  # learnable: most of dev is right (chance is a third)
        # The run says what scored it, and its "try the model" box answers new files (a non-image by name).
        expect(page.locator("#run-inference")).to_contain_text("ONNX Runtime")
        red_web = data.folder / "red" / "web_red_00.jpg"
        notes = tmp_path / "notes.jpg"
        notes.write_text("not a picture")
        page.set_input_files("[data-predict-input]", [str(red_web), str(notes)])
        expect(page.locator("[data-predict-results] .prediction")).to_have_count(2)
        first_guess = page.locator("[data-predict-results] .prediction").first
        expect(first_guess.locator(".prediction-row")).to_have_count(3)  # top-5 of three labels
        expect(first_guess.locator(".prediction-label").first).to_have_text("red")
        expect(page.locator("[data-predict-results] .prediction-refused")).to_contain_text("refused")
        expect(page.locator("#onnx-preprocessing")).to_contain_text("centre-crop 224")
        page.goto(f"{base}/runs")
        shots(page, "runs")

        # -- error analysis: open each sampled dev error, tag it with the keyboard --------------------------------
        clock("error analysis")
        page.goto(f"{run_url}/errors?subset=dev")
        page.locator("details.errors-categories summary").click()
        page.fill('details.errors-categories input[name="name"][placeholder]', "other")
        page.click("details.errors-categories button:has-text('Add')")
        page.wait_for_selector("[data-card].selected")
        expect(page.locator('[data-tag-row="mislabeled"] [data-count]')).to_have_text("0")
        card_ids = page.eval_on_selector_all("[data-card]:not(.correct)", "cards => cards.map(c => c.dataset.imageId)")
        assert card_ids, "the run made no dev errors: nothing to analyse"
        mislabeled = other = 0
        for position, image_id in enumerate(card_ids):
            if position:
                page.keyboard.press("ArrowRight")
            expect(page.locator(f"#card-{image_id}")).to_have_class(re.compile(r"\bselected\b"))
            page.keyboard.press("Enter")
            detail = page.locator(f'#detail [data-detail][data-image-id="{image_id}"]')
            filename = detail.locator("p.muted").first.inner_text().split(" ")[0].rsplit("/", 1)[-1]
            if filename in data.flipped:
                page.keyboard.press("m")
                mislabeled += 1
                tag = "mislabeled"
            else:
                page.keyboard.press("2")
                other += 1
                tag = "other"
            page.wait_for_selector(f'#card-{image_id} [data-tag-name="{tag}"]')
        page.keyboard.press("Escape")
        assert mislabeled, "no flipped label reached the dev errors"
        expect(page.locator('[data-tag-row="mislabeled"] [data-count]')).to_have_text(str(mislabeled))
        if other:
            expect(page.locator('[data-tag-row="other"] [data-count]')).to_have_text(str(other))
        expect(page.locator("[data-reviewed]")).to_have_text(str(len(card_ids)))
        shots(page, "errors")

        # -- is fixing labels worth it? start a campaign over dev and test ----------------------------------------
        clock("review")
        page.goto(f"{run_url}/review")
        expect(page.locator("[data-mislabeled-share]")).to_be_visible()
        shots(page, "review-start")
        page.fill('input[name="suspicious_per_subset"]', "8")
        page.fill('input[name="correct_per_subset"]', "2")
        page.uncheck("[data-require-agreement]")  # one reviewer on this journey: relabels apply at once
        page.click('[data-start-review] button[type="submit"]')
        page.wait_for_url(re.compile(r"/reviews/\d+"))
        review_url = page.url.split("?", 1)[0]
        page.click("[data-claim]")
        page.wait_for_selector("[data-item].selected")
        keys = dict(
            page.eval_on_selector_all(
                "[data-review-toolbar] [data-key]", "buttons => buttons.map(b => [b.dataset.labelKey, b.dataset.key])"
            )
        )
        fixed: dict[str, dict[str, str]] = {"dev": {}, "test": {}}
        while page.locator('[data-item][data-status="pending"]').count():
            item = page.locator("[data-item].selected")
            image_id = item.get_attribute("data-image-id")
            subset = item.get_attribute("data-subset") or ""
            detail = page.locator(f'#review-detail [data-item-detail][data-image-id="{image_id}"]')
            filename = detail.locator("p.muted").first.inner_text().split(" ")[0].rsplit("/", 1)[-1]
            truth = data.pictures[filename].truth
            if item.get_attribute("data-label") != truth:
                page.keyboard.press(keys[truth])
                page.wait_for_selector(f'#item-{image_id}[data-status="relabeled"]')
                fixed[subset][filename] = truth
            else:
                page.keyboard.press("k")
                page.wait_for_selector(f'#item-{image_id}[data-status="kept"]')
            if page.locator('[data-item][data-status="pending"]').count():
                # the page moves on to the next undecided item by itself
                expect(page.locator(f"#item-{image_id}")).not_to_have_class(re.compile(r"\bselected\b"))
        assert fixed["dev"] and fixed["test"], f"the campaign should fix labels in dev and test: {fixed}"

        # -- the run, re-scored against the fixed labels: both errors fall ----------------------------------------
        clock("re-scored")
        page.goto(review_url + "?view=all")
        first = page.locator("[data-item]").first
        expect(page.locator("#review-detail [data-item-detail]")).to_have_attribute(
            "data-image-id", first.get_attribute("data-image-id") or ""
        )
        if first.get_attribute("data-status") == "relabeled":  # its history: the import, then our fix
            history = page.locator("#review-detail table.label-history tbody tr")
            expect(history).to_have_count(2)
        for subset in ("dev", "test"):
            before, after = _rescored(page, "#review-progress", subset)
            assert after < before, (subset, before, after)
        # The large view is as tall as the window (it scrolls on its own): a tall window shows all of it.
        page.set_viewport_size({"width": VIEWPORT["width"], "height": DOCS_MAX_HEIGHT})
        shots(page, "review")
        page.set_viewport_size(VIEWPORT)
        page.goto(run_url)
        expect(page.locator("th:has-text('Error after label fixes')")).to_be_visible()
        shots(page, "run")  # curves, and the errors against the fixed labels
        page.goto(f"{base}/jobs")
        expect(page.locator("#jobs-table")).to_contain_text("succeeded")
        assert "failed" not in page.inner_text("#jobs-table")
        shots(page, "jobs")
        page.goto(f"{base}/users")
        shots(page, "users")

        # -- export the split as an ImageFolder zip: the fixes are in it ------------------------------------------
        clock("export")
        page.goto(split_url)
        with page.expect_download() as download_info:
            page.click("a:has-text('Export (ImageFolder zip)')")
        exported = tmp_path / "export.zip"
        download_info.value.save_as(exported)
        context.close()
    clock("end")

    with zipfile.ZipFile(exported) as archive:
        names = [name for name in archive.namelist() if not name.endswith("/")]
        assert archive.testzip() is None
    layout = re.compile(r"^(train|train_dev|dev|test)/(red|green|blue)/[^/]+\.jpg$")
    assert len(names) == len(data.pictures) and all(layout.match(name) for name in names), names[:5]
    where = {name.rsplit("/", 1)[-1]: name.split("/")[:2] for name in names}
    assert {subset for subset, _ in where.values()} == {"train", "dev", "test"}
    assert all(where[name][0] == "train" for name in where if name.startswith("web_"))  # not the target source
    for subset, changes in fixed.items():
        for filename, truth in changes.items():
            assert where[filename] == [subset, truth]
    assert {"login", "dataset", "upload", "split-form", "split", "run", "errors", "review", "jobs"} <= set(shots.taken)
    assert all((shots.tmp_dir / f"{name}.png").stat().st_size > 5_000 for name in shots.taken)


def _watch_run(page: Page, *, timeout_s: float = JOB_TIMEOUT_MS / 1000) -> list[tuple[str, str, int]]:
    """What the run page shows, each time it changes, until the run ends: (status, job message, curve count)."""
    deadline = time.monotonic() + timeout_s
    seen: list[tuple[str, str, int]] = []
    while not seen or seen[-1][0] in ("queued", "running"):
        assert time.monotonic() < deadline, f"the run did not finish: {seen[-1:]}"
        try:
            message = page.locator("#run-live .job-message")
            state = (
                page.locator("h1 .badge").first.inner_text(timeout=5_000).strip(),
                message.inner_text(timeout=1_000).strip() if message.count() else "",
                page.locator("#run-live svg.chart polyline").count(),
            )
        except Exception:  # the page is being replaced (its own refresh when the run ends): look again
            page.wait_for_timeout(200)
            continue
        if not seen or state != seen[-1]:
            seen.append(state)
        page.wait_for_timeout(250)
    return seen


def _reload_until(page: Page, selector: str, text: str, *, timeout_s: float = JOB_TIMEOUT_MS / 1000) -> None:
    """Pages of finished background work say "reload": do that, as a person would, until it shows ``text``."""
    deadline = time.monotonic() + timeout_s
    while page.locator(selector).first.inner_text().strip() != text:
        assert time.monotonic() < deadline, f"{selector} never showed {text!r}"
        page.wait_for_timeout(500)
        page.reload()
