"""`cellpipe models`: the registered model families, one line each."""

from __future__ import annotations

import argparse

from pipeline.config import Config


def main(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.models import families

    for name, cls in families().items():
        summary = (cls.__doc__ or "").strip().splitlines()[0].rstrip(".")
        kind = "trained" if cls.config_class.trainable else "no training"
        chosen = " (model.family)" if name == cfg.model.family else ""
        print(f"{name:<12} {kind:<12} {summary}{chosen}")
