"""`cellpipe overlay REPORT`: pictures of a scored submission, to look at before trusting it.

REPORT is a `cellpipe score` JSON (`work/scores/<submission>.json`). For each class, the `--worst`
lowest-scoring images with the predicted outlines (magenta) over the image and the true ones
(green), white where they coincide, named `<class>_<score>_<id>.png`, and `histogram.png` of
every image's score per class, in `--output` (default: beside the report, `<report>_overlays/`).
`cellpipe score --overlays N` writes the same after scoring.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import Config
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import read_json
from pipeline.core.overlays import overlays_dir, report_overlays


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", type=Path, help="a `cellpipe score` JSON report")
    parser.add_argument("--worst", type=int, default=8, help="images per class (lowest scores)")
    parser.add_argument("--output", type=Path, default=None, help="folder for the PNGs")


def main(cfg: Config, args: argparse.Namespace) -> None:
    if not args.report.is_file():
        raise CellpipeError(f"missing score report {args.report} (run cellpipe score first)")
    folders = [*cfg.image_folders("train"), *cfg.image_folders("test")]
    out = args.output or overlays_dir(args.report)
    written = report_overlays(read_json(args.report), folders, out, args.worst)
    print(f"overlay: {len(written) - 1} images and a score histogram -> {out}")
