"""Accuracy on real cells: every family, the tuned ensemble and the watershed floor side by side.

Usage: `python benchmarks/accuracy.py [--config configs/realdata.yaml] [--data work/realdata]
[--work work/accuracy] [key=value ...]`. Builds the real-data benchmark (benchmarks/realdata.py)
when --data has no train.csv, then runs the stages convert, folds, pretrain, finetune, predict,
tune and postprocess with the config (a rerun skips what is up to date), and prints, per
candidate `tune` considered (each family alone, the weighted ensemble):

- out-of-fold MAP-IoU with the family's default thresholds and with the tuned ones,
- held-out MAP-IoU (test/ images, truth in test_truth.csv, never used for tuning), default and
  tuned, and the tuned held-out score minus the watershed floor's,

then each stage's wall time, and each family's prediction time for one 520x704 image (a real
test image, mirrored to the competition size) with one model and no `predict.tta` (its own
map-level views, and one view), on this machine's CPU.
Thresholds and weights are chosen on out-of-fold predictions only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

STAGES = ["convert", "folds", "pretrain", "finetune", "predict", "tune", "postprocess"]
FLOOR = "watershed"


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
    from pipeline.models import build_model, family_class
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
                if family_class(family).trainable:
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


def score_table(thresholds: dict) -> pd.DataFrame:
    """One row per candidate of thresholds.json: weights, out-of-fold and held-out scores."""
    rows = []
    for name, entry in thresholds["candidates"].items():
        held = entry.get("heldout", {})
        rows.append(
            {
                "candidate": name + (" (chosen)" if name == thresholds["chosen"] else ""),
                "weights": " ".join(f"{f}={w:g}" for f, w in entry["weights"].items() if w),
                "oof default": entry["cv"]["default"],
                "oof tuned": entry["cv"]["tuned"],
                "held-out default": held.get("default"),
                "held-out tuned": held.get("tuned"),
            }
        )
    table = pd.DataFrame(rows)
    floor = thresholds["candidates"].get(FLOOR, {}).get("heldout", {}).get("tuned")
    if floor is not None:
        table["vs floor"] = table["held-out tuned"] - floor
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "realdata.yaml")
    parser.add_argument("--data", type=Path, default=ROOT / "work" / "realdata")
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "accuracy")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    if not (args.data / "train.csv").is_file():
        import realdata

        print(realdata.build(args.data, realdata.DEFAULT_CACHE, []))
    overrides = [
        f"work_dir={args.work}",
        f"data_dir={args.data}",
        f"score.ledger={args.work / 'leaderboard.jsonl'}",
        *args.overrides,
    ]
    times = run_stages(["--config", str(args.config), *overrides])
    thresholds = json.loads((args.work / "thresholds.json").read_text())
    n_test = len(list((args.data / "test").glob("*.png")))
    print(f"\naccuracy: {args.config.name} on {args.data} ({n_test} held-out images)")
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 200):
        print(score_table(thresholds).to_string(index=False))
    print("\nwall time: " + ", ".join(f"{s} {t:.0f} s" for s, t in times.items()))
    print(f"total {sum(times.values()) / 60:.1f} min")
    seconds = predict_seconds(args.config, overrides)
    print(
        "predict one 520x704 image, one model, no predict.tta: "
        + ", ".join(f"{family} {t:.2f} s" for family, t in seconds.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
