"""Stage `kernels`: the offline Kaggle bundle and the inference / training notebooks under
`work/kernels/` (see `pipeline.kaggle.bundle`)."""

from __future__ import annotations

import argparse

from pipeline.config import Config
from pipeline.kaggle.bundle import build, inputs
from pipeline.kaggle.metadata import kernel_folders
from pipeline.runner import run_stage


def main(cfg: Config, args: argparse.Namespace) -> None:
    run_stage(
        "kernels",
        cfg,
        inputs=inputs(cfg),
        outputs=[cfg.layout.kernels_manifest, *kernel_folders(cfg).values()],
        params=cfg,
        body=lambda: build(cfg),
        force=args.force,
    )
