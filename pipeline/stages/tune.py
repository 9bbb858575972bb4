"""Stage `tune`: per-class thresholds and family weights maximising out-of-fold MAP-IoU ->
thresholds.json.

Each family of `predict.models` is tuned alone: its search starts from its own defaults
(`model.<family>.thresholds`) over its own grid (`model.<family>.grid`). With several families,
every mix of weights from `tune.ensemble.weights` (two families or more) is merged per image
(mask voting, `pipeline.core.ensemble.merge_families`) and scored after a quick search of the
score threshold; the best mix gets the full search from `tune.ensemble.thresholds`. The candidate
(a family alone or the mix) with the best out-of-fold score is chosen. Classes with fewer than
`tune.min_class_images` images share their thresholds. The search and the report are
`pipeline.core.ensemble_search`.

thresholds.json holds the choice (`weights`, `thresholds`) and every candidate's thresholds and
scores, tuned and untuned, overall and per class. When the data has `test_truth.csv` (held-out
images with their truth) and test predictions exist, each candidate's held-out score is reported
beside its out-of-fold one; it is never used to choose anything.
"""

from __future__ import annotations

import argparse

from pipeline.config import Config
from pipeline.core.coco import read_kaggle_csv
from pipeline.core.ensemble_search import (
    SearchSpace,
    ThresholdSearch,
    heldout_scores,
    search_candidates,
    tuning_report,
)
from pipeline.core.fileio import read_json, write_json
from pipeline.core.predictions import load_predictions
from pipeline.core.truth_scorer import TruthScorer
from pipeline.runner import run_stage


def main(cfg: Config, args: argparse.Namespace) -> None:
    layout, params, predict, families = cfg.layout, cfg.tune, cfg.predict, cfg.families
    blocks = {f: cfg.model.block(f) for f in families}
    held_out = layout.test_truth.is_file() and "test" in predict.splits

    def tune() -> None:
        """Tune every family, search the ensemble weights, write the choice and every score."""
        oof = {f: load_predictions(layout.predictions(f, "oof")) for f in families}
        common = set.intersection(*(set(p) for p in oof.values()))  # images every family predicted
        oof = {f: {i: p for i, p in preds.items() if i in common} for f, preds in oof.items()}
        scorer = TruthScorer.from_frame(read_kaggle_csv(layout.train_csv), common)
        categories = {c["id"]: c["name"] for c in read_json(layout.coco_train)["categories"]}
        search = ThresholdSearch(
            scorer,
            list(categories),
            params.class_mode,
            params.order,
            params.min_class_images,
            params.rounds,
        )
        candidates = search_candidates(
            oof,
            search,
            {f: SearchSpace(b.thresholds, b.grid.values()) for f, b in blocks.items()},
            SearchSpace(params.ensemble.thresholds, params.ensemble.grid.values()),
            params.ensemble.weights,
            predict.merge_iou,
            predict.min_votes,
            on_mix=lambda weights, score: print(
                f"tune: weights {weights}: {score:.4f} after a score-threshold search"
            ),
        )
        heldout = {}
        if layout.test_truth.is_file() and layout.predictions(families[0], "test").is_file():
            test = {f: load_predictions(layout.predictions(f, "test")) for f in families}
            truth = read_kaggle_csv(layout.test_truth)
            held = TruthScorer.from_frame(truth, set(truth["id"].astype(str)))
            heldout = heldout_scores(candidates, test, held, predict.merge_iou, predict.min_votes)
        report = tuning_report(families, candidates, scorer, categories, heldout)
        write_json(layout.thresholds, report)
        for name, entry in report["candidates"].items():
            cv, line = entry["cv"], f"tune: {name:<10}"
            line += f" out-of-fold {cv['default']:.4f} default, {cv['tuned']:.4f} tuned"
            if "heldout" in entry:
                line += f"; held-out {entry['heldout']['tuned']:.4f} tuned"
            print(line + (" <- chosen" if name == report["chosen"] else ""))
        print(f"tune: {report['chosen']} ({len(common)} out-of-fold images) -> {layout.thresholds}")

    run_stage(
        "tune",
        cfg,
        inputs=[
            *[layout.predictions(f, s) for f in families for s in predict.splits],
            layout.train_csv,
            layout.coco_train,
            *([layout.test_truth] if held_out else []),
        ],
        outputs=[layout.thresholds],
        params={
            "tune": params,
            "merge": [predict.merge_iou, predict.min_votes],
            **{f: {"thresholds": b.thresholds, "grid": b.grid} for f, b in blocks.items()},
        },
        body=tune,
        force=args.force,
    )
