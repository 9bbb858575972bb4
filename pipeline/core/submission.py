"""The submission CSV: `id,predicted`, one row per predicted instance, validated like Kaggle.

An image with no predicted instance still gets one row, with an empty `predicted`. Validation
checks the columns, that every id is a known image (and, by default, that every image has a row),
that every RLE is valid and inside its image, and that no two instances of an image share a pixel;
its errors name the CSV line (the header is line 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import rle
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import atomic_path

COLUMNS = ("id", "predicted")


def submission_frame(instances: Mapping[str, list[str]]) -> pd.DataFrame:
    """Rows of `id,predicted` from each image's instance RLE texts (in the order given)."""
    rows = [(image_id, text) for image_id, texts in instances.items() for text in (texts or [""])]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_submission(path: Path | str, instances: Mapping[str, list[str]]) -> pd.DataFrame:
    """Write `submission.csv` atomically; returns the frame written."""
    frame = submission_frame(instances)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return frame


def read_submission(path: Path | str) -> pd.DataFrame:
    """Read a submission CSV with its two columns as text (empty `predicted` stays '')."""
    path = Path(path)
    if not path.is_file():
        raise CellpipeError(f"missing submission file: {path}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise CellpipeError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    if list(frame.columns) != list(COLUMNS):
        raise CellpipeError(f"{path}: columns must be id,predicted, got {','.join(frame.columns)}")
    return frame


def validate_submission(
    frame: pd.DataFrame, shapes: Mapping[str, tuple[int, int]], require_all: bool = True
) -> dict[str, list[str]]:
    """Each image's instance RLE texts, after checking the frame as Kaggle would.

    shapes: (height, width) of every image that may appear. Images without rows are empty
    predictions when `require_all` is False, an error otherwise.
    """
    lines = pd.Series(np.arange(len(frame)) + 2, index=frame.index)  # CSV line numbers
    unknown = ~frame["id"].isin(list(shapes))
    if unknown.any():
        first = unknown.idxmax()
        raise CellpipeError(f"line {lines[first]}: unknown image id {frame['id'][first]!r}")
    instances: dict[str, list[str]] = {image_id: [] for image_id in shapes}
    for image_id, rows in frame.groupby("id", sort=False):
        texts = rows["predicted"].tolist()
        non_empty = [i for i, t in enumerate(texts) if t.strip()]
        if len(non_empty) < len(texts) and non_empty:
            empty_row = rows.index[next(i for i, t in enumerate(texts) if not t.strip())]
            raise CellpipeError(
                f"line {lines[empty_row]}: empty prediction for {image_id}, which has instances"
            )
        kept = [texts[i] for i in non_empty]
        try:
            rle.decode_labels(kept, shapes[image_id])  # validates runs and overlaps
        except rle.RLEError as e:
            row = rows.index[non_empty[e.instance or 0]]
            raise CellpipeError(f"line {lines[row]} ({image_id}): {e.detail}") from None
        instances[image_id] = kept
    if require_all:
        missing = [i for i in shapes if i not in set(frame["id"])]
        if missing:
            raise CellpipeError(
                f"no row for {len(missing)} image(s), e.g. {missing[0]!r}: every image needs one "
                "(an empty `predicted` for no instances)"
            )
    return instances


def image_shapes(folder: Path) -> dict[str, tuple[int, int]]:
    """(height, width) of every image in a folder, by file stem."""
    from pipeline.core.coco import IMAGE_SUFFIXES
    from pipeline.core.fileio import image_shape

    if not folder.is_dir():
        raise CellpipeError(f"missing folder: {folder}")
    shapes = {
        p.stem: image_shape(p)
        for p in sorted(folder.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES
    }
    if not shapes:
        raise CellpipeError(f"no images in {folder}")
    return shapes


def check_submission(path: Path, shapes: Mapping[str, tuple[int, int]]) -> dict[str, list[str]]:
    """Validate a submission file against the images it predicts; each image's instances."""
    try:
        return validate_submission(read_submission(path), shapes)
    except CellpipeError as e:
        raise CellpipeError(f"{path}: {e}") from None


def sample_order(sample: Path, shapes: Mapping[str, tuple[int, int]], folder: Path) -> list[str]:
    """The images of `shapes` (those of `folder`) in sample_submission.csv's order, then those it
    lacks, sorted; an id of the sample that is not one of them is an error."""
    sample_ids = pd.read_csv(sample, dtype=str)["id"].drop_duplicates()
    unknown = sorted(set(sample_ids) - set(shapes))
    if unknown:
        raise CellpipeError(f"{sample} names {unknown[0]!r}, which is not in {folder}")
    return [*sample_ids, *sorted(set(shapes) - set(sample_ids))]
