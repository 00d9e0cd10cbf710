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
from app.ml.images import (  # noqa: E402
    INNER_VIEW_SHARE,
    ImageInfo,
    dhash64,
    encode_thumbnail,
    inner_dhash64,
    inspect_image,
    pixel_signature,
    shrink,
)
from app.ml.near_duplicates import (  # noqa: E402
    DEFAULT_HAMMING_THRESHOLD,
    DEFAULT_MIN_SIMILARITY,
    VERIFIED_REACH,
    _component_roots,
    _distinct_values,
    _number_by_first_appearance,
    _search_close_pairs,
    group_near_duplicates,
    signature_similarity,
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


@dataclass(frozen=True)
class IngestView:
    dhash: int
    inner_dhash: int
    signature: np.ndarray
    thumbnail: Image.Image


def ingest_view(image: Image.Image, inner_share: float) -> IngestView:
    """What ingest keeps: the dHashes of the thumbnail's whole and inner views and (read back from the stored
    JPEG, as a split does) its pixel signature."""
    inspected = inspect_image(jpeg(image), needed_side=256)  # as ingest decodes it (a JPEG at a reduced DCT scale)
    assert isinstance(inspected, ImageInfo), inspected
    thumbnail = shrink(inspected.image, max_side=256)
    stored = Image.open(io.BytesIO(encode_thumbnail(thumbnail)))
    return IngestView(dhash64(thumbnail), inner_dhash64(thumbnail, share=inner_share), pixel_signature(stored), stored)


def distinct(bases: list[tuple[str, Image.Image]]) -> list[tuple[str, Image.Image]]:
    """The originals without any that look the same as an earlier one (every pixel of the 32 x 32 grey picture
    within 8 levels): scikit-image's non-face patches include two black ones, which no eye tells apart."""
    kept: list[tuple[str, Image.Image]] = []
    small: list[np.ndarray] = []
    for kind, image in bases:
        grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.int16)
        if small and (np.abs(np.stack(small) - grey).max(axis=(1, 2)) <= 8).any():
            continue
        kept.append((kind, image))
        small.append(grey)
    return kept


def labelled_set(rng: np.random.Generator) -> list[Picture]:
    demo = [Image.open(io.BytesIO(item.jpeg)).convert("RGB") for item in generate_demo_dataset(n_images=600)]
    bases = [("photo", image) for image in real_photos()] + [("face", image) for image in faces()]
    bases += [("demo", image) for image in demo]
    bases = distinct(bases)
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
    parser.add_argument("--inner-share", type=float, default=INNER_VIEW_SHARE, help="side share of the inner view")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    started = time.perf_counter()
    pictures = labelled_set(rng)
    views = [ingest_view(picture.image, args.inner_share) for picture in pictures]
    hashes = np.asarray([view.dhash for view in views], dtype=np.int64)
    inner = np.asarray([view.inner_dhash for view in views], dtype=np.int64)
    signatures = np.stack([view.signature for view in views])
    origins = np.asarray([picture.origin for picture in pictures], dtype=np.int64)
    print(
        f"{len(pictures)} pictures from {origins.max() + 1} originals, prepared in {time.perf_counter() - started:.1f} s"
    )

    def grouped(rows: np.ndarray, *, with_inner: bool, reach: int = VERIFIED_REACH) -> np.ndarray:
        return group_near_duplicates(
            hashes[rows],
            inner_hashes=inner[rows] if with_inner else None,
            threshold=args.threshold,
            signatures=signatures[rows],
            min_similarity=args.min_similarity,
            verified_reach=reach,
        ).group_ids

    every = np.arange(len(pictures))
    started = time.perf_counter()
    new = grouped(every, with_inner=True)
    grouping_seconds = time.perf_counter() - started
    whole = grouped(every, with_inner=False)
    rules = (
        ("old (dHash <= 4, connected components)", old_grouping(hashes)),
        ("session 3 (whole-view dHash <= 4 + signature)", grouped(every, with_inner=False, reach=1)),
        ("whole view only, with the verified reach", whole),
        ("new (whole or inner dHash + signature, leaders)", new),
    )
    for name, groups in rules:
        precision, recall, predicted, true = pair_scores(groups, origins)
        print(f"{name}: pair precision {precision:.4f}, recall {recall:.4f} ({predicted} predicted, {true} true pairs)")
    print(
        f"new grouping took {grouping_seconds * 1000:.0f} ms; {args.threshold} bits, min similarity "
        f"{args.min_similarity}, inner view {args.inner_share:.2f} of each side"
    )
    print_per_transformation(pictures, hashes, inner, signatures, whole, new, args)

    kind_array = np.asarray([picture.kind for picture in pictures])
    demo_rows = np.flatnonzero(kind_array == "demo")
    demo_old = old_grouping(hashes[demo_rows])
    demo_new = grouped(demo_rows, with_inner=True)
    print(f"demo set alone ({demo_rows.size} distinct pictures): old groups of 2+ {group_sizes(demo_old)}")
    print(f"demo set alone: whole view only, groups of 2+ {group_sizes(grouped(demo_rows, with_inner=False))}")
    print(f"demo set alone: new groups of 2+ {group_sizes(demo_new)}")
    thumbnails = [views[row].thumbnail for row in demo_rows]
    if args.sheet:
        print(f"wrote {contact_sheet(thumbnails, demo_new, args.sheet)} group rows to {args.sheet}")
    if args.old_sheet:
        print(f"wrote {contact_sheet(thumbnails, demo_old, args.old_sheet)} group rows to {args.old_sheet}")


