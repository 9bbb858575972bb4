"""Stage `tune`: per-class thresholds and family weights maximising out-of-fold MAP-IoU ->
thresholds.json.

Each family of `predict.models` is tuned alone: its search starts from its own defaults
(`model.<family>.thresholds`) over its own grid (`model.<family>.grid`). With several families,
every mix of weights from `tune.ensemble.weights` (two families or more) is merged per image
(mask voting, `pipeline.core.ensemble.merge_families`) and scored after a quick search of the
score threshold; the best mix gets the full search from `tune.ensemble.thresholds`. The candidate
(a family alone or the mix) with the best out-of-fold score is chosen. Classes with fewer than
`tune.min_class_images` images share their thresholds.

thresholds.json holds the choice (`weights`, `thresholds`) and every candidate's thresholds and
scores, tuned and untuned, overall and per class. When the data has `test_truth.csv` (held-out
images with their truth) and test predictions exist, each candidate's held-out score is reported
beside its out-of-fold one; it is never used to choose anything.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Mapping
from typing import Any

from pipeline.config import Config, ThresholdsConfig


def start_thresholds(cfg: Config, defaults: ThresholdsConfig):
    """Untuned thresholds: `defaults` for every class, applied as `tune` says."""
    from pipeline.core.postprocess import Thresholds

    return Thresholds(
        default=defaults.to_core(), class_mode=cfg.tune.class_mode, order=cfg.tune.order
    )


def weight_mixes(families: list[str], values: list[float]) -> list[dict[str, float]]:
    """Every assignment of `values` to the families with two or more positive weights, each
    proportional mix once (scaled so that the largest weight is 1)."""
    mixes: dict[tuple[float, ...], dict[str, float]] = {}
    for combo in itertools.product(sorted(set(values)), repeat=len(families)):
        if sum(w > 0 for w in combo) < 2:
            continue
        top = max(combo)
        key = tuple(round(w / top, 6) for w in combo)
        mixes.setdefault(key, dict(zip(families, key)))
    return list(mixes.values())


def _merged(cfg: Config, preds: Mapping[str, Mapping], weights: Mapping[str, float]) -> dict:
    from pipeline.core.ensemble import merge_families

    used = {f: p for f, p in preds.items() if weights.get(f, 0) > 0}
    if len(used) == 1:
        return dict(next(iter(used.values())))
    return merge_families(used, weights, cfg.predict.merge_iou, cfg.predict.min_votes)


def _scores(scorer: Any, preds: Mapping, thresholds: Any) -> dict[str, float]:
    from pipeline.core.postprocess import postprocess_image

    return {i: scorer(i, postprocess_image(p, thresholds)[0]) for i, p in preds.items()}


def tune(cfg: Config) -> None:
    """Tune every family, search the ensemble weights, write the choice and every score."""
    import numpy as np

    from pipeline.core.coco import read_kaggle_csv
    from pipeline.core.fileio import read_json, write_json
    from pipeline.core.metrics import TruthScorer
    from pipeline.core.predictions import load_predictions
    from pipeline.core.tuning import class_groups, tune_thresholds

    layout, params, families = cfg.layout, cfg.tune, cfg.families
    oof = {f: load_predictions(layout.predictions(f, "oof")) for f in families}
    common = set.intersection(*(set(p) for p in oof.values()))  # images every family predicted
    oof = {f: {i: p for i, p in preds.items() if i in common} for f, preds in oof.items()}
    scorer = TruthScorer.from_frame(read_kaggle_csv(layout.train_csv), common)
    categories = {c["id"]: c["name"] for c in read_json(layout.coco_train)["categories"]}

    def search(preds: Mapping, defaults: ThresholdsConfig, grid: dict, rounds: int):
        groups = class_groups(preds, sorted(categories), params.class_mode, params.min_class_images)
        start = start_thresholds(cfg, defaults)
        return tune_thresholds(preds, scorer, groups, grid, start, rounds)

    candidates: dict[str, dict[str, Any]] = {}
    for family in families:
        block = cfg.model.block(family)
        result = search(oof[family], block.thresholds, block.grid.values(), params.rounds)
        candidates[family] = {"weights": {family: 1.0}, "result": result}
    if len(families) > 1:
        ensemble = params.ensemble
        quick = {"score": ensemble.grid.score} if ensemble.grid.score else {}
        best_mix, best_score = None, -1.0
        for weights in weight_mixes(families, ensemble.weights):
            merged = _merged(cfg, oof, weights)
            score = search(merged, ensemble.thresholds, quick, 1).score
            print(f"tune: weights {weights}: {score:.4f} after a score-threshold search")
            if score > best_score:
                best_mix, best_score = weights, score
        if best_mix is not None:
            merged = _merged(cfg, oof, best_mix)
            result = search(merged, ensemble.thresholds, ensemble.grid.values(), params.rounds)
            candidates["ensemble"] = {"weights": best_mix, "result": result}
    chosen = max(candidates, key=lambda name: candidates[name]["result"].score)

    heldout_scores: dict[str, dict[str, float]] = {}
    if layout.test_truth.is_file() and layout.predictions(families[0], "test").is_file():
        test = {f: load_predictions(layout.predictions(f, "test")) for f in families}
        truth = read_kaggle_csv(layout.test_truth)
        held = TruthScorer.from_frame(truth, set(truth["id"].astype(str)))
        for name, candidate in candidates.items():
            preds = _merged(cfg, test, candidate["weights"])
            preds = {i: p for i, p in preds.items() if i in held.runs}
            result = candidate["result"]
            heldout_scores[name] = {
                "tuned": float(np.mean(list(_scores(held, preds, result.thresholds).values()))),
                "default": float(
                    np.mean(list(_scores(held, preds, result.start_thresholds).values()))
                ),
                "images": len(preds),
            }

    def report(name: str) -> dict[str, Any]:
        result = candidates[name]["result"]
        entry = {
            "weights": candidates[name]["weights"],
            "thresholds": result.thresholds.to_json(),
            "cv": {
                "tuned": result.score,
                "default": result.start_score,
                "tuned_per_class": scorer.per_class(result.image_scores),
                "default_per_class": scorer.per_class(result.start_image_scores),
                "images": len(result.image_scores),
            },
            "steps": result.steps,
        }
        if name in heldout_scores:
            entry["heldout"] = heldout_scores[name]
        return entry

    reports = {name: report(name) for name in candidates}
    final = reports[chosen]
    write_json(
        layout.thresholds,
        {
            "families": families,
            "chosen": chosen,
            "weights": final["weights"],
            "thresholds": final["thresholds"],
            "categories": {str(k): v for k, v in categories.items()},
            "cv": final["cv"],
            **({"heldout": final["heldout"]} if "heldout" in final else {}),
            "candidates": reports,
        },
    )
    for name, entry in reports.items():
        cv, line = entry["cv"], f"tune: {name:<10}"
        line += f" out-of-fold {cv['default']:.4f} default, {cv['tuned']:.4f} tuned"
        if "heldout" in entry:
            line += f"; held-out {entry['heldout']['tuned']:.4f} tuned"
        print(line + (" <- chosen" if name == chosen else ""))
    print(f"tune: {chosen} ({len(common)} out-of-fold images) -> {layout.thresholds}")


def main(cfg: Config, args: argparse.Namespace) -> None:
    from pipeline.runner import run_stage

    layout, splits = cfg.layout, cfg.predict.splits
    test_truth = [layout.test_truth] if layout.test_truth.is_file() and "test" in splits else []
    run_stage(
        "tune",
        cfg,
        inputs=[
            *[layout.predictions(f, s) for f in cfg.families for s in splits],
            layout.train_csv,
            layout.coco_train,
            *test_truth,
        ],
        outputs=[layout.thresholds],
        params={
            "tune": cfg.tune,
            "merge": [cfg.predict.merge_iou, cfg.predict.min_votes],
            **{
                f: {"thresholds": cfg.model.block(f).thresholds, "grid": cfg.model.block(f).grid}
                for f in cfg.families
            },
        },
        body=lambda: tune(cfg),
        force=args.force,
    )
