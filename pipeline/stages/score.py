"""Stage `score`: a submission CSV against train.csv -> a printed table, a JSON file, a ledger line.

`cellpipe score --submission S [--truth train.csv] [--folds 0,1] [--output F.json] [--note TEXT]`

MAP-IoU overall, per class (the image's cell_type) and per threshold (with TP/FP/FN), plus the
GlaS metrics listed in `score.glas_metrics`. RLE is scored against RLE, never painted. Truth images
with no row in the submission count as empty predictions (and are listed); `--folds` (default
`score.folds`) keeps only those folds' images (folds.csv). The JSON goes to `--output`, by default
`<work_dir>/scores/<submission stem>.json`; unless `score.record=false` the result is recorded in
the ledger (`cellpipe leaderboard`). A malformed CSV or RLE, an unknown id, overlapping predicted
masks or runs past the image end stop with one line naming the CSV line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import Config
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import read_json, write_json
from pipeline.core.ledger import make_entry, record
from pipeline.core.provenance import config_hash
from pipeline.runner import run_stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--submission", type=Path, required=True, help="CSV with id,predicted")
    parser.add_argument("--truth", type=Path, default=None, help="default: the data's train.csv")
    parser.add_argument("--folds", default=None, help="comma-separated folds, e.g. 0,1")
    parser.add_argument("--output", type=Path, default=None, help="JSON report path")
    parser.add_argument("--note", default="", help="free text kept in the ledger")
    parser.add_argument(
        "--overlays",
        type=int,
        default=0,
        metavar="N",
        help="also draw the N worst images per class and a score histogram (cellpipe overlay)",
    )


def main(cfg: Config, args: argparse.Namespace) -> None:
    # pandas, numba and scipy load only to score: `cellpipe score --help` stays fast
    from pipeline.core.score_report import format_report, score_report

    params = cfg.score
    if args.folds is not None:
        try:
            folds = sorted({int(part) for part in args.folds.split(",") if part.strip()})
        except ValueError:
            raise CellpipeError(
                f"--folds {args.folds!r}: expected comma-separated integers"
            ) from None
        params = params.model_copy(update={"folds": folds})
    truth = args.truth or cfg.layout.train_csv
    suffix = f".folds{'-'.join(map(str, params.folds))}" if params.folds else ""
    output = args.output or cfg.layout.scores_dir / f"{args.submission.stem}{suffix}.json"
    inputs = [args.submission, truth] + ([cfg.layout.folds_csv] if params.folds else [])

    def body() -> None:
        report = score_report(
            args.submission,
            truth,
            params.folds,
            cfg.layout.folds_csv,
            params.glas_metrics,
            cfg.convert.rle_order,
        )
        write_json(output, report)

    ran = run_stage(
        f"score-{output.stem}",
        cfg,
        inputs=inputs,
        outputs=[output],
        params=params,
        body=body,
        force=args.force,
    )
    report = read_json(output)
    print(format_report(report))
    print(f"wrote {output}")
    if args.overlays:
        from pipeline.core.overlays import overlays_dir, report_overlays  # PIL, skimage, pandas

        folders = [*cfg.image_folders("train"), *cfg.image_folders("test")]
        out = overlays_dir(output)
        written = report_overlays(report, folders, out, args.overlays)
        print(f"overlays: {len(written) - 1} images and a score histogram -> {out}")
    if ran and params.record:
        entry = make_entry(report, config_hash(cfg.model_dump(mode="json")), args.note)
        record(params.ledger, entry)
        print(f"recorded as {entry['key']} in {params.ledger} (cellpipe leaderboard)")
