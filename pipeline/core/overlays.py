"""Pictures to look at before trusting a score: predicted outlines over the image with the true
ones in another colour, and a histogram of per-image scores per class."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from skimage.segmentation import find_boundaries

from pipeline.core import rle
from pipeline.core.fileio import atomic_path, read_image

TRUE_COLOUR = (0, 220, 0)  # green
PREDICTED_COLOUR = (255, 0, 255)  # magenta
BOTH_COLOUR = (255, 255, 255)  # where the outlines coincide


def grey_rgb(image: np.ndarray) -> np.ndarray:
    """An image (H, W) or (H, W, C) as grey RGB uint8, stretched between its 1st and 99th
    percentiles."""
    grey = image.astype(np.float32)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    low, high = np.percentile(grey, [1, 99])
    grey = np.clip((grey - low) / max(high - low, 1e-6), 0, 1)
    return np.repeat((255 * grey).astype(np.uint8)[..., None], 3, axis=2)


def outline_overlay(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the image in grey, true instance outlines green, predicted magenta,
    white where both lie (label images: 0 background, one id per instance)."""
    out = grey_rgb(image)
    true_edge = find_boundaries(truth, mode="inner")
    pred_edge = find_boundaries(predicted, mode="inner")
    out[true_edge] = TRUE_COLOUR
    out[pred_edge] = PREDICTED_COLOUR
    out[true_edge & pred_edge] = BOTH_COLOUR
    return out


def label_image(texts: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
    """int32 label image of Kaggle RLE rows (later rows over earlier ones; empty rows skipped)."""
    labels = np.zeros(shape, np.int32)
    for k, text in enumerate(t for t in texts if isinstance(t, str) and t.strip()):
        labels[rle.decode(text, shape)] = k + 1
    return labels


def score_histogram(scores: Mapping[str, Sequence[float]], bins: int = 10) -> np.ndarray:
    """(H, W, 3) uint8 bar chart: per class, how many images score in each tenth of [0, 1]."""
    width, row, margin = 60 * bins, 90, 110
    canvas = Image.new("RGB", (width + margin, row * max(len(scores), 1) + 20), "white")
    draw = ImageDraw.Draw(canvas)
    edges = np.linspace(0, 1, bins + 1)
    for r, (name, values) in enumerate(sorted(scores.items())):
        counts, _ = np.histogram(np.clip(values, 0, 1), edges)
        top = 10 + r * row
        draw.text((5, top + row // 2 - 10), f"{name or '-'}\nn={len(values)}", fill="black")
        for b, count in enumerate(counts):
            height = int((row - 25) * count / max(counts.max(), 1))
            x0 = margin + b * 60
            draw.rectangle([x0 + 4, top + row - 20 - height, x0 + 56, top + row - 20], fill="teal")
            draw.text((x0 + 22, top + row - 18), f"{edges[b]:.1f}", fill="black")
            if count:
                draw.text((x0 + 24, top + row - 33 - height), str(count), fill="black")
    return np.asarray(canvas)


def write_png_rgb(path: Path, pixels: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def write_overlays(
    per_image: Sequence[Mapping],
    submission: pd.DataFrame,
    truth: pd.DataFrame,
    image_paths: Mapping[str, Path],
    out: Path,
    worst: int,
) -> list[Path]:
    """The `worst` lowest-scoring images of each class as overlays (`<class>_<score>_<id>.png`)
    and `histogram.png` of every image's score per class, under `out`; the paths written.

    per_image: {"id", "class", "score"} per image (a `cellpipe score` report's `per_image`);
    submission / truth: Kaggle rows (`id`, `predicted` / `annotation`, truth with width, height).
    """
    written = []
    by_class: dict[str, list[Mapping]] = {}
    for row in per_image:
        by_class.setdefault(str(row["class"]), []).append(row)
    predicted = submission.groupby("id")["predicted"].apply(list).to_dict()
    true_rows = truth.groupby("id")
    for name, rows in sorted(by_class.items()):
        for row in sorted(rows, key=lambda r: r["score"])[:worst]:
            image_id = row["id"]
            if image_id not in image_paths:
                continue
            first = true_rows.get_group(image_id).iloc[0]
            shape = (int(first["height"]), int(first["width"]))
            picture = outline_overlay(
                read_image(image_paths[image_id]),
                label_image(true_rows.get_group(image_id)["annotation"].tolist(), shape),
                label_image(predicted.get(image_id, []), shape),
            )
            path = out / f"{name or 'all'}_{row['score']:.3f}_{image_id}.png"
            write_png_rgb(path, picture)
            written.append(path)
    histogram = out / "histogram.png"
    write_png_rgb(
        histogram, score_histogram({c: [r["score"] for r in v] for c, v in by_class.items()})
    )
    return [*written, histogram]


def overlays_dir(report: Path) -> Path:
    """Where a score report's pictures go: `<report stem>_overlays/` beside it."""
    return report.with_name(f"{report.stem}_overlays")


def report_overlays(
    report: Mapping, image_folders: Sequence[Path], out: Path, worst: int
) -> list[Path]:
    """`write_overlays` for a `cellpipe score` report (it names its submission and truth CSVs),
    the images found by id in `image_folders`."""
    from pipeline.core.coco import IMAGE_SUFFIXES, read_kaggle_csv
    from pipeline.core.submission import read_submission

    paths = {
        p.stem: p
        for folder in image_folders
        for p in sorted(Path(folder).iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES
    }
    submission = read_submission(Path(report["submission"]))
    truth = read_kaggle_csv(Path(report["truth"]))
    return write_overlays(report["per_image"], submission, truth, paths, out, worst)
