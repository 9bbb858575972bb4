"""Prediction through the model interface: every (model, TTA view) of an image, merged.

Works for every family: each model's `predict` gives box-cropped instances in model labels,
mapped here to COCO category ids; views are undone on the predictions and merged per image by
box clustering and mask voting (`pipeline.core.ensemble`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.config import Config
from pipeline.core.ensemble import FLIPS, flip_predictions, merge_predictions
from pipeline.core.fileio import read_image_checked
from pipeline.core.predictions import ImagePredictions
from pipeline.models.base import CellModel, image_to_tensor


def device_for(choice: str) -> torch.device:
    """`auto`: CUDA when available; `cuda` or `cpu` as asked."""
    cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if cuda else "cpu")


def predict_views(
    model: CellModel,
    tensors: Sequence[torch.Tensor],
    views: Sequence[str],
    category_ids: Mapping[str, int],
) -> list[list[ImagePredictions]]:
    """Per image, the model's predictions under each view, undone, in COCO category ids."""
    to_category = np.array([0] + [category_ids.get(c, 0) for c in model.classes], np.int32)
    out: list[list[ImagePredictions]] = [[] for _ in tensors]
    for view in views:
        h, v = FLIPS[view]
        dims = [d for d, flip in ((-1, h), (-2, v)) if flip]
        flipped = [t.flip(dims) if dims else t for t in tensors]
        for k, pred in enumerate(model.predict(flipped)):
            pred.labels = to_category[pred.labels]
            out[k].append(flip_predictions(pred, h, v))
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
                for k, preds in enumerate(predict_views(model, tensors, params.tta, category_ids)):
                    views[k] += preds
            for im, image_views in zip(batch, views):
                stem = Path(im["file_name"]).stem
                out[stem] = merge_predictions(image_views, params.merge_iou, params.min_votes)
            bar.update(len(batch))
    return out