def print_per_transformation(
    pictures: list[Picture],
    hashes: np.ndarray,
    inner: np.ndarray,
    signatures: np.ndarray,
    whole: np.ndarray,
    new: np.ndarray,
    args: argparse.Namespace,
) -> None:
    """Per transformation, against its original: found by the hash search (whole view only; any of the four view
    pairs), signature verified, joined to the original's group (whole view only; new), and its pair recall."""
    origins = np.asarray([picture.origin for picture in pictures], dtype=np.int64)
    kinds = np.asarray([picture.kind for picture in pictures])
    full_bits, inner_bits = hashes.view(np.uint64), inner.view(np.uint64)
    print(
        f"  {'transformation':20s} {'copies':>6s} {'hash: whole':>11s} {'any view':>8s} {'signature':>9s} "
        f"{'joined: whole':>13s} {'new':>6s} {'pair recall':>11s}"
    )
    for kind in sorted({kind for kind in kinds if "/" in kind}):
        rows = np.flatnonzero(kinds == kind)
        base = np.asarray([np.flatnonzero(origins == origins[row])[0] for row in rows])
        whole_distance = np.bitwise_count(full_bits[rows] ^ full_bits[base])
        any_distance = np.minimum.reduce(
            [
                whole_distance,
                np.bitwise_count(inner_bits[rows] ^ inner_bits[base]),
                np.bitwise_count(full_bits[rows] ^ inner_bits[base]),
                np.bitwise_count(inner_bits[rows] ^ full_bits[base]),
            ]
        )
        similar = signature_similarity(signatures[rows], signatures[base]) >= args.min_similarity
        # Pair recall of this transformation: its copies' true pairs (with the original and the other copies).
        partners = [np.flatnonzero((origins == origins[row]) & (np.arange(origins.size) != row)) for row in rows]
        pair_recall = np.mean([np.mean(new[others] == new[row]) for row, others in zip(rows, partners, strict=True)])
        print(
            f"  {kind:20s} {rows.size:6d} {np.mean(whole_distance <= args.threshold):11.3f} "
            f"{np.mean(any_distance <= args.threshold):8.3f} {np.mean(similar):9.3f} "
            f"{np.mean(whole[rows] == whole[base]):13.3f} {np.mean(new[rows] == new[base]):6.3f} {pair_recall:11.3f}"
        )


if __name__ == "__main__":
    main()
