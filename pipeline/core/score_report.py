"""The report of `cellpipe score`: a submission file scored against a truth file, RLE against
RLE (MAP-IoU overall, per class, per threshold and per image; GlaS object metrics on demand), as
JSON, and the tables it prints."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.core import rle
from pipeline.core.coco import read_kaggle_csv
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import file_digest
from pipeline.core.glas import glas_rows, glas_summary
from pipeline.core.metrics import MatchTable
from pipeline.core.splits import images_in_folds
from pipeline.core.submission import read_submission
from pipeline.core.submission_matching import match_image_rows, submission_images


def score_report(
    submission: Path,
    truth: Path,
    folds: list[int],
    folds_csv: Path,
    glas_metrics: Sequence[str],
    order: rle.Order,
) -> dict[str, Any]:
    """A submission file scored against a truth file (only the images of `folds` of folds.csv
    when given): everything `cellpipe score` prints and saves."""
    frame = read_submission(submission)
    truth_frame = read_kaggle_csv(truth)
    ids = images_in_folds(folds_csv, folds) if folds else None
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
        "folds": folds,
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
    if glas_metrics:
        glas = {image.id: glas_rows(image, order) for image in tqdm(images, desc="GlaS")}
        by_class = {
            c: [glas[i] for i in table.ids if classes[i] == c] for c in set(classes.values())
        }
        report["glas"] = {
            "overall": _pick(glas_summary(list(glas.values())), glas_metrics),
            "per_class": {
                c: _pick(glas_summary(v), glas_metrics) for c, v in sorted(by_class.items())
            },
        }
    return report


def _pick(values: dict[str, float], names: Sequence[str]) -> dict[str, float]:
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
