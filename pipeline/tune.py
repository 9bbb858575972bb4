"""Stage `tune`: per-class thresholds maximising out-of-fold MAP-IoU -> thresholds.json."""

from __future__ import annotations

import argparse

from pipeline.config import Config, TuneConfig
from pipeline.stage import run_stage


def start_thresholds(params: TuneConfig):
    """The untuned thresholds: `tune.start` for every class."""
    from pipeline.core.postprocess import ClassThresholds, Thresholds

    return Thresholds(
        default=ClassThresholds(**params.start.model_dump()),
        class_mode=params.class_mode,
        order=params.order,
    )


def tune(cfg: Config) -> None:
    """Search thresholds on the OOF predictions and write them with the CV scores reached."""
    import numpy as np

    from pipeline.core import rle
    from pipeline.core.coco import read_kaggle_csv
    from pipeline.core.fileio import read_json, write_json
    from pipeline.core.metrics import match_runs
    from pipeline.core.predictions import load_predictions
    from pipeline.core.tuning import tune_thresholds

    layout, params = cfg.layout, cfg.tune
    preds = load_predictions(layout.predictions("oof"))
    truth = read_kaggle_csv(layout.train_csv)
    truth = truth[truth["id"].isin(list(preds))]
    truth_runs = {
        image_id: rle.parse_runs(
            [t for t in rows["annotation"] if t.strip()],
            (int(rows["height"].iloc[0]), int(rows["width"].iloc[0])),
        )
        for image_id, rows in truth.groupby("id")
    }
    empty = rle.Runs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(1, np.int64))

    def score(image_id: str, labels: np.ndarray) -> float:
        return match_runs(truth_runs.get(image_id, empty), rle.label_runs(labels)).score

    categories = {c["id"]: c["name"] for c in read_json(layout.coco_train)["categories"]}
    grid = {
        "score": params.score,
        "mask": params.mask,
        "min_area": params.min_area,
        "min_keep": params.min_keep,
    }
    start = start_thresholds(params)
    result = tune_thresholds(preds, score, sorted(categories), grid, start, params.rounds)

    cell_types = (
        truth.groupby("id")["cell_type"].first().to_dict() if "cell_type" in truth.columns else {}
    )

    def per_class(image_scores: dict[str, float]) -> dict[str, float]:
        scores: dict[str, list[float]] = {}
        for image_id, value in image_scores.items():
            scores.setdefault(cell_types.get(image_id, "cell"), []).append(value)
        return {k: float(np.mean(v)) for k, v in sorted(scores.items())}

    write_json(
        layout.thresholds,
        {
            "thresholds": result.thresholds.to_json(),
            "categories": {str(k): v for k, v in categories.items()},
            "cv": {
                "tuned": result.score,
                "default": result.start_score,
                "tuned_per_class": per_class(result.image_scores),
                "default_per_class": per_class(result.start_image_scores),
                "images": len(preds),
            },
            "steps": result.steps,
        },
    )
    print(
        f"tune: out-of-fold MAP-IoU {result.start_score:.4f} with the default thresholds, "
        f"{result.score:.4f} tuned ({len(preds)} images) -> {layout.thresholds}"
    )


def main(cfg: Config, args: argparse.Namespace) -> None:
    layout = cfg.layout
    run_stage(
        "tune",
        cfg,
        inputs=[layout.predictions("oof"), layout.train_csv, layout.coco_train],
        outputs=[layout.thresholds],
        params=cfg.tune,
        body=lambda: tune(cfg),
        force=args.force,
    )
