"""Stage `submit`: the test instances as `submission.csv`, validated against the test images."""

from __future__ import annotations

import argparse

import pandas as pd

from pipeline.config import Config
from pipeline.core.errors import CellpipeError
from pipeline.core.submission import check_submission, image_shapes, write_submission
from pipeline.runner import run_stage


def submit(cfg: Config) -> None:
    """Validate the postprocessed test CSV and write it as the submission (and its copy)."""
    layout = cfg.layout
    shapes = image_shapes(layout.test_images)
    instances = check_submission(layout.postprocessed("test"), shapes)
    if layout.sample_submission.is_file():  # rows in the sample's order, its ids all present
        sample_ids = pd.read_csv(layout.sample_submission, dtype=str)["id"].drop_duplicates()
        unknown = sorted(set(sample_ids) - set(shapes))
        if unknown:
            raise CellpipeError(
                f"{layout.sample_submission} names {unknown[0]!r}, which is not "
                f"in {layout.test_images}"
            )
        order = [*sample_ids, *sorted(set(shapes) - set(sample_ids))]
        instances = {i: instances[i] for i in order}
    for path in filter(None, (layout.submission, cfg.submit.copy_to)):
        write_submission(path, instances)
        print(
            f"submit: {sum(map(len, instances.values()))} instances in {len(instances)} "
            f"images -> {path}"
        )


def main(cfg: Config, args: argparse.Namespace) -> None:
    layout = cfg.layout
    run_stage(
        "submit",
        cfg,
        inputs=[layout.postprocessed("test")],
        outputs=[layout.submission],
        params=cfg.submit,
        body=lambda: submit(cfg),
        force=args.force,
    )
