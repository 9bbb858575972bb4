"""Stage `finetune`: one model per fold -> work/finetune/fold{k}/model_best.pth, summary.json.

Settings: `model` and `finetune` (init: the pretrained model by default, folds, solver with a
lower lr, augmentation). Runs on several GPUs or CPU processes under `torchrun --nproc_per_node N`.
"""

from __future__ import annotations

import argparse

from pipeline.config import Config


def main(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.train import finetune

    finetune(cfg, force=args.force)
