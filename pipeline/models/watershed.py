"""Family `watershed`: the classical floor, no training (scikit-image).

Per image: percentile-normalised grey, Gaussian-smoothed; the cell signal is the image itself
(bright cells), its inverse (dark cells) or its absolute deviation from the median (phase contrast:
cells both brighter and darker than the background), chosen by `model.watershed.contrast`. Otsu's
threshold of the signal gives a soft foreground probability, sigmoid((signal - otsu) / softness);
pixels above `foreground` are split into cells by a watershed of their distance transform from
its local maxima (at least `min_distance` px apart).

Each cell's crop holds the soft probability, so `tune` moves the effective threshold through the
`mask` threshold; its score is the mean probability. Every instance gets the first class: the
method cannot tell classes apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.segmentation import watershed

from pipeline.config import WatershedConfig
from pipeline.core.instances import instance_boxes_and_crops
from pipeline.core.predictions import ImagePredictions, quantise
from pipeline.models.base import CellModel, register


def cell_signal(grey: np.ndarray, cfg: WatershedConfig) -> np.ndarray:
    """The smoothed signal in which cells are bright, from a grey image (any range)."""
    low, high = np.percentile(grey, [1, 99.8])
    scaled = np.clip((grey - low) / max(high - low, 1e-6), 0, 1)
    smooth = gaussian(scaled, cfg.sigma)
    contrast = cfg.contrast
    if contrast == "auto":
        median = float(np.median(smooth))
        contrast = "bright" if median < 0.35 else "dark" if median > 0.75 else "deviation"
    if contrast == "dark":
        return 1.0 - smooth
    if contrast == "deviation":
        return gaussian(np.abs(scaled - np.median(scaled)), cfg.sigma)
    return smooth


def watershed_cells(grey: np.ndarray, cfg: WatershedConfig) -> tuple[np.ndarray, np.ndarray]:
    """int32 cell labels (1..n) and the float foreground probability of a grey image."""
    signal = cell_signal(grey.astype(np.float64), cfg)
    spread = float(signal.max() - signal.min())
    if spread <= 1e-6:
        return np.zeros(grey.shape, np.int32), np.zeros(grey.shape, np.float32)
    otsu = threshold_otsu(signal)
    prob = 1.0 / (1.0 + np.exp(-(signal - otsu) / (cfg.softness * spread)))
    foreground = ndimage.binary_fill_holes(prob > cfg.foreground)
    distance = ndimage.distance_transform_edt(foreground)
    blobs, _ = ndimage.label(foreground)
    peaks = peak_local_max(
        gaussian(distance, 1.0), min_distance=cfg.min_distance, labels=blobs, exclude_border=False
    )
    markers = np.zeros(grey.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=foreground).astype(np.int32)
    return labels, prob.astype(np.float32)


def cells_to_predictions(labels: np.ndarray, prob: np.ndarray) -> ImagePredictions:
    """Box-cropped predictions of a label image: crops hold `prob` inside each cell, scores are
    the mean probability, every label 1."""
    ids, boxes, crops = instance_boxes_and_crops(labels)
    masks, scores = [], []
    for (x0, y0, x1, y1), crop in zip(boxes, crops):
        inside = prob[y0:y1, x0:x1] * crop
        masks.append(quantise(inside))
        scores.append(float(inside.sum() / max(crop.sum(), 1)))
    return ImagePredictions(
        labels.shape,
        np.asarray(boxes, np.int32).reshape(-1, 4),
        np.array(scores, np.float32),
        np.ones(len(ids), np.int32),
        masks,
    )


@register
class WatershedModel(CellModel):
    """Otsu + distance-transform watershed: the floor every learnt family must beat."""

    family = "watershed"
    config_class = WatershedConfig

    def __init__(self, cfg: WatershedConfig, classes: Sequence[str], scale: float = 1.0):
        super().__init__(cfg, classes, scale)

    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor]) -> list[ImagePredictions]:
        out = []
        for image in images:
            height, width = image.shape[-2:]
            grey = image.float().mean(dim=0)
            if self.scale != 1.0:
                grey = F.interpolate(
                    grey[None, None], scale_factor=self.scale, mode="bilinear", antialias=True
                )[0, 0]
            labels, prob = watershed_cells(grey.cpu().numpy(), self.cfg)
            if labels.shape != (height, width):
                size = (int(height), int(width))
                labels = ndimage.zoom(labels, np.divide(size, labels.shape), order=0)[
                    :height, :width
                ]
                prob = F.interpolate(torch.from_numpy(prob)[None, None], size, mode="bilinear")
                prob = prob[0, 0].numpy()
            out.append(cells_to_predictions(labels, prob))
        return out
