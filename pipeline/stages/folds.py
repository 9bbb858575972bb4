"""Stage `folds`: folds.csv (id, fold, class, group, instances) from the training COCO file."""

from __future__ import annotations

import argparse

from pipeline.config import Config
from pipeline.core.fileio import read_json
from pipeline.core.splits import coco_folds, fold_table, write_folds
from pipeline.runner import run_stage


def main(cfg: Config, args: argparse.Namespace) -> None:
    params, layout = cfg.folds, cfg.layout

    def make_folds() -> None:
        """Split the training images into folds and write `folds.csv`."""
        coco = read_json(layout.coco_train)
        table = coco_folds(coco, params.n_folds, params.seed, params.stratify_by, params.group_by)
        write_folds(layout.folds_csv, table)
        print(fold_table(table, params.stratify_by).to_string())

    run_stage(
        "folds",
        cfg,
        inputs=[layout.coco_train],
        outputs=[layout.folds_csv],
        params=params,
        body=make_folds,
        force=args.force,
    )
