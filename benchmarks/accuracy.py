"""Accuracy on real cells: every family, the tuned ensemble and the watershed floor side by side,
and several runs (configs) in one table.

Usage: `python benchmarks/accuracy.py [--config configs/realdata.yaml] [--data work/realdata]
[--work work/accuracy] [--name NAME] [key=value ...]`, then, for several runs,
`python benchmarks/accuracy.py --report WORK [WORK ...]`.

A run builds the real-data benchmark (benchmarks/realdata.py) when --data has no train.csv, runs
the stages convert, folds, pretrain, finetune, predict, tune and postprocess with the config (a
rerun skips what is up to date), scores every candidate `tune` considered (each family alone, the
weighted ensemble) on every image as `tune` scores it (out-of-fold images; held-out test/ images,
truth in test_truth.csv, never used for tuning), with the family's default thresholds and with the
tuned ones, and writes the per-image scores, the stage wall times and each family's prediction
time for one 520x704 image (a real test image, mirrored to the competition size; one model, no
`predict.tta`; its own map-level views, and one view) to `<work>/accuracy.json` under NAME
(default: the work folder's name). It prints that run's tables; `--report` prints those of
several runs' accuracy.json side by side, one row per run and candidate, e.g. one run per config
(cellpose zero-shot with `finetune.solver.max_iter=0`, cellpose fine-tuned, flow_unet with
watershed), each with its own --work and --name.

Columns: mean MAP-IoU with tuned thresholds, out-of-fold and held-out, over all images, over
those of the sets cellpose's pretrained models may have been trained on ("seen") and over the
others ("unseen"), per the data's sets.csv (realdata.seen_by_cellpose; other data has none, so
only "all"); held-out with the default thresholds; the tuned held-out score minus the watershed
floor's (from the first run that has one); the stage minutes of the run's last call (a rerun
that skips the stages shows seconds) and the candidate's one-image prediction seconds (summed over
its families). A second table gives the held-out tuned score per set. Thresholds and weights
are chosen on out-of-fold predictions only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

STAGES = ["convert", "folds", "pretrain", "finetune", "predict", "tune", "postprocess"]
FLOOR = "watershed"
RECORD = "accuracy.json"  # a run's per-image scores and timings


def run_stages(settings: list[str]) -> dict[str, float]:
    """Run the stages in order with `settings`; their wall times in seconds."""
    from pipeline.cli import main as cellpipe

    times = {}
    for stage in STAGES:
        start = time.perf_counter()
        if cellpipe([stage, *settings]) != 0:
            raise SystemExit(f"accuracy: stage {stage} failed (its message is above)")
        times[stage] = time.perf_counter() - start
    return times


def predict_seconds(config: Path, overrides: list[str], repeats: int = 3) -> dict[str, float]:
    """Per family of `predict.models`: median seconds to predict one 520x704 image (fold 0's
    model, or the untrained family) as configured, after one warm-up call; for a family with
    map-level TTA views (`map_tta`), also with one view ("<family> one view")."""
    import numpy as np
    import torch

    from pipeline.config import load_config
    from pipeline.core.fileio import read_image_checked, read_json
    from pipeline.models import build_model
    from pipeline.models.base import image_to_tensor
    from pipeline.models.checkpoints import load_model

    cfg = load_config(config, overrides)
    test = read_json(cfg.layout.coco_test)
    first = test["images"][0]
    image = read_image_checked(cfg.data / first["file_name"], (first["height"], first["width"]))
    height, width = 520, 704
    reps = (-(-height // image.shape[0]), -(-width // image.shape[1]))
    image = np.pad(image, [(0, r * n - n) for r, n in zip(reps, image.shape[:2])], "symmetric")
    tensor = image_to_tensor(np.ascontiguousarray(image[:height, :width]))
    classes = [c["name"] for c in test["categories"]]
    out = {}
    with torch.inference_mode():
        for family in cfg.families:
            variants = {family: cfg}
            if len(getattr(cfg.model.block(family), "map_tta", [])) > 1:
                one_view = [*overrides, f"model.{family}.map_tta=[none]"]
                variants[f"{family} one view"] = load_config(config, one_view)
            for name, variant in variants.items():
                if cfg.model.block(family).trainable:
                    path = variant.layout.finetune_model(family, 0)
                    model = load_model(path, "cpu", variant.model)
                else:
                    model = build_model(variant.model, classes, family).eval()
                model.predict([tensor])  # warm-up: numba compilation, allocator
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    model.predict([tensor])
                    times.append(time.perf_counter() - start)
                out[name] = sorted(times)[len(times) // 2]
    return out


def image_scores(cfg, thresholds: dict) -> tuple[dict, dict[str, str]]:
    """Per candidate of thresholds.json, split ("oof", "heldout") and thresholds ("default",
    "tuned"): every image's MAP-IoU, as `tune` scores it; and every scored image's cell type."""
    from pipeline.core.coco import read_kaggle_csv
    from pipeline.core.ensemble import merge_families
    from pipeline.core.postprocess import Thresholds
    from pipeline.core.predictions import load_predictions
    from pipeline.core.truth_scorer import TruthScorer
    from pipeline.core.tuning import score_images

    layout, families = cfg.layout, cfg.families
    oof = {f: load_predictions(layout.predictions(f, "oof")) for f in families}
    common = set.intersection(*(set(p) for p in oof.values()))  # as tune: every family's images
    scorer = TruthScorer.from_frame(read_kaggle_csv(layout.train_csv), common)
    splits = {"oof": (oof, scorer)}
    if layout.test_truth.is_file() and layout.predictions(families[0], "test").is_file():
        truth = read_kaggle_csv(layout.test_truth)
        held = TruthScorer.from_frame(truth, set(truth["id"].astype(str)))
        test = {f: load_predictions(layout.predictions(f, "test")) for f in families}
        splits["heldout"] = (test, held)
    scores: dict[str, dict] = {}
    for name, entry in thresholds["candidates"].items():
        used = [f for f, w in entry["weights"].items() if w > 0]
        block = cfg.model.block(used[0]) if len(used) == 1 else cfg.tune.ensemble
        start = Thresholds(
            default=block.thresholds,
            class_mode=cfg.tune.class_mode,
            order=cfg.tune.order,
        )
        choices = {"default": start, "tuned": Thresholds.from_json(entry["thresholds"])}
        scores[name] = {}
        for split, (preds, truth_scorer) in splits.items():
            merged = merge_families(
                preds, entry["weights"], cfg.predict.merge_iou, cfg.predict.min_votes
            )
            ids = [i for i in merged if i in truth_scorer.runs]
            scores[name][split] = {
                k: score_images(merged, truth_scorer, t, ids) for k, t in choices.items()
            }
    cell_types = {i: c for _, s in splits.values() for i, c in s.cell_types.items()}
    return scores, cell_types


def group_means(scores: dict[str, float], cell_types: dict, seen: dict) -> dict[str, float]:
    """Mean of image scores over all images and, when `seen` flags the sets, over the images of
    sets cellpose may have seen and of the others (nan for an empty group)."""
    groups = {"all": list(scores.values())}
    if seen:
        for name, flag in (("seen", True), ("unseen", False)):
            groups[name] = [v for i, v in scores.items() if seen.get(cell_types[i]) is flag]
    return {k: float(np.mean(v)) if v else float("nan") for k, v in groups.items()}


def summary_table(records: list[dict]) -> pd.DataFrame:
    """One row per run and candidate: tuned out-of-fold and held-out means (all, seen, unseen),
    held-out with default thresholds, held-out minus the floor's, minutes, predict seconds."""
    rows = []
    for record in records:
        minutes = sum(record["stage_seconds"].values()) / 60
        for name, splits in record["scores"].items():
            weights = record["weights"][name]
            row = {
                "run": record["name"],
                "candidate": name + (" (chosen)" if name == record["chosen"] else ""),
                "weights": " ".join(f"{f}={w:g}" for f, w in weights.items() if w),
            }
            for split, label in (("oof", "oof"), ("heldout", "held-out")):
                tuned = splits.get(split, {}).get("tuned", {})
                means = group_means(tuned, record["cell_types"], record["seen_by_cellpose"])
                row |= {f"{label} {k}": v for k, v in means.items()}
            default = splits.get("heldout", {}).get("default", {})
            row["held-out default"] = float(np.mean(list(default.values()))) if default else None
            row["minutes"] = minutes
            seconds = record["predict_seconds"]
            row["predict s"] = sum(seconds.get(f, float("nan")) for f, w in weights.items() if w)
            rows.append(row)
    table = pd.DataFrame(rows)
    floors = table.loc[table["candidate"].str.startswith(FLOOR), "held-out all"]
    if len(floors):
        position = table.columns.get_loc("held-out default") + 1
        table.insert(position, "vs floor", table["held-out all"] - floors.iloc[0])
    return table


