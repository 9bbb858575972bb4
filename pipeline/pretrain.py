"""Stage `pretrain`: Mask R-CNN on LIVECell -> work/pretrain/model_final.pth.

Settings: `model` (architecture) and `pretrain` (init, categories, class mapping, solver,
augmentation). Runs on several GPUs or CPU processes under `torchrun --nproc_per_node N`.
"""

from __future__ import annotations

import argparse

from pipeline.config import Config


def main(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.train import pretrain

    pretrain(cfg, force=args.force)
