"""Stage `push`: the `cellpipe kernels` folders to Kaggle, then the code submission
(see `pipeline.kaggle.push`)."""

from __future__ import annotations

import argparse

from pipeline.config import Config
from pipeline.kaggle.push import push


def main(cfg: Config, args: argparse.Namespace) -> None:
    push(cfg)
