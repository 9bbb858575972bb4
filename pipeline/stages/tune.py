"""Stage `tune`: per-class thresholds maximising out-of-fold MAP-IoU -> thresholds.json.

The search starts from the family's own defaults (`model.<family>.thresholds`) and runs over the
grids of `tune`; thresholds.json holds the thresholds and the CV scores, tuned and at the start,
overall and per class.
"""

from __future__ import annotations

import argparse

from pipeline.config import Config


def start_thresholds(cfg: Config, family: str):
    """The untuned thresholds of a family: its config defaults for every class."""
    from pipeline.core.postprocess import Thresholds

    return Thresholds(
        default=cfg.model.block(family).thresholds.to_core(),
        class_mode=cfg.tune.class_mode,
        order=cfg.tune.order,
    )


def tune(cfg: Config) -> None:
    """Search thresholds on the OOF predictions and write them with the CV scores reached."""
    from pipeline.core.coco import read_kaggle_csv
    from pipeline.core.fileio import read_json, write_json
    from pipeline.core.metrics import TruthScorer
    from pipeline.core.predictions import load_predictions
    from pipeline.core.tuning import class_groups, tune_thresholds

    layout, params = cfg.layout, cfg.tune
    (family,) = cfg.families
    preds = load_predictions(layout.predictions(family, "oof"))
    scorer = TruthScorer.from_frame(read_kaggle_csv(layout.train_csv), list(preds))
    categories = {c["id"]: c["name"] for c in read_json(layout.coco_train)["categories"]}
    grid = cfg.model.block(family).grid.values()
    groups = class_groups(preds, sorted(categories), params.class_mode, params.min_class_images)
    start = start_thresholds(cfg, family)
    result = tune_thresholds(preds, scorer, groups, grid, start, params.rounds)
    write_json(
        layout.thresholds,
        {
            "families": cfg.families,
            "thresholds": result.thresholds.to_json(),
            "categories": {str(k): v for k, v in categories.items()},
            "cv": {
                "tuned": result.score,
                "default": result.start_score,
                "tuned_per_class": scorer.per_class(result.image_scores),
                "default_per_class": scorer.per_class(result.start_image_scores),
                "images": len(preds),
            },
            "steps": result.steps,
        },
    )
    print(
        f"tune: out-of-fold MAP-IoU {result.start_score:.4f} with the default thresholds, "
        f"{result.score:.4f} tuned ({len(preds)} images) -> {layout.thresholds}"
    )


def main(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.runner import run_stage

    layout = cfg.layout
    run_stage(
        "tune",
        cfg,
        inputs=[
            *[layout.predictions(f, "oof") for f in cfg.families],
            layout.train_csv,
            layout.coco_train,
        ],
        outputs=[layout.thresholds],
        params={
            "tune": cfg.tune,
            **{
                f: {"thresholds": cfg.model.block(f).thresholds, "grid": cfg.model.block(f).grid}
                for f in cfg.families
            },
        },
        body=lambda: tune(cfg),
        force=args.force,
    )
