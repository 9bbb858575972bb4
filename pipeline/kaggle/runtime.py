"""What the kernel notebooks call on Kaggle once cellpipe is installed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pipeline.config import load_config
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
