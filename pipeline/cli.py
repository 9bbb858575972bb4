"""`cellpipe COMMAND [--config FILE] [key.sub=value ...]`: one entry point for every stage.

User mistakes (bad input, missing files, bad config) end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.core.errors import CellpipeError

# command -> module; each module has `main(cfg, args)` and may have `add_arguments(parser)`.
COMMANDS = {
    "prepare": ("pipeline.prepare", "download or generate the competition data"),
    "convert": ("pipeline.convert", "competition CSV / label images -> COCO JSON"),
    "folds": ("pipeline.folds", "k-fold split stratified by cell type, grouped by sample"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellpipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", "-c", default=None, help="YAML config (see configs/)")
        p.add_argument("--force", action="store_true", help="run even if outputs are up to date")
        p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
        module = importlib.import_module(module_name)
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import load_config

    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        cfg = load_config(args.config, args.overrides)
        module.main(cfg, args)
    except CellpipeError as e:
        print(f"cellpipe {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cellpipe {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
