"""Stage `prepare`: the competition data folder, generated (synthetic) or downloaded from Kaggle.

`prepare.source=synthetic` writes the embedded synthetic dataset in the competition's layout.
`prepare.source=kaggle` runs the real Kaggle client (`kaggle competitions download -c ...`) into a
partial folder beside the data folder (the client resumes an interrupted download), unzips it there
and renames it into place.
"""

from __future__ import annotations

import argparse

from pipeline.config import Config
from pipeline.core.synthetic import write_data_folder
from pipeline.kaggle.download import download_competition
from pipeline.runner import run_stage


def main(cfg: Config, args: argparse.Namespace) -> None:
    params = cfg.prepare

    def prepare() -> None:
        if params.source == "synthetic":
            write_data_folder(cfg.data, params.synthetic)
            print(f"prepare: synthetic competition data -> {cfg.data}")
        else:
            download_competition(params.competition, cfg.data)

    run_stage(
        "prepare",
        cfg,
        inputs=[],
        outputs=[cfg.layout.train_csv],
        params=params,
        body=prepare,
        force=args.force,
    )
