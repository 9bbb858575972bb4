"""`cellpipe validate CSV`: check a submission as Kaggle would, against the test images."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import Config
from pipeline.core.submission import check_submission, image_shapes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("csv", type=Path, help="the submission CSV (id,predicted)")
    parser.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of the images it predicts (default: the data's test/)",
    )


def main(cfg: Config, args: argparse.Namespace) -> None:
    instances = check_submission(args.csv, image_shapes(args.images or cfg.layout.test_images))
    n = sum(len(v) for v in instances.values())
    print(f"{args.csv}: valid, {n} instances in {len(instances)} images")
