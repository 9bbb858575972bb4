"""Prediction through the model interface: every (model, scale, TTA view) of an image, merged.

Works for every family: each model's `predict` gives box-cropped instances in model labels (in
the pixels of the image it was given, whatever its `scale`), mapped here to COCO category ids;
views (flips, 90-degree rotations, transposes) are undone on the predictions, and everything is
merged per image by box clustering and mask voting (`pipeline.core.ensemble`). A scale of TTA
multiplies the model's own `scale` for that pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.config import Config
from pipeline.core.ensemble import VIEWS, merge_predictions, unview_predictions
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import read_image_checked
from pipeline.core.predictions import ImagePredictions
from pipeline.models import family_class
from pipeline.models.base import CellModel, image_to_tensor
from pipeline.models.checkpoints import checkpoint_family, read_checkpoint


def device_for(choice: str, index: int = 0) -> torch.device:
    """The device a `device` setting names: `auto`, CUDA (GPU `index`) when available, else the
    CPU; `cuda` (a one-line error without a GPU) or `cpu` as asked."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise CellpipeError("device is cuda but no CUDA device is available")
    cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    return torch.device("cuda", index) if cuda else torch.device("cpu")


def view_tensor(image: torch.Tensor, view: str) -> torch.Tensor:
    """`view` of an image (..., H, W): transposed, then flipped, as `VIEWS` says."""
    transpose, horizontal, vertical = VIEWS[view]
    image = image.transpose(-1, -2) if transpose else image
    dims = [d for d, flip in ((-1, horizontal), (-2, vertical)) if flip]
    return image.flip(dims) if dims else image


def predict_views(
    model: CellModel,
    tensors: Sequence[torch.Tensor],
    views: Sequence[str],
    category_ids: Mapping[str, int],
    scales: Sequence[float] = (1.0,),
) -> list[list[ImagePredictions]]:
    """Per image, the model's predictions under each (scale, view), undone, in COCO ids."""
    to_category = np.array([0] + [category_ids.get(c, 0) for c in model.classes], np.int32)
    out: list[list[ImagePredictions]] = [[] for _ in tensors]
    own_scale = model.scale
    try:
        for scale in scales:
            model.scale = own_scale * scale
            for view in views:
                for k, pred in enumerate(model.predict([view_tensor(t, view) for t in tensors])):
                    pred.labels = to_category[pred.labels]
                    out[k].append(unview_predictions(pred, view))
    finally:
        model.scale = own_scale
    return out


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_images(
    models: Sequence[CellModel],
    images: Sequence[dict[str, Any]],
    cfg: Config,
    category_ids: Mapping[str, int],
    device: torch.device,
    progress: str,
) -> dict[str, ImagePredictions]:
    """Merged predictions of every (model, TTA view) for each COCO image entry, by file stem."""
    params = cfg.predict
    out = {}
    with tqdm(total=len(images), desc=progress, unit="img") as bar:  # closed before errors
        for batch in _batches(images, params.batch_size):
            tensors = [
                image_to_tensor(
                    read_image_checked(cfg.data / im["file_name"], (im["height"], im["width"]))
                ).to(device)
                for im in batch
            ]
            views: list[list[ImagePredictions]] = [[] for _ in batch]
            for model in models:
                per_image = predict_views(model, tensors, params.tta, category_ids, params.scales)
                for k, preds in enumerate(per_image):
                    views[k] += preds
            for im, image_views in zip(batch, views):
                stem = Path(im["file_name"]).stem
                out[stem] = merge_predictions(image_views, params.merge_iou, params.min_votes)
            bar.update(len(batch))
    return out


def inference_checkpoints(cfg: Config) -> dict[str, list[Path]]:
    """The checkpoints that predict test images, per trained family of `predict.models`:
    `predict.checkpoints` (each by the family it records), else every fold's best model."""
    if not cfg.predict.checkpoints:
        return cfg.fold_models()
    trained = cfg.trained_families
    out: dict[str, list[Path]] = {f: [] for f in trained}
    for path in cfg.predict.checkpoints:
        family = checkpoint_family(read_checkpoint(path))
        if family not in out:
            raise CellpipeError(f"predict.checkpoints: {path} is {family}, not in {trained}")
        out[family].append(path)
    for family, paths in out.items():
        if not paths:
            raise CellpipeError(f"predict.checkpoints has no {family} model")
    return out


def inference_models(
    cfg: Config,
    family: str,
    checkpoints: Sequence[Path],
    class_names: Sequence[str],
    device: torch.device,
) -> list[CellModel]:
    """The models that predict unseen images for `family`: its checkpoints as the family
    combines them (a flow U-Net's folds as one), or the family itself when it has no weights."""
    from pipeline.models import build_model
    from pipeline.models.checkpoints import load_model

    if cfg.model.block(family).trainable:
        return family_class(family).combine([load_model(p, device, cfg.model) for p in checkpoints])
    return [build_model(cfg.model, list(class_names), family).to(device).eval()]
