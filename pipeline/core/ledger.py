"""The local leaderboard's ledger: one JSON object a line per scored submission.

Each entry (written by `cellpipe score`): key, time, git commit, config hash, the local score
overall, per class and per threshold, the note, and the public / private Kaggle scores once
`leaderboard --refresh` has found them (a Kaggle submission belongs to the entry whose key its
description contains, or whose note it equals).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.core.errors import CellpipeError
from pipeline.core.provenance import git_commit

Entry = dict[str, Any]


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


def make_entry(report: dict[str, Any], config_hash: str, note: str) -> Entry:
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
        "config_hash": config_hash,
        "note": note,
        "score": summary["score"],
        "per_class": summary["per_class"],
        "per_threshold": [t["score"] for t in summary["per_threshold"]],
        "glas": report.get("glas", {}).get("overall", {}),
        "public_score": None,
        "private_score": None,
        "kaggle_ref": None,
    }


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
