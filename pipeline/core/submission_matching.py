"""A submission (`id,predicted`) matched against the truth (train.csv layout), image by image.

Each image's rows are paired with its truth rows (`submission_images`), its RLE texts parsed into
runs with errors naming the CSV line (`parse_image`), and the runs matched directly, never painted
(`metrics.match_runs`). CSV lines count the header as line 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

import numpy as np
import pandas as pd

from pipeline.core.errors import CellpipeError, RLEError
from pipeline.core.metrics import ImageMatch, MatchTable, OverlapError, match_runs
from pipeline.core.rle import Runs, parse_runs


@dataclasses.dataclass(frozen=True)
class ImageRows:
    """One image of a submission scored against the truth: RLE texts and their CSV lines."""

    id: str
    cell_type: str
    shape: tuple[int, int]  # (height, width) from the truth rows
    true_texts: list[str]
    true_lines: np.ndarray
    pred_texts: list[str]  # non-empty `predicted` texts only
    pred_lines: np.ndarray


def submission_images(
    submission: pd.DataFrame, truth: pd.DataFrame, image_ids: Collection[str] | None = None
) -> tuple[list[ImageRows], list[str]]:
    """Pair a submission (`id,predicted`) with the truth (train.csv layout), image by image.

    `image_ids` restricts scoring to those truth images (e.g. one fold); rows of other truth
    images are ignored, ids absent from the truth are an error naming the CSV line. Truth images
    without a row, or with only empty `predicted` texts, are empty predictions: they are listed
    in the second value returned. CSV lines count the header as line 1.
    """
    truth_rows = truth.groupby("id", sort=False).indices
    unknown = ~submission["id"].isin(list(truth_rows))
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise CellpipeError(f"line {row + 2}: unknown image id {submission['id'].iloc[row]!r}")
    wanted = list(truth_rows) if image_ids is None else [i for i in truth_rows if i in image_ids]
    if image_ids is not None and (absent := set(image_ids) - set(truth_rows)):
        raise CellpipeError(f"image {sorted(absent)[0]!r} is not in the truth")
    predicted = submission["predicted"].fillna("").astype(str)
    texts = predicted.to_numpy()
    kept = np.flatnonzero(predicted.str.strip().str.len().to_numpy() > 0)
    pred_rows = submission.iloc[kept].groupby("id", sort=False).indices  # positions in `kept`
    annotation = truth["annotation"].astype(str).to_numpy()
    width = truth["width"].to_numpy()
    height = truth["height"].to_numpy()
    cell_type = truth["cell_type"].astype(str).to_numpy() if "cell_type" in truth else None
    images, empty = [], []
    for image_id in wanted:
        rows = truth_rows[image_id]
        first = rows[0]
        preds = kept[pred_rows[image_id]] if image_id in pred_rows else kept[:0]
        if not len(preds):
            empty.append(image_id)
        images.append(
            ImageRows(
                id=image_id,
                cell_type="" if cell_type is None else str(cell_type[first]),
                shape=(int(height[first]), int(width[first])),
                true_texts=annotation[rows].tolist(),
                true_lines=rows + 2,
                pred_texts=texts[preds].tolist(),
                pred_lines=preds + 2,
            )
        )
    return images, empty


def parse_image(texts: list[str], lines: np.ndarray, shape: tuple[int, int], where: str) -> Runs:
    """`rle.parse_runs` of one image's texts; errors name the CSV line (`where`: which file)."""
    try:
        return parse_runs(texts, shape)
    except RLEError as e:
        line = lines[e.instance or 0]
        raise CellpipeError(f"{where}line {line}: {e.detail}") from None


def match_image_rows(image: ImageRows) -> ImageMatch:
    """Match one image's RLE texts directly; overlapping predictions are an error."""
    truth = parse_image(image.true_texts, image.true_lines, image.shape, f"truth {image.id}: ")
    pred = parse_image(image.pred_texts, image.pred_lines, image.shape, "")
    try:
        return match_runs(truth, pred)
    except OverlapError as e:
        first, second = sorted(e.pair)
        raise CellpipeError(
            f"line {image.pred_lines[second]} ({image.id}): overlaps the prediction on "
            f"line {image.pred_lines[first]}"
        ) from None


def match_submission(
    submission: pd.DataFrame, truth: pd.DataFrame, image_ids: Collection[str] | None = None
) -> tuple[MatchTable, list[str]]:
    """Score a submission against the truth, RLE against RLE; also the ids scored as empty.

    Pixel order does not matter as long as both files use the same one.
    """
    images, empty = submission_images(submission, truth, image_ids)
    matches = {image.id: match_image_rows(image) for image in images}
    return MatchTable.from_matches(matches, {i.id: i.cell_type for i in images}), empty
