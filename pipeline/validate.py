"""`cellpipe validate CSV`: check a submission as Kaggle would, against the test images."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import Config
from pipeline.core.errors import CellpipeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("csv", type=Path, help="the submission CSV (id,predicted)")
    parser.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of the images it predicts (default: the data's test/)",
    )


def test_shapes(folder: Path) -> dict[str, tuple[int, int]]:
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


def check(path: Path, shapes: dict[str, tuple[int, int]]) -> dict[str, list[str]]:
    """Validate a submission file; returns each image's instances."""
    from pipeline.core.submission import read_submission, validate_submission

    try:
        return validate_submission(read_submission(path), shapes)
    except CellpipeError as e:
        raise CellpipeError(f"{path}: {e}") from None


def main(cfg: Config, args: argparse.Namespace) -> None:
    instances = check(args.csv, test_shapes(args.images or cfg.layout.test_images))
    n = sum(len(v) for v in instances.values())
    print(f"{args.csv}: valid, {n} instances in {len(instances)} images")
