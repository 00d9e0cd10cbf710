"""Near-duplicate grouping on labelled pictures: pair precision and recall, today's rule against the old one.

    python bench/near_duplicates.py [--sheet demo_groups.png] [--min-similarity 0.9]

Pictures: real photographs that scikit-image and scikit-learn ship (whole and as four quadrant crops, which are
different pictures of similar texture), scikit-image's 200 small face photos (one layout, different people) and
the demo's 600 synthetic shapes and stripes (app/ml/demo.py). Near duplicates of a subset of them: resized,
recompressed, lightly cropped, brighter and darker. Every picture goes through what ingest does (thumbnail, dHash of
the thumbnail, pixel signature of the stored thumbnail JPEG). A pair is "predicted" when both images land in one
group and "true" when both come from one original. Goals (issue 16): precision >= 0.98, recall >= 0.90.
The demo set alone is grouped too; `--sheet` renders its groups of two or more as a contact sheet PNG.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ml.demo import generate_demo_dataset  # noqa: E402
from app.ml.images import dhash64, encode_thumbnail, pixel_signature, shrink  # noqa: E402
from app.ml.near_duplicates import (  # noqa: E402
    DEFAULT_HAMMING_THRESHOLD,
    DEFAULT_MIN_SIMILARITY,
    _component_roots,
    _distinct_values,
    _number_by_first_appearance,
    _search_close_pairs,
    group_near_duplicates,
)

PHOTOS = [
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "moon",
    "page",
    "text",
    "rocket",
    "hubble_deep_field",
    "retina",
    "grass",
    "gravel",
    "brick",
    "immunohistochemistry",
    "cell",
    "clock",
    "horse",
]


@dataclass(frozen=True)
class Picture:
    image: Image.Image
    origin: int  # pictures with the same origin are near duplicates of each other
    kind: str


def real_photos() -> list[Image.Image]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    arrays = [np.asarray(getattr(skimage.data, name)()) for name in PHOTOS]
    photos = [
        Image.fromarray(array.astype(np.uint8) * 255 if array.dtype == bool else array).convert("RGB")
        for array in arrays
    ]
    photos += [Image.fromarray(array) for array in load_sample_images().images]
    quadrants = []
    for photo in photos:
        width, height = photo.size
        for left, top in ((0, 0), (width // 2, 0), (0, height // 2), (width // 2, height // 2)):
            quadrants.append(photo.crop((left, top, left + width // 2, top + height // 2)))
    return photos + quadrants


def faces() -> list[Image.Image]:
    import skimage.data

    return [
        Image.fromarray((face * 255).astype(np.uint8)).convert("RGB").resize((100, 100), Image.Resampling.BICUBIC)
        for face in skimage.data.lfw_subset()
    ]


def variants(image: Image.Image, rng: np.random.Generator) -> list[tuple[str, Image.Image]]:
    width, height = image.size
    inset = rng.uniform(0.02, 0.05, size=4)
    crop_box = (
        round(inset[0] * width),
        round(inset[1] * height),
        round(width - inset[2] * width),
        round(height - inset[3] * height),
    )
    return [
        ("resize", image.resize((max(8, width // 2), max(8, height // 2)), Image.Resampling.BILINEAR)),
        ("recompress", Image.open(io.BytesIO(jpeg(image, quality=30))).convert("RGB")),
        ("crop", image.crop(crop_box)),
        ("brighter", ImageEnhance.Brightness(image).enhance(1.3)),
        ("darker", ImageEnhance.Brightness(image).enhance(0.7)),
    ]


def jpeg(image: Image.Image, *, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def ingest_view(image: Image.Image) -> tuple[int, np.ndarray, Image.Image]:
    """What ingest keeps: the dHash of the thumbnail and (read back from the stored JPEG) its pixel signature."""
    uploaded = Image.open(io.BytesIO(jpeg(image)))
    thumbnail = shrink(uploaded, max_side=256)
    stored = Image.open(io.BytesIO(encode_thumbnail(thumbnail)))
    return dhash64(thumbnail), pixel_signature(stored), stored


def labelled_set(rng: np.random.Generator) -> list[Picture]:
    demo = [Image.open(io.BytesIO(item.jpeg)).convert("RGB") for item in generate_demo_dataset(n_images=600)]
    bases = [("photo", image) for image in real_photos()] + [("face", image) for image in faces()]
    bases += [("demo", image) for image in demo]
    pictures = [Picture(image, origin, kind) for origin, (kind, image) in enumerate(bases)]
    # Near duplicates of every photo and face and of a third of the demo pictures (all demo pictures stay in).
    for origin, (kind, image) in enumerate(bases):
        if kind != "demo" or origin % 3 == 0:
            pictures += [Picture(variant, origin, f"{kind}/{name}") for name, variant in variants(image, rng)]
    return pictures


def old_grouping(hashes: np.ndarray) -> np.ndarray:
    """The rule before issue 16: connected components of "dHash within 4 bits"."""
    unique_hashes, inverse = _distinct_values(hashes.view(np.uint64))
    search = _search_close_pairs(unique_hashes, DEFAULT_HAMMING_THRESHOLD, 512, None)
    return _number_by_first_appearance(_component_roots(unique_hashes.size, search.first, search.second)[inverse])


def pair_scores(groups: np.ndarray, origins: np.ndarray) -> tuple[float, float, int, int]:
    """Pair precision and recall of a grouping against the origins, and the predicted and true pair counts."""

    def pairs_within(keys: np.ndarray) -> int:
        counts = np.unique(keys, return_counts=True)[1].astype(np.int64)
        return int((counts * (counts - 1) // 2).sum())

    predicted = pairs_within(groups)
    true = pairs_within(origins)
    both = pairs_within(groups.astype(np.int64) * (int(origins.max()) + 1) + origins)
    return both / max(predicted, 1), both / max(true, 1), predicted, true


def group_sizes(groups: np.ndarray) -> list[int]:
    counts = np.unique(groups, return_counts=True)[1]
    return sorted((int(count) for count in counts if count > 1), reverse=True)


def contact_sheet(pictures: list[Image.Image], groups: np.ndarray, path: Path, *, cell: int = 64) -> int:
    """One row per group of two or more (at most 24 pictures a row); returns the number of rows drawn."""
    ids, counts = np.unique(groups, return_counts=True)
    rows = [np.flatnonzero(groups == group_id)[:24] for group_id in ids[counts > 1]]
    rows.sort(key=len, reverse=True)
    sheet = Image.new("RGB", (cell * 24 + 40, max(1, len(rows)) * (cell + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for row_number, members in enumerate(rows):
        top = row_number * (cell + 4)
        draw.text((4, top + cell // 2 - 6), str(int((groups == groups[members[0]]).sum())), fill="black")
        for column, member in enumerate(members):
            sheet.paste(pictures[member].resize((cell, cell)), (40 + column * cell, top))
    sheet.save(path)
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sheet", type=Path, help="write the demo set's groups (new rule) as a PNG")
    parser.add_argument("--old-sheet", type=Path, help="write the demo set's groups under the old rule as a PNG")
    parser.add_argument("--min-similarity", type=float, default=DEFAULT_MIN_SIMILARITY)
    parser.add_argument("--threshold", type=int, default=DEFAULT_HAMMING_THRESHOLD, help="dHash bits")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    started = time.perf_counter()
    pictures = labelled_set(rng)
    views = [ingest_view(picture.image) for picture in pictures]
    hashes = np.asarray([view[0] for view in views], dtype=np.int64)
    signatures = np.stack([view[1] for view in views])
    origins = np.asarray([picture.origin for picture in pictures], dtype=np.int64)
    kinds = sorted({picture.kind for picture in pictures})
    print(
        f"{len(pictures)} pictures from {origins.max() + 1} originals, prepared in {time.perf_counter() - started:.1f} s"
    )

    started = time.perf_counter()
    new = group_near_duplicates(
        hashes, threshold=args.threshold, signatures=signatures, min_similarity=args.min_similarity
    ).group_ids
    grouping_seconds = time.perf_counter() - started
    old = old_grouping(hashes)
    for name, groups in (("old (dHash <= 4, connected components)", old), ("new (dHash + signature, leaders)", new)):
        precision, recall, predicted, true = pair_scores(groups, origins)
        print(f"{name}: pair precision {precision:.4f}, recall {recall:.4f} ({predicted} predicted, {true} true pairs)")
    print(
        f"new grouping took {grouping_seconds * 1000:.0f} ms; {args.threshold} bits, min similarity {args.min_similarity}"
    )
    kind_array = np.asarray([picture.kind for picture in pictures])
    for kind in kinds:
        if "/" not in kind:
            continue
        variant_rows = np.flatnonzero(kind_array == kind)
        base_rows = np.asarray([np.flatnonzero(origins == origins[row])[0] for row in variant_rows])
        joined = float(np.mean(new[variant_rows] == new[base_rows]))
        print(f"  {kind:20s} joined to its original: {joined:.3f} of {variant_rows.size}")

    demo_rows = np.flatnonzero(kind_array == "demo")
    demo_hashes, demo_signatures = hashes[demo_rows], signatures[demo_rows]
    demo_old = old_grouping(demo_hashes)
    demo_new = group_near_duplicates(
        demo_hashes, threshold=args.threshold, signatures=demo_signatures, min_similarity=args.min_similarity
    ).group_ids
    print(f"demo set alone ({demo_rows.size} distinct pictures): old groups of 2+ {group_sizes(demo_old)}")
    print(f"demo set alone: new groups of 2+ {group_sizes(demo_new)}")
    thumbnails = [views[row][2] for row in demo_rows]
    if args.sheet:
        print(f"wrote {contact_sheet(thumbnails, demo_new, args.sheet)} group rows to {args.sheet}")
    if args.old_sheet:
        print(f"wrote {contact_sheet(thumbnails, demo_old, args.old_sheet)} group rows to {args.old_sheet}")


if __name__ == "__main__":
    main()