def set_table(records: list[dict]) -> pd.DataFrame:
    """Held-out tuned mean per set (rows, with their image count and whether cellpose may have
    seen them) and run/candidate (columns)."""
    columns = {}
    for record in records:
        cell_types = record["cell_types"]
        for name, splits in record["scores"].items():
            scores = pd.Series(splits.get("heldout", {}).get("tuned", {}), dtype=float)
            sets = scores.index.map(cell_types)
            columns[f"{record['name']}: {name}"] = scores.groupby(sets).mean()
    table = pd.DataFrame(columns)
    if table.empty:
        return table
    first = records[0]
    test_ids = first["scores"][first["chosen"]].get("heldout", {}).get("tuned", {})
    counts = pd.Series([first["cell_types"][i] for i in test_ids]).value_counts()
    seen = first["seen_by_cellpose"]
    table.insert(0, "images", counts.reindex(table.index))
    if seen:
        table.insert(1, "seen", [seen.get(s) for s in table.index])
    return table


def print_tables(records: list[dict]) -> None:
    """The summary and per-set tables of `records`, with each run's image counts."""
    for record in records:
        seen, cell_types = record["seen_by_cellpose"], record["cell_types"]
        scores = record["scores"][record["chosen"]]
        parts = []
        for split, label in (("oof", "out-of-fold"), ("heldout", "held-out")):
            ids = list(scores.get(split, {}).get("tuned", {}))
            unseen = sum(seen.get(cell_types[i]) is False for i in ids)
            parts.append(f"{len(ids)} {label}" + (f" ({unseen} unseen)" if seen else ""))
        settings = " ".join(record["overrides"])
        print(
            f"{record['name']}: {record['config']} {settings} on {record['data']}: "
            + ", ".join(parts)
        )
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 250):
        print(summary_table(records).to_string(index=False, na_rep="-"))
        print("\nheld-out tuned per set:")
        print(set_table(records).to_string(na_rep="-"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "realdata.yaml")
    parser.add_argument("--data", type=Path, default=ROOT / "work" / "realdata")
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "accuracy")
    parser.add_argument("--name", help="the run's name in tables (default: the --work folder's)")
    parser.add_argument(
        "--report", type=Path, nargs="+", metavar="WORK", help="only print these runs' tables"
    )
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    from pipeline.core.fileio import read_json, write_json

    if args.report:
        missing = [w for w in args.report if not (w / RECORD).is_file()]
        if missing:
            raise SystemExit(f"accuracy: no {RECORD} in {missing[0]} (run accuracy.py there first)")
        records = [read_json(w / RECORD) for w in args.report]
        names = [r["name"] for r in records]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise SystemExit(f"accuracy: two runs named {twice[0]!r} (rerun one with --name)")
        print_tables(records)
        return 0
    import realdata

    if not (args.data / "train.csv").is_file():
        print(realdata.build(args.data, realdata.DEFAULT_CACHE, []))
    overrides = [
        f"work_dir={args.work}",
        f"data_dir={args.data}",
        f"score.ledger={args.work / 'leaderboard.jsonl'}",
        *args.overrides,
    ]
    times = run_stages(["--config", str(args.config), *overrides])
    from pipeline.config import load_config

    cfg = load_config(args.config, overrides)
    thresholds = read_json(cfg.layout.thresholds)
    scores, cell_types = image_scores(cfg, thresholds)
    record = {
        "name": args.name or args.work.name,
        "config": str(args.config),
        "overrides": args.overrides,
        "data": str(args.data),
        "chosen": thresholds["chosen"],
        "weights": {n: c["weights"] for n, c in thresholds["candidates"].items()},
        "seen_by_cellpose": realdata.seen_by_cellpose(args.data),
        "cell_types": cell_types,
        "scores": scores,
        "stage_seconds": times,
        "predict_seconds": predict_seconds(args.config, overrides),
    }
    write_json(args.work / RECORD, record)
    print()
    print_tables([record])
    print("\nwall time: " + ", ".join(f"{s} {t:.0f} s" for s, t in times.items()))
    print(f"total {sum(times.values()) / 60:.1f} min")
    print(
        "predict one 520x704 image, one model, no predict.tta: "
        + ", ".join(f"{name} {t:.2f} s" for name, t in record["predict_seconds"].items())
    )
    print(f"wrote {args.work / RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
