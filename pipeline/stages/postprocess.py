"""Stage `postprocess`: tuned thresholds and overlap removal -> final instances, one CSV a split
(`id,predicted`, the submission format; no two instances of an image share a pixel).

`work/postprocess/<split>.csv` holds what `tune` chose (a family, or several merged with their
tuned weights); `work/postprocess/<family>/<split>.csv` each family alone with its own tuned
thresholds, so that every family is scored beside the choice.
"""

from __future__ import annotations

import argparse

from tqdm import tqdm

from pipeline.config import Config
from pipeline.core import rle
from pipeline.core.ensemble import merge_families
from pipeline.core.errors import CellpipeError
from pipeline.core.postprocess import load_tuned, postprocess_image
from pipeline.core.predictions import load_predictions
from pipeline.core.submission import write_submission
from pipeline.runner import run_stage


def write_instances(preds: dict, thresholds, path, desc: str) -> None:
    """Postprocess every image's predictions and write them as a submission-format CSV."""
    instances = {}
    for image_id, pred in tqdm(preds.items(), desc=desc, unit="img"):
        labels, _ = postprocess_image(pred, thresholds)
        instances[image_id] = list(rle.encode_labels(labels).values())
    frame = write_submission(path, instances)
    n = sum(len(v) for v in instances.values())
    print(f"{desc}: {n} instances in {len(instances)} images -> {path} ({len(frame)} rows)")


def postprocess(cfg: Config) -> None:
    """Write the chosen and every family's final instances for every predicted split."""
    layout, params = cfg.layout, cfg.predict
    tuned = load_tuned(layout.thresholds)
    if set(tuned.family_thresholds) != set(cfg.families):
        raise CellpipeError(
            f"{layout.thresholds} was tuned for {sorted(tuned.family_thresholds)}, predict.models "
            f"is {cfg.families}: rerun `cellpipe tune`"
        )
    for split in params.splits:
        preds = {f: load_predictions(layout.predictions(f, split)) for f in cfg.families}
        for family in cfg.families:
            path = layout.postprocessed(split, family)
            thresholds = tuned.family_thresholds[family]
            write_instances(preds[family], thresholds, path, f"postprocess {family} {split}")
        chosen = merge_families(preds, tuned.weights, params.merge_iou, params.min_votes)
        path = layout.postprocessed(split)
        write_instances(chosen, tuned.thresholds, path, f"postprocess {split}")


def main(cfg: Config, args: argparse.Namespace) -> None:
    layout = cfg.layout
    splits = cfg.predict.splits
    run_stage(
        "postprocess",
        cfg,
        inputs=[
            layout.thresholds,
            *[layout.predictions(f, s) for f in cfg.families for s in splits],
        ],
        outputs=[layout.postprocessed(s, f) for s in splits for f in [None, *cfg.families]],
        params=cfg.predict,
        body=lambda: postprocess(cfg),
        force=args.force,
    )
