"""`cellpipe COMMAND [--config FILE] [key.sub=value ...]`: one entry point for every command.

User mistakes (bad input, missing files, bad config) end with one line on stderr and exit code 2.
Any other exception is a bug or a fault of the machine: its type and whole message (and those of
the exceptions it was raised from) on stderr, exit code 1; with `--debug` or CELLPIPE_DEBUG=1,
its full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from pipeline.config import load_config
from pipeline.core.errors import CellpipeError

# command -> (its module, help). A module holds `main(cfg, args)` and maybe
# `add_arguments(parser)`; only the chosen command's module is imported. Pipeline stages (files in,
# files out, chained by make) are in pipeline/stages/, other commands in pipeline/commands/.
# torch (and pipeline.models / pipeline.training, which import it) is imported inside functions,
# so that `cellpipe --help` and the commands that need no model stay fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("pipeline.stages.prepare", "download or generate the competition data"),
    "convert": ("pipeline.stages.convert", "competition CSV / label images -> COCO JSON"),
    "folds": ("pipeline.stages.folds", "k-fold split stratified by cell type, grouped by sample"),
    "pretrain": ("pipeline.stages.pretrain", "train each model family on LIVECell"),
    "finetune": ("pipeline.stages.finetune", "train each model family on every fold"),
    "predict": (
        "pipeline.stages.predict",
        "out-of-fold and test predictions, with TTA and ensembling",
    ),
    "tune": ("pipeline.stages.tune", "per-class thresholds that maximise out-of-fold MAP-IoU"),
    "pseudo": (
        "pipeline.stages.pseudo",
        "pseudo-labels for the unlabelled images (train_semi_supervised/)",
    ),
    "postprocess": (
        "pipeline.stages.postprocess",
        "thresholds and overlap removal -> final instances",
    ),
    "submit": ("pipeline.stages.submit", "write and validate submission.csv"),
    "validate": ("pipeline.commands.validate", "check a submission CSV as Kaggle would"),
    "score": ("pipeline.stages.score", "score a submission CSV against train.csv (MAP-IoU, GlaS)"),
    "leaderboard": ("pipeline.commands.leaderboard", "the local leaderboard of scored submissions"),
    "overlay": (
        "pipeline.commands.overlay",
        "pictures of a scored submission: worst images' outlines, a score histogram",
    ),
    "kernels": (
        "pipeline.stages.kernels",
        "offline Kaggle bundle, inference and training notebooks",
    ),
    "push": (
        "pipeline.stages.push",
        "upload the bundle and kernels to Kaggle, submit the inference",
    ),
    "config": (
        "pipeline.commands.config",
        "the resolved config as YAML, or what a key means (--explain KEY)",
    ),
    "models": ("pipeline.commands.models", "the registered model families"),
    "import-weights": (
        "pipeline.commands.import_weights",
        "detectron2 / LIVECell / torchvision / cellpose weights -> an `init` file",
    ),
    "fetch-weights": (
        "pipeline.commands.fetch_weights",
        "pretrained weights that packages on the index ship -> a cached `init` file",
    ),
}


DEBUG_HELP = (
    "on an unexpected error (a bug or a fault of the machine, not a mistake in the input), "
    "print its full traceback; CELLPIPE_DEBUG=1 does the same"
)
EXIT_CODES = (
    "exit codes: 0 done; 2 a mistake in the input, files or config (one line on stderr); "
    "1 an unexpected error (its type and message; --debug for the traceback); 130 interrupted"
)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and one sub-parser per command, with the options all share."""
    parser = argparse.ArgumentParser(
        prog="cellpipe",
        description="cellpipe: a Kaggle pipeline for cell instance segmentation",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {}
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXIT_CODES)
        p.add_argument("--config", "-c", default=None, help="YAML config (see configs/)")
        p.add_argument("--force", action="store_true", help="run even if outputs are up to date")
        p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
        commands[name] = p
    return parser, commands


def debug_from_env() -> bool:
    """CELLPIPE_DEBUG set to anything but empty or 0."""
    return os.environ.get("CELLPIPE_DEBUG", "") not in ("", "0")


def report_unexpected(command: str, error: Exception, debug: bool) -> None:
    """On stderr: the traceback (debug), else the type and whole message of `error` and of each
    exception it was raised from, and how to see the traceback."""
    if debug:
        traceback.print_exception(error)
        return
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    for i, e in enumerate(chain):
        text = "".join(traceback.format_exception_only(e)).rstrip()
        print(
            f"cellpipe {command}: unexpected error: {text}" if i == 0 else f"  from {text}",
            file=sys.stderr,
        )
    print(
        f"cellpipe {command}: for the traceback, rerun as `cellpipe --debug {command} ...` "
        "or with CELLPIPE_DEBUG=1",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, commands = build_parser()
    debug = argv[:1] == ["--debug"]  # `cellpipe --debug COMMAND ...`
    rest = argv[1:] if debug else argv
    if not rest or rest[0] not in COMMANDS:
        parser.parse_args(argv)  # prints the help, or the error for a missing/unknown command
    command = rest[0]
    debug = debug or debug_from_env()
    try:
        # only the chosen command's module is imported; its own arguments come before the
        # overrides, and options may stand anywhere (`validate FILE --config C key=value`)
        module = importlib.import_module(COMMANDS[command][0])
        sub = commands[command]
        if hasattr(module, "add_arguments"):
            module.add_arguments(sub)
        sub.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
        args = sub.parse_intermixed_args(rest[1:])
        args.command = command
        debug = debug or args.debug
        cfg = load_config(args.config, args.overrides)
        module.main(cfg, args)
    except CellpipeError as e:
        print(f"cellpipe {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cellpipe {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or the machine's fault: keep its cause, exit code 1
        report_unexpected(command, e, debug)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
