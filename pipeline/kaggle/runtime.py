"""What the kernel notebooks call on Kaggle once cellpipe is installed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pipeline.config import dump_yaml, load_config
from pipeline.core.fileio import write_text


def kaggle_config(path: Path, base: Path, **settings: Any) -> Path:
    """Write and check a kernel's run config: `_base_: <the bundle's config>` plus `settings`."""
    import yaml

    plain = json.loads(json.dumps(settings, default=str))  # Paths as strings
    write_text(path, yaml.safe_dump({"_base_": str(base), **plain}, sort_keys=False))
    load_config(path)
    return path


def place_pretrained(config: Path, models: dict[str, Path]) -> None:
    """Put bundled pretrained models where `finetune.init=pretrain` finds them, as if the
    pretrain stage had written them under the kernel's work folder."""
    from pipeline.training.runs import write_pretrain_summary

    layout = load_config(config).layout
    for family, path in models.items():
        target = layout.pretrain_model(family)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    write_pretrain_summary(layout, {f: layout.pretrain_model(f) for f in models})


def export_training_outputs(config: Path, dest: Path) -> list[Path]:
    """Copy what inference needs from a training run to `dest` (the kernel's output), in the
    work folder's layout: every fold's `model_best.pth` with its `metrics.jsonl`, the finetune
    summary, `thresholds.json` and the run's config, resolved; never optimizer checkpoints,
    COCO files or predictions. The files written, relative to `dest`."""
    cfg = load_config(config)
    layout = cfg.layout
    work = layout.work
    files = [
        *sorted(layout.finetune_dir.glob("*/fold*/model_best.pth")),
        *sorted(layout.finetune_dir.glob("*/fold*/metrics.jsonl")),
        layout.finetune_summary,
        layout.thresholds,
    ]
    copied = []
    for path in [p for p in files if p.is_file()]:
        target = dest / path.relative_to(work)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied.append(target.relative_to(dest))
    write_text(dest / "config.yaml", dump_yaml(cfg))  # resolved: no path into the bundle
    return [*copied, Path("config.yaml")]
