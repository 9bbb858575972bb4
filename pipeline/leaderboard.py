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
import hashlib
import json
import subprocess
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.core.errors import CellpipeError

Entry = dict[str, Any]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--refresh", action="store_true", help="fill public/private scores from Kaggle (online)"
    )


# --- the ledger ---------------------------------------------------------------------------------


def read_ledger(path: Path) -> list[Entry]:
    """Every entry of the ledger (none when the file does not exist yet)."""
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise CellpipeError(f"{path}: line {number} is not JSON ({e.msg})") from None
        if not isinstance(entry, dict) or "key" not in entry:
            raise CellpipeError(f"{path}: line {number} is not a ledger entry (no key)")
        entries.append(entry)
    return entries


def write_ledger(path: Path, entries: Sequence[Entry]) -> None:
    """Rewrite the ledger atomically, one entry a line, oldest first."""
    from pipeline.core.fileio import write_text

    write_text(path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def record(path: Path, entry: Entry) -> None:
    """Add an entry, replacing one with the same key (the same file scored the same way)."""
    entries = [e for e in read_ledger(path) if e["key"] != entry["key"]]
    write_ledger(path, [*entries, entry])


def git_commit() -> str | None:
    """The current commit, with `+dirty` when tracked files changed; None outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def config_hash(cfg: Config) -> str:
    """Short digest of the whole resolved config."""
    text = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def make_entry(report: dict[str, Any], cfg: Config, note: str) -> Entry:
    """A ledger entry from a `cellpipe score` report."""
    summary = report["map_iou"]
    identity = f"{report['submission_sha256']}|{report['truth_sha256']}|{report['folds']}"
    return {
        "key": hashlib.sha256(identity.encode()).hexdigest()[:10],
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "submission": report["submission"],
        "submission_sha256": report["submission_sha256"],
        "folds": report["folds"],
        "n_images": summary["n_images"],
        "git_commit": git_commit(),
        "config_hash": config_hash(cfg),
        "note": note,
        "score": summary["score"],
        "per_class": summary["per_class"],
        "per_threshold": [t["score"] for t in summary["per_threshold"]],
        "glas": report.get("glas", {}).get("overall", {}),
        "public_score": None,
        "private_score": None,
        "kaggle_ref": None,
    }


# --- Kaggle scores ------------------------------------------------------------------------------


def _score(text: Any) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except (TypeError, ValueError):
        return None


def apply_kaggle_scores(entries: Sequence[Entry], submissions: Sequence[Any]) -> int:
    """Copy public/private scores of Kaggle submissions onto their entries; returns how many.

    A submission (with `description`, `public_score`, `private_score`, `ref`) belongs to the entry
    whose key appears in its description, else to the one whose non-empty note equals it.
    """
    updated = 0
    for sub in submissions:
        description = (getattr(sub, "description", None) or "").strip()
        entry = next((e for e in entries if e["key"] in description), None) or next(
            (e for e in entries if e.get("note") and e["note"].strip() == description), None
        )
        if entry is None:
            continue
        entry["public_score"] = _score(getattr(sub, "public_score", None))
        entry["private_score"] = _score(getattr(sub, "private_score", None))
        entry["kaggle_ref"] = str(getattr(sub, "ref", "") or "") or None
        updated += 1
    return updated


def fetch_kaggle_submissions(competition: str) -> list[Any]:
    """This account's submissions to a competition (the kaggle client; needs network)."""
    from pipeline.kaggle_client import kaggle_api, kaggle_call

    what = f"cannot list Kaggle submissions for {competition}"
    try:
        api = kaggle_api()
        with kaggle_call(what):
            return list(api.competition_submissions(competition, page_size=200) or [])
    except CellpipeError as e:
        message = str(e)
        raise CellpipeError(message if message.startswith(what) else f"{what}: {message}") from None


# --- table and plots ----------------------------------------------------------------------------


def leaderboard_table(entries: Sequence[Entry]):
    """Entries as a table, best local score first."""
    import pandas as pd

    classes = sorted({c for e in entries for c in e.get("per_class", {})})
    rows = [
        {
            "key": e["key"],
            "time": str(e.get("time", ""))[:16].replace("T", " "),
            "score": e.get("score"),
            **{c: e.get("per_class", {}).get(c) for c in classes},
            "public": e.get("public_score"),
            "private": e.get("private_score"),
            "folds": ",".join(map(str, e.get("folds") or [])) or "all",
            "commit": (e.get("git_commit") or "")[:8],
            "note": e.get("note", ""),
        }
        for e in entries
    ]
    columns = ["key", "time", "score", *classes, "public", "private", "folds", "commit", "note"]
    table = pd.DataFrame(rows, columns=columns)
    for column in ("score", *classes, "public", "private"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    table = table.sort_values("score", ascending=False, na_position="last", kind="stable")
    table.index = range(1, len(table) + 1)
    return table


def write_plots(entries: Sequence[Entry], folder: Path, top: int) -> list[Path]:
    """Per-threshold curves and per-class bars of the best `top` entries, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from pipeline.core.fileio import atomic_path
    from pipeline.core.metrics import THRESHOLDS

    best = leaderboard_table(entries)["key"].head(top).tolist()
    chosen = [next(e for e in entries if e["key"] == k) for k in best]
    labels = [
        " ".join(filter(None, [e["key"], e.get("folds") and f"folds {e['folds']}", e.get("note")]))[
            :50
        ]
        for e in chosen
    ]
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for entry, label in zip(chosen, labels):
        if len(entry.get("per_threshold", [])) == len(THRESHOLDS):
            ax.plot(THRESHOLDS, entry["per_threshold"], marker="o", label=label)
    ax.set(xlabel="IoU threshold", ylabel="TP / (TP + FP + FN)", title="Score per threshold")
    ax.grid(alpha=0.3)
    if chosen:
        ax.legend(fontsize=7)
    paths.append(folder / "per_threshold.png")

    fig2, ax2 = plt.subplots(figsize=(7, 4.5))
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
        plt.close(figure)
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
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(leaderboard_table(entries).to_string(float_format="{:.4f}".format, na_rep="-"))
    for path in write_plots(entries, cfg.layout.leaderboard_dir, params.top):
        print(f"wrote {path}")
