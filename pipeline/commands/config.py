"""`cellpipe config`: the resolved config as YAML; `--explain KEY`: what a key means."""

from __future__ import annotations

import argparse

from pipeline.config import Config, dump_yaml
from pipeline.config.explain import explain


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--explain",
        metavar="KEY",
        help="a dotted key (model.cellpose.size): its type, default, value and meaning; "
        "a block (model.cellpose): its keys",
    )


def main(cfg: Config, args: argparse.Namespace) -> None:
    print(
        explain(cfg, args.explain) if args.explain else dump_yaml(cfg),
        end="\n" if args.explain else "",
    )
