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
from typing import Any

from tqdm import tqdm

from pipeline.config import Config, ScoreConfig
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import file_digest, read_json, write_json
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


def parse_folds(text: str) -> list[int]:
    """`"0,2"` -> [0, 2]."""
    try:
        return sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise CellpipeError(f"--folds {text!r}: expected comma-separated integers") from None


def score_report(
    submission: Path, truth: Path, params: ScoreConfig, folds_csv: Path, order: str
) -> dict[str, Any]:
    """Score a submission file; everything `cellpipe score` prints and saves."""
    # pandas, numba and scipy load only to score: `cellpipe score --help` stays fast
    from pipeline.core.coco import read_kaggle_csv
    from pipeline.core.glas import glas_rows, glas_summary
    from pipeline.core.metrics import MatchTable
    from pipeline.core.splits import images_in_folds
    from pipeline.core.submission import read_submission
    from pipeline.core.submission_matching import match_image_rows, submission_images

    frame = read_submission(submission)
    truth_frame = read_kaggle_csv(truth)
    ids = images_in_folds(folds_csv, params.folds) if params.folds else None
    try:
        images, empty = submission_images(frame, truth_frame, ids)
        matches = {
            image.id: match_image_rows(image)
            for image in tqdm(images, desc="score", unit="image", leave=False)
        }
    except CellpipeError as e:
        raise CellpipeError(f"{submission}: {e}") from None
    classes = {image.id: image.cell_type for image in images}
    table = MatchTable.from_matches(matches, classes)
    report: dict[str, Any] = {
        "submission": str(submission),
        "submission_sha256": file_digest(submission),
        "truth": str(truth),
        "truth_sha256": file_digest(truth),
        "folds": params.folds,
        "empty_predictions": empty,
        "map_iou": table.summary(),
        "per_image": [
            {
                "id": image_id,
                "class": cls,
                "score": float(score),
                "tp": tp.tolist(),
                "n_true": int(n_true),
                "n_pred": int(n_pred),
            }
            for image_id, cls, score, tp, n_true, n_pred in zip(
                table.ids, table.classes, table.image_scores, table.tp, table.n_true, table.n_pred
            )
        ],
    }
    if params.glas_metrics:
        glas = {image.id: glas_rows(image, order) for image in tqdm(images, desc="GlaS")}
        by_class = {
            c: [glas[i] for i in table.ids if classes[i] == c] for c in set(classes.values())
        }
        report["glas"] = {
            "overall": _pick(glas_summary(list(glas.values())), params.glas_metrics),
            "per_class": {
                c: _pick(glas_summary(v), params.glas_metrics) for c, v in sorted(by_class.items())
            },
        }
    return report


def _pick(values: dict[str, float], names: list[str]) -> dict[str, float]:
    return {name: values[name] for name in names}


def format_report(report: dict[str, Any]) -> str:
    """The printed tables: overall, per class, per threshold."""
    summary = report["map_iou"]
    glas = report.get("glas", {})
    folds = ",".join(map(str, report["folds"])) or "all"
    lines = [
        f"{report['submission']} vs {report['truth']} (folds {folds}): "
        f"{summary['n_images']} images, {summary['n_true']} true / {summary['n_pred']} "
        "predicted objects",
    ]
    if report["empty_predictions"]:
        n, first = len(report["empty_predictions"]), report["empty_predictions"][0]
        lines.append(f"{n} image(s) without prediction rows scored as empty, e.g. {first}")
    names = list(glas.get("overall", {}))
    lines.append("")
    lines.append(f"{'class':<12}{'images':>7}{'MAP-IoU':>10}" + "".join(f"{n:>18}" for n in names))
    counts: dict[str, int] = {}
    for image in report["per_image"]:
        counts[image["class"]] = counts.get(image["class"], 0) + 1
    rows = [
        (c, counts[c], s, glas.get("per_class", {}).get(c, {}))
        for c, s in summary["per_class"].items()
    ]
    rows.append(("all", summary["n_images"], summary["score"], glas.get("overall", {})))
    for name, n, score, extra in rows:
        lines.append(
            f"{name or '-':<12}{n:>7}{score:>10.4f}" + "".join(f"{extra[k]:>18.4f}" for k in names)
        )
    lines.append("")
    lines.append(f"{'threshold':>9}{'score':>9}{'TP':>9}{'FP':>9}{'FN':>9}")
    for t in summary["per_threshold"]:
        lines.append(
            f"{t['threshold']:>9.2f}{t['score']:>9.4f}{t['tp']:>9}{t['fp']:>9}{t['fn']:>9}"
        )
    return "\n".join(lines)


def default_output(cfg: Config, submission: Path, folds: list[int]) -> Path:
    suffix = f".folds{'-'.join(map(str, folds))}" if folds else ""
    return cfg.layout.scores_dir / f"{submission.stem}{suffix}.json"


def main(cfg: Config, args: argparse.Namespace) -> None:
    params = cfg.score
    if args.folds is not None:
        params = params.model_copy(update={"folds": parse_folds(args.folds)})
    truth = args.truth or cfg.layout.train_csv
    output = args.output or default_output(cfg, args.submission, params.folds)
    inputs = [args.submission, truth] + ([cfg.layout.folds_csv] if params.folds else [])
    order = cfg.convert.rle_order

    def body() -> None:
        write_json(
            output, score_report(args.submission, truth, params, cfg.layout.folds_csv, order)
        )

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
