"""Dataset and kernel metadata for the kaggle client, checked as the client checks it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import write_text

DATASET_METADATA = "dataset-metadata.json"
KERNEL_METADATA = "kernel-metadata.json"
MODEL_METADATA = "model-metadata.json"
MODEL_INSTANCE_METADATA = "model-instance-metadata.json"
MODEL_FRAMEWORK = "pyTorch"  # as the kaggle client names it (ModelFramework.PY_TORCH)
PLACEHOLDER_OWNER = "your-kaggle-username"  # until `push` knows the account


def slug(title: str) -> str:
    """The slug Kaggle derives from a title (the kaggle client compares them the same way)."""
    from slugify import slugify

    return slugify(title)


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


def model_id(cfg: Config, owner: str) -> str:
    """The Kaggle Model of `kernels.weights_as=model`: owner/slug."""
    return f"{owner}/{slug(cfg.kernels.model_title)}"


def model_instance(cfg: Config, owner: str) -> str:
    """Its instance: owner/model/framework/variation (a kernel source adds /version)."""
    return f"{model_id(cfg, owner)}/{MODEL_FRAMEWORK}/{cfg.kernels.model_variation}"


def model_metadata(cfg: Config, owner: str) -> dict[str, Any]:
    params = cfg.kernels
    return {
        "ownerSlug": owner,
        "title": params.model_title,
        "slug": slug(params.model_title),
        "subtitle": "",
        "isPrivate": not params.public,
        "description": "cellpipe model weights for the offline kernels of "
        f"{cfg.prepare.competition}",
        "publishTime": "",
        "provenanceSources": "",
    }


def model_instance_metadata(cfg: Config, owner: str) -> dict[str, Any]:
    params = cfg.kernels
    return {
        "ownerSlug": owner,
        "modelSlug": slug(params.model_title),
        "instanceSlug": params.model_variation,
        "framework": MODEL_FRAMEWORK,
        "overview": "",
        "usage": "Attached to the cellpipe kernels; listed in cellpipe-weights.json.",
        "licenseName": params.model_license,
        "fineTunable": False,
        "trainingData": [],
        "modelInstanceType": "Unspecified",
        "baseModelInstanceId": 0,
        "externalBaseModelUrl": "",
    }


def kernel_metadata(
    cfg: Config, owner: str, kind: str, model_version: int | None = None
) -> dict[str, Any]:
    """A kernel's metadata; with a `model_version` it attaches that version of the weights'
    Kaggle Model instance (`cellpipe push` fills in the one it uploaded)."""
    params = cfg.kernels
    weights = [] if model_version is None else [f"{model_instance(cfg, owner)}/{model_version}"]
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
        "model_sources": [*weights, *params.model_sources],
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
    for source in meta.get("model_sources", []):
        parts = source.split("/")
        if len(parts) != 5 or not all(parts) or not parts[4].isdigit():
            raise CellpipeError(
                f"model source {source!r}: expected owner/model/framework/variation/version"
            )


OWNER_SLUG = r"[a-z0-9]+(?:[_-][a-z0-9]+)*"  # the kaggle client's patterns for Kaggle Models
MODEL_SLUG = r"[a-z0-9]+(?:-[a-z0-9]+)*"


def check_model_metadata(model: dict[str, Any], instance: dict[str, Any]) -> None:
    """The kaggle client's checks before `models create` / `models instances create`."""
    if not re.fullmatch(OWNER_SLUG, model["ownerSlug"]):
        raise CellpipeError(f"Kaggle Model owner {model['ownerSlug']!r}: not a valid owner slug")
    for what, value in (
        ("kernels.model_title", model["slug"]),
        ("kernels.model_variation", instance["instanceSlug"]),
    ):
        if not re.fullmatch(MODEL_SLUG, value):
            raise CellpipeError(
                f"{what}: slug {value!r} must be lower-case letters and digits joined by hyphens"
            )
    if not instance["licenseName"]:
        raise CellpipeError("kernels.model_license: Kaggle needs a license")


def write_metadata(
    cfg: Config,
    owner: str,
    bundle: Path,
    kernels: dict[str, Path],
    model_version: int | None = None,
) -> None:
    """dataset-metadata.json and each kernel-metadata.json, for `owner`, checked; kernels
    attach `model_version` of the weights' Kaggle Model instance when given."""
    meta = dataset_metadata(cfg, owner)
    check_dataset_metadata(meta)
    write_text(bundle / DATASET_METADATA, json.dumps(meta, indent=2) + "\n")
    for kind, folder in kernels.items():
        meta = kernel_metadata(cfg, owner, kind, model_version)
        check_kernel_metadata(meta)
        write_text(folder / KERNEL_METADATA, json.dumps(meta, indent=2) + "\n")


def write_model_metadata(cfg: Config, owner: str, weights: Path) -> None:
    """model-metadata.json and model-instance-metadata.json of the weights, checked."""
    model, instance = model_metadata(cfg, owner), model_instance_metadata(cfg, owner)
    check_model_metadata(model, instance)
    write_text(weights / MODEL_METADATA, json.dumps(model, indent=2) + "\n")
    write_text(weights / MODEL_INSTANCE_METADATA, json.dumps(instance, indent=2) + "\n")
