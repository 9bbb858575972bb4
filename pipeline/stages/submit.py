"""Stage `submit`: the test instances as `submission.csv`, validated against the test images."""

from __future__ import annotations

import argparse

from pipeline.config import Config
from pipeline.core.submission import (
    check_submission,
    image_shapes,
    sample_order,
    write_submission,
)
from pipeline.runner import run_stage


def main(cfg: Config, args: argparse.Namespace) -> None:
    layout = cfg.layout

    def submit() -> None:
        """Validate the postprocessed test CSV and write it as the submission (and its copy)."""
        shapes = image_shapes(layout.test_images)
        instances = check_submission(layout.postprocessed("test"), shapes)
        if layout.sample_submission.is_file():  # rows in the sample's order, its ids all present
            order = sample_order(layout.sample_submission, shapes, layout.test_images)
            instances = {i: instances[i] for i in order}
        for path in filter(None, (layout.submission, cfg.submit.copy_to)):
            write_submission(path, instances)
            print(
                f"submit: {sum(map(len, instances.values()))} instances in {len(instances)} "
                f"images -> {path}"
            )

    run_stage(
        "submit",
        cfg,
        inputs=[layout.postprocessed("test")],
        outputs=[layout.submission],
        params=cfg.submit,
        body=submit,
        force=args.force,
    )
