"""Dataset and kernel metadata for the kaggle client, checked as the client checks it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import write_text

DATASET_METADATA = "dataset-metadata.json"
KERNEL_METADATA = "kernel-metadata.json"
PLACEHOLDER_OWNER = "your-kaggle-username"  # until `push` knows the account


def slug(title: str) -> str:
    """The slug Kaggle derives from a title (the kaggle client compares them the same way)."""
    from slugify import slugify

    return slugify(title)


def kaggle_username() -> str | None:
    """The username of the kaggle client's config (KAGGLE_USERNAME or kaggle.json), offline."""
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    folder = os.environ.get("KAGGLE_CONFIG_DIR")
    if not folder:  # the client's default: ~/.kaggle, else ~/.config/kaggle on Linux
        home = Path.home() / ".kaggle"
        folder = home if home.exists() else Path.home() / ".config" / "kaggle"
    try:
        return json.loads((Path(folder) / "kaggle.json").read_text()).get("username") or None
    except (OSError, ValueError, AttributeError):
        return None


def kernel_folders(cfg: Config) -> dict[str, Path]:
    """The kernels `cellpipe kernels` writes: inference (unless kernels.inference=false), train."""
    layout = cfg.layout
    folders = {"inference": layout.kernels_inference, "train": layout.kernels_train}
    return folders if cfg.kernels.inference else {"train": layout.kernels_train}


def dataset_metadata(cfg: Config, owner: str) -> dict[str, Any]:
    params = cfg.kernels
    return {
        "id": f"{owner}/{slug(params.dataset_title)}",
        "title": params.dataset_title,
        "licenses": [{"name": params.license}],
    }


def kernel_metadata(cfg: Config, owner: str, kind: str) -> dict[str, Any]:
    params = cfg.kernels
    title = params.inference_title if kind == "inference" else params.train_title
    return {
        "id": f"{owner}/{slug(title)}",
        "title": title,
        "code_file": f"{slug(title)}.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": not params.public,
        "enable_gpu": True,
        "enable_tpu": False,
        "enable_internet": False,  # the client's default is true: a code submission needs false
        "dataset_sources": [f"{owner}/{slug(params.dataset_title)}", *params.dataset_sources],
        "competition_sources": [cfg.prepare.competition],
        "kernel_sources": [],
        "model_sources": list(params.model_sources),
        "machine_shape": params.machine_shape,
        "docker_image_pinning_type": params.image_pinning,
    }


def check_dataset_metadata(meta: dict[str, Any]) -> None:
    """The kaggle client's checks before `datasets create`, as one-line errors."""
    owner, _, name = str(meta.get("id", "")).partition("/")
    title = str(meta.get("title", ""))
    if not owner or not name or "/" in name:
        raise CellpipeError(f"dataset id {meta.get('id')!r}: expected owner/slug")
    if not 6 <= len(name) <= 50:
        raise CellpipeError(
            f"dataset slug {name!r}: must be 6-50 characters (kernels.dataset_title)"
        )
    if not 6 <= len(title) <= 50:
        raise CellpipeError(f"dataset title {title!r}: must be 6-50 characters")
    if len(meta.get("licenses", [])) != 1:
        raise CellpipeError("dataset metadata: exactly one license")


RETIRED_SHAPES = {"nvidiateslap100": "NvidiaTeslaT4", "tpuv38": "TpuV5E8", "tpu1vmv38": "TpuV5E8"}


def check_kernel_metadata(meta: dict[str, Any]) -> None:
    """The kaggle client's checks before `kernels push`, as one-line errors."""
    owner, _, name = str(meta.get("id", "")).partition("/")
    title = meta.get("title")
    if not owner or not name or "/" in name:
        raise CellpipeError(f"kernel id {meta.get('id')!r}: expected owner/slug")
    if len(name) < 5:
        raise CellpipeError(f"kernel slug {name!r}: must be at least 5 characters")
    if title is not None and (len(title) < 5 or slug(title) != name):
        raise CellpipeError(f"kernel title {title!r}: 5+ characters, slugified to {name!r}")
    if meta.get("language") != "python" or meta.get("kernel_type") not in ("script", "notebook"):
        raise CellpipeError("kernel metadata: language python, kernel_type script or notebook")
    if not meta.get("code_file"):
        raise CellpipeError("kernel metadata: no code_file")
    shape = str(meta.get("machine_shape") or "")
    if shape.lower() in RETIRED_SHAPES:
        instead = RETIRED_SHAPES[shape.lower()]
        raise CellpipeError(f"kernels.machine_shape {shape}: Kaggle retired it (use {instead})")
    for source in [*meta.get("dataset_sources", []), *meta.get("kernel_sources", [])]:
        if source.count("/") != 1 or not all(source.split("/")):
            raise CellpipeError(f"kernel source {source!r}: expected owner/slug")


def write_metadata(cfg: Config, owner: str, bundle: Path, kernels: dict[str, Path]) -> None:
    """dataset-metadata.json and each kernel-metadata.json, for `owner`, checked."""
    meta = dataset_metadata(cfg, owner)
    check_dataset_metadata(meta)
    write_text(bundle / DATASET_METADATA, json.dumps(meta, indent=2) + "\n")
    for kind, folder in kernels.items():
        meta = kernel_metadata(cfg, owner, kind)
        check_kernel_metadata(meta)
        write_text(folder / KERNEL_METADATA, json.dumps(meta, indent=2) + "\n")
