"""Run a stage only when it is out of date, and record what it read.

A stage declares its input files, its output files and the config block it uses. After a run, a
manifest under `<work_dir>/manifests/` records digests of all three; the next run is skipped when
every output exists and nothing recorded has changed (as DVC's lock file does). `make` decides by
modification time which stages to call; this check makes a rerun cheap and catches edits that
`make` cannot see (a changed config key, an output touched by hand).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from pipeline.config import Config
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import file_digest, write_json, write_text

Params = BaseModel | Mapping[str, Any]


def _digests(paths: Sequence[Path]) -> dict[str, str]:
    return {str(p): file_digest(p) for p in paths}


def _plain(params: Params) -> Any:
    """A config block (or a mapping of blocks, thresholds and values) as plain JSON data."""
    return to_jsonable_python(params)


def run_stage(
    name: str,
    cfg: Config,
    *,
    inputs: Sequence[Path],
    outputs: Sequence[Path],
    params: Params,
    body: Callable[[], None],
    force: bool = False,
) -> bool:
    """Run `body` unless the outputs are up to date; return whether it ran.

    params: the config blocks the stage reads: `cfg.tune`, or `{"predict": ..., "model": ...}`.
    """
    missing = [p for p in inputs if not p.exists()]
    if missing:
        raise CellpipeError(f"missing input {missing[0]} (run the stage that writes it first)")
    manifest_path = cfg.layout.manifests / f"{name}.json"
    record = {"params": _plain(params), "inputs": _digests(inputs)}
    if not force and all(p.exists() for p in outputs) and manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        if {k: previous.get(k) for k in record} == record and previous.get("outputs") == _digests(
            outputs
        ):
            print(f"{name}: up to date")
            for path in outputs:  # newer than the inputs again, for make
                os.utime(path)
            return False
    body()
    absent = [p for p in outputs if not p.exists()]
    if absent:
        raise CellpipeError(f"{name}: did not write {absent[0]}")
    write_json(manifest_path, {**record, "outputs": _digests(outputs)})
    text = yaml.safe_dump(record["params"], sort_keys=False)
    write_text(cfg.layout.manifests / f"{name}.config.yaml", text)
    return True
