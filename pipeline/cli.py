"""`cellpipe COMMAND [--config FILE] [key.sub=value ...]`: one entry point for every stage.

User mistakes (bad input, missing files, bad config) end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.core.errors import CellpipeError

# command -> module; each module has `main(cfg, args)` and may have `add_arguments(parser)`.
# Heavy imports stay inside those functions.
COMMANDS = {
    "prepare": ("pipeline.prepare", "download or generate the competition data"),
    "convert": ("pipeline.convert", "competition CSV / label images -> COCO JSON"),
    "folds": ("pipeline.folds", "k-fold split stratified by cell type, grouped by sample"),
    "pretrain": ("pipeline.pretrain", "train Mask R-CNN on LIVECell"),
    "finetune": ("pipeline.finetune", "fine-tune the pretrained model on every fold"),
    "predict": ("pipeline.predict", "out-of-fold and test predictions, with TTA and ensembling"),
    "tune": ("pipeline.tune", "per-class thresholds that maximise out-of-fold MAP-IoU"),
    "postprocess": ("pipeline.postprocess", "thresholds and overlap removal -> final instances"),
    "submit": ("pipeline.submit", "write and validate submission.csv"),
    "validate": ("pipeline.validate", "check a submission CSV as Kaggle would"),
    "score": ("pipeline.score", "score a submission CSV against train.csv (MAP-IoU, GlaS)"),
    "leaderboard": ("pipeline.leaderboard", "the local leaderboard of scored submissions"),
    "kernels": ("pipeline.kernels", "offline Kaggle bundle, inference and training notebooks"),
    "push": ("pipeline.push", "upload the bundle and kernels to Kaggle, submit the inference"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and one sub-parser per command, with the options all share."""
    parser = argparse.ArgumentParser(
        prog="cellpipe", description="cellpipe: a Kaggle pipeline for cell instance segmentation"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {}
    for name, (_, help_text) in COMMANDS.items():
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
    module = importlib.import_module(COMMANDS[command][0])
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
