"""Stage `finetune`: per trained family, one model per fold ->
work/finetune/<family>/fold{k}/model_best.pth, and work/finetune/summary.json.

Settings: `model` and `finetune` (init: the pretrained model by default, else random weights
where pretrain had no data; folds; solver with a lower lr; augmentation). Each fold's model is
validated on the fold's held-out images. Runs on several GPUs or CPU processes under
`torchrun --nproc_per_node N`.
"""

from __future__ import annotations

import argparse

from pipeline.config import Config
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import read_json
from pipeline.core.splits import coco_ids_by_fold
from pipeline.runner import run_stage


def main(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.training.engine import distributed_context
    from pipeline.training.runs import (
        init_weights,
        run_params,
        train_run,
        write_summary,
    )

    layout, train = cfg.layout, cfg.finetune
    for path in (layout.coco_train, layout.folds_csv):
        if not path.is_file():
            raise CellpipeError(f"missing input {path} (run the stage that writes it first)")
    folds = coco_ids_by_fold(read_json(layout.coco_train), layout.folds_csv)
    chosen = cfg.folds_trained
    unknown = sorted(set(chosen) - set(folds))
    if unknown:
        raise CellpipeError(
            f"folds {unknown} to train (finetune.folds, else folds.n_folds): "
            f"{layout.folds_csv} has folds {sorted(folds)}"
        )
    families = cfg.trained_families
    with distributed_context(train.solver.device) as ctx:
        for family in families:
            start = init_weights(cfg, family, train)
            if start is None and train.start(family) == "pretrain" and ctx.main:
                print(f"finetune: no pretrained {family} model: starting from random weights")
            for k in chosen:
                params = run_params(cfg, family, train, fold=k)
                held_out = set(folds[k])
                ids = ([i for j in folds for i in folds[j] if j != k], sorted(held_out))
                run_stage(
                    f"finetune_{family}_fold{k}",
                    cfg,
                    inputs=[
                        layout.coco_train,
                        layout.folds_csv,
                        *cfg.image_folders("train"),
                        *([start] if start else []),
                        *([layout.coco_pseudo] if train.pseudo else []),
                    ],
                    outputs=[layout.finetune_model(family, k)],
                    params=params,
                    body=lambda family=family, k=k, ids=ids, params=params, start=start: train_run(
                        cfg,
                        params,
                        train,
                        layout.finetune_run(family, k),
                        (layout.coco_train, layout.coco_train),
                        ids,
                        start,
                        ctx,
                        layout.coco_pseudo if train.pseudo else None,
                    ),
                    force=args.force,
                )
        if ctx.main:
            write_summary(
                layout.finetune_summary,
                {f: {k: layout.finetune_model(f, k) for k in chosen} for f in families},
            )
