"""Stage `postprocess`: tuned thresholds and overlap removal -> final instances, one CSV a split
(`id,predicted`, the submission format; no two instances of an image share a pixel).

`work/postprocess/<split>.csv` holds what `tune` chose (a family, or several merged with their
tuned weights); `work/postprocess/<family>/<split>.csv` each family alone with its own tuned
thresholds, so that every family is scored beside the choice.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import Config
from pipeline.core.ensemble import merge_families
from pipeline.core.errors import CellpipeError
from pipeline.core.postprocess import Thresholds, final_instances, load_tuned
from pipeline.core.predictions import load_predictions
from pipeline.core.submission import write_submission
from pipeline.runner import run_stage


def main(cfg: Config, args: argparse.Namespace) -> None:
    layout, params, families = cfg.layout, cfg.predict, cfg.families

    def write(preds: dict, thresholds: Thresholds, path: Path, desc: str) -> None:
        instances = final_instances(preds, thresholds, desc)
        frame = write_submission(path, instances)
        n = sum(len(v) for v in instances.values())
        print(f"{desc}: {n} instances in {len(instances)} images -> {path} ({len(frame)} rows)")

    def postprocess() -> None:
        """Write the chosen and every family's final instances for every predicted split."""
        tuned = load_tuned(layout.thresholds)
        if set(tuned.family_thresholds) != set(families):
            raise CellpipeError(
                f"{layout.thresholds} was tuned for {sorted(tuned.family_thresholds)}, "
                f"predict.models is {families}: rerun `cellpipe tune`"
            )
        for split in params.splits:
            preds = {f: load_predictions(layout.predictions(f, split)) for f in families}
            for family in families:
                thresholds = tuned.family_thresholds[family]
                path = layout.postprocessed(split, family)
                write(preds[family], thresholds, path, f"postprocess {family} {split}")
            chosen = merge_families(preds, tuned.weights, params.merge_iou, params.min_votes)
            write(chosen, tuned.thresholds, layout.postprocessed(split), f"postprocess {split}")

    run_stage(
        "postprocess",
        cfg,
        inputs=[
            layout.thresholds,
            *[layout.predictions(f, s) for f in families for s in params.splits],
        ],
        outputs=[layout.postprocessed(s, f) for s in params.splits for f in [None, *families]],
        params=params,
        body=postprocess,
        force=args.force,
    )
