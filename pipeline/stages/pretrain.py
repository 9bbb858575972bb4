"""Stage `pretrain`: each trained family on LIVECell -> work/pretrain/<family>/model_final.pth.

Settings: `model` (families, blocks) and `pretrain` (init, categories, class mapping, solver,
augmentation). Without LIVECell (no `LIVECell_dataset_2021/` in the data, or
`convert.livecell=false`) it pretrains nothing and says so; `finetune` then starts from random
weights or its `init`. `work/pretrain/summary.json` names each family's model (or none). Runs on
several GPUs or CPU processes under `torchrun --nproc_per_node N`.
"""

from __future__ import annotations

import argparse

from pipeline.config import Config
from pipeline.runner import run_stage


def main(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.training.engine import distributed_context
    from pipeline.training.runs import (
        init_weights,
        run_params,
        train_run,
        write_pretrain_summary,
    )

    layout, train = cfg.layout, cfg.pretrain
    sources = [layout.coco_livecell_train, layout.coco_livecell_val]
    families = cfg.trained_families
    if not all(p.is_file() for p in sources):
        print(
            f"pretrain: skipped, no LIVECell data ({layout.livecell} absent or "
            "convert.livecell=false): finetune starts from finetune.init"
        )
        models = {}
    else:
        models = {f: layout.pretrain_model(f) for f in families}
        with distributed_context(train.solver.device) as ctx:
            for family in families:
                params = run_params(cfg, family, train)
                start = (
                    None if train.start(family) == "pretrain" else init_weights(cfg, family, train)
                )
                run_stage(
                    f"pretrain_{family}",
                    cfg,
                    inputs=[*sources, *([start] if start else [])],
                    outputs=[models[family]],
                    params=params,
                    body=lambda family=family, params=params, start=start: train_run(
                        cfg,
                        params,
                        train,
                        layout.pretrain_run(family),
                        (layout.coco_livecell_train, layout.coco_livecell_val),
                        (None, None),
                        start,
                        ctx,
                    ),
                    force=args.force,
                )
            if not ctx.main:
                return
    write_pretrain_summary(layout, {f: models.get(f) for f in families})
