"""Stage `postprocess`: tuned thresholds and overlap removal -> final instances, one CSV a split
(`id,predicted`, the submission format; no two instances of an image share a pixel)."""

from __future__ import annotations

import argparse

from pipeline.config import Config


def postprocess(cfg: Config) -> None:
    """Write `work/postprocess/<split>.csv` for every predicted split."""
    from tqdm import tqdm

    from pipeline.core import rle
    from pipeline.core.postprocess import load_thresholds, postprocess_image
    from pipeline.core.predictions import load_predictions
    from pipeline.core.submission import write_submission

    layout = cfg.layout
    thresholds = load_thresholds(layout.thresholds)
    (family,) = cfg.families
    for split in cfg.predict.splits:
        preds = load_predictions(layout.predictions(family, split))
        instances = {}
        for image_id, pred in tqdm(preds.items(), desc=f"postprocess {split}", unit="img"):
            labels, _ = postprocess_image(pred, thresholds)
            instances[image_id] = list(rle.encode_labels(labels).values())
        frame = write_submission(layout.postprocessed(split), instances)
        n = sum(len(v) for v in instances.values())
        print(
            f"postprocess: {split}: {n} instances in {len(instances)} images "
            f"-> {layout.postprocessed(split)} ({len(frame)} rows)"
        )


def main(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.runner import run_stage

    layout = cfg.layout
    splits = cfg.predict.splits
    run_stage(
        "postprocess",
        cfg,
        inputs=[
            layout.thresholds,
            *[layout.predictions(f, s) for f in cfg.families for s in splits],
        ],
        outputs=[layout.postprocessed(s) for s in splits],
        params=cfg.predict,
        body=lambda: postprocess(cfg),
        force=args.force,
    )
