"""Stage `folds`: folds.csv (id, fold, class, group, instances) from the training COCO file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pipeline.config import Config
from pipeline.core.fileio import read_json
from pipeline.core.splits import assign_folds, fold_table, write_folds
from pipeline.runner import run_stage


def make_folds(cfg: Config) -> None:
    """Split the training images into folds and write `folds.csv`."""
    params, layout = cfg.folds, cfg.layout
    coco = read_json(layout.coco_train)
    images = pd.DataFrame(coco["images"]).rename(columns={"id": "id_coco"})
    images["id"] = [Path(name).stem for name in images["file_name"]]
    for column in (params.stratify_by, params.group_by):  # datasets without metadata: one class,
        if column not in images.columns:  # every image its own group
            images[column] = "cell" if column == params.stratify_by else images["id"]
    per_image = pd.Series([a["image_id"] for a in coco["annotations"]], dtype="int64")
    images["instances"] = images["id_coco"].map(per_image.value_counts()).fillna(0).astype(int)
    images["fold"] = assign_folds(
        images, params.n_folds, params.seed, params.stratify_by, params.group_by
    )
    table = images[["id", "fold", params.stratify_by, params.group_by, "instances"]]
    write_folds(layout.folds_csv, table)
    print(fold_table(table, params.stratify_by).to_string())


def main(cfg: Config, args: argparse.Namespace) -> None:
    run_stage(
        "folds",
        cfg,
        inputs=[cfg.layout.coco_train],
        outputs=[cfg.layout.folds_csv],
        params=cfg.folds,
        body=lambda: make_folds(cfg),
        force=args.force,
    )
