"""`cellpipe COMMAND [--config FILE] [key.sub=value ...]`: one entry point for every stage.

User mistakes (bad input, missing files, bad config) end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.core.errors import CellpipeError

# command -> help; each command is the module pipeline.stages.<command>, with `main(cfg, args)`
# and maybe `add_arguments(parser)`. Heavy imports stay inside those functions.
COMMANDS = {
    "prepare": "download or generate the competition data",
    "convert": "competition CSV / label images -> COCO JSON",
    "folds": "k-fold split stratified by cell type, grouped by sample",
    "pretrain": "train each model family on LIVECell",
    "finetune": "train each model family on every fold",
    "predict": "out-of-fold and test predictions, with TTA and ensembling",
    "tune": "per-class thresholds that maximise out-of-fold MAP-IoU",
    "pseudo": "pseudo-labels for the unlabelled images (train_semi_supervised/)",
    "postprocess": "thresholds and overlap removal -> final instances",
    "submit": "write and validate submission.csv",
    "validate": "check a submission CSV as Kaggle would",
    "score": "score a submission CSV against train.csv (MAP-IoU, GlaS)",
    "leaderboard": "the local leaderboard of scored submissions",
    "overlay": "pictures of a scored submission: worst images' outlines, a score histogram",
    "kernels": "offline Kaggle bundle, inference and training notebooks",
    "push": "upload the bundle and kernels to Kaggle, submit the inference",
    "models": "the registered model families",
    "import-weights": "detectron2 / LIVECell / torchvision / cellpose weights -> an `init` file",
    "fetch-weights": "pretrained weights that packages on the index ship -> a cached `init` file",
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and one sub-parser per command, with the options all share."""
    parser = argparse.ArgumentParser(
        prog="cellpipe", description="cellpipe: a Kaggle pipeline for cell instance segmentation"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {}
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", "-c", default=None, help="YAML config (see configs/)")
        p.add_argument("--force", action="store_true", help="run even if outputs are up to date")
        commands[name] = p
    return parser, commands


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import load_config

    argv = sys.argv[1:] if argv is None else list(argv)
    parser, commands = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints the help, or the error for a missing/unknown command
    command = argv[0]
    # only the chosen command's module is imported; its own arguments come before the overrides,
    # and options may stand anywhere (`validate FILE --config C key=value`)
    module = importlib.import_module(f"pipeline.stages.{command.replace('-', '_')}")
    sub = commands[command]
    if hasattr(module, "add_arguments"):
        module.add_arguments(sub)
    sub.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    args = sub.parse_intermixed_args(argv[1:])
    args.command = command
    try:
        cfg = load_config(args.config, args.overrides)
        module.main(cfg, args)
    except CellpipeError as e:
        print(f"cellpipe {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cellpipe {command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
