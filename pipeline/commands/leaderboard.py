"""`cellpipe leaderboard [--refresh]`: the local leaderboard of every scored submission.

The ledger (`score.ledger`, default `submissions/leaderboard.jsonl`, tracked by git) has one JSON
object a line, written by `cellpipe score`: key, time, git commit, config hash, the local score
overall, per class and per threshold, the note, and the public / private Kaggle scores once
`--refresh` has found them (`kaggle competitions submissions`; a Kaggle submission belongs to the
entry whose key its description contains, or whose note it equals). Offline, the refresh says so
in one line and the command goes on. The table prints best first; the plots (score against
threshold, score per class, for the best `score.top` entries) go to `<work_dir>/leaderboard/`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.config import Config
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import atomic_path
from pipeline.core.ledger import (
    Entry,
    apply_kaggle_scores,
    leaderboard_table,
    read_ledger,
    write_ledger,
)
from pipeline.core.metrics import IOU_THRESHOLDS
from pipeline.kaggle.client import kaggle_api, kaggle_call


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--refresh", action="store_true", help="fill public/private scores from Kaggle (online)"
    )


def fetch_kaggle_submissions(competition: str) -> list[Any]:
    """This account's submissions to a competition (the kaggle client; needs network)."""
    what = f"cannot list Kaggle submissions for {competition}"
    try:
        api = kaggle_api()
        with kaggle_call(what):
            return list(api.competition_submissions(competition, page_size=200) or [])
    except CellpipeError as e:
        message = str(e)
        raise CellpipeError(message if message.startswith(what) else f"{what}: {message}") from None


def write_plots(entries: Sequence[Entry], folder: Path, top: int) -> list[Path]:
    """Per-threshold curves and per-class bars of the best `top` entries, as PNG files."""
    best = leaderboard_table(entries)["key"].head(top).tolist()
    chosen = [next(e for e in entries if e["key"] == k) for k in best]
    labels = [
        " ".join(filter(None, [e["key"], e.get("folds") and f"folds {e['folds']}", e.get("note")]))[
            :50
        ]
        for e in chosen
    ]
    paths = []

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for entry, label in zip(chosen, labels):
        if len(entry.get("per_threshold", [])) == len(IOU_THRESHOLDS):
            ax.plot(IOU_THRESHOLDS, entry["per_threshold"], marker="o", label=label)
    ax.set(xlabel="IoU threshold", ylabel="TP / (TP + FP + FN)", title="Score per threshold")
    ax.grid(alpha=0.3)
    if chosen:
        ax.legend(fontsize=7)
    paths.append(folder / "per_threshold.png")

    fig2 = Figure(figsize=(7, 4.5))
    ax2 = fig2.subplots()
    classes = sorted({c for e in chosen for c in e.get("per_class", {})})
    width = 0.8 / max(len(chosen), 1)
    for k, (entry, label) in enumerate(zip(chosen, labels)):
        values = [entry.get("per_class", {}).get(c, np.nan) for c in classes]
        ax2.bar(np.arange(len(classes)) + k * width, values, width, label=label)
    ax2.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes)
    ax2.set(ylabel="MAP-IoU", title="Score per class")
    if chosen:
        ax2.legend(fontsize=7)
    paths.append(folder / "per_class.png")

    for figure, path in zip((fig, fig2), paths):
        figure.tight_layout()
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=100)
    return paths


def main(cfg: Config, args: argparse.Namespace) -> None:
    params = cfg.score
    entries = read_ledger(params.ledger)
    if args.refresh:
        try:
            updated = apply_kaggle_scores(
                entries, fetch_kaggle_submissions(cfg.prepare.competition)
            )
            if updated:
                write_ledger(params.ledger, entries)
            print(f"leaderboard: Kaggle scores found for {updated} entries")
        except CellpipeError as e:
            print(f"leaderboard: not refreshed: {e}")
    if not entries:
        print(f"leaderboard: {params.ledger} has no entry yet (run `cellpipe score` first)")
        return

    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(leaderboard_table(entries).to_string(float_format="{:.4f}".format, na_rep="-"))
    for path in write_plots(entries, cfg.layout.leaderboard_dir, params.top):
        print(f"wrote {path}")
