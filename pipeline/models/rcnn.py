"""What both Mask R-CNN families (`maskrcnn`: torchvision's, `detectron2`: detectron2's) share.

Anchor sizes per level from a block's `anchor_sizes`, the training targets (boxes, labels and
full-size masks), input scaling, and the conversion of detections (28x28 mask probabilities and
boxes) into box-cropped predictions in the image's own pixels, pasted as torchvision pastes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import expand_boxes

from pipeline.config import RCNNConfig
from pipeline.core.errors import CellpipeError
from pipeline.core.predictions import ImagePredictions
from pipeline.models.base import SampleInstances


def level_anchor_sizes(cfg: RCNNConfig, n_levels: int, family: str) -> list[list[int]]:
    """`anchor_sizes` of a Mask R-CNN block, one list per level (a single list serves all)."""
    sizes = cfg.anchor_sizes * n_levels if len(cfg.anchor_sizes) == 1 else cfg.anchor_sizes
    if len(sizes) != n_levels:
        raise CellpipeError(
            f"model.{family}.anchor_sizes has {len(sizes)} lists; the backbone has {n_levels} "
            "levels (give one list per level, or one list for all)"
        )
    if len({len(s) for s in sizes}) != 1 or not sizes[0]:
        raise CellpipeError(
            f"model.{family}.anchor_sizes: every level needs the same number of sizes"
        )
    return [list(s) for s in sizes]


def maskrcnn_targets(instances: SampleInstances) -> dict[str, torch.Tensor]:
    """torchvision's detection targets: float boxes, labels and full-size uint8 masks."""
    height, width = instances.shape
    masks = np.zeros((len(instances.crops), height, width), np.uint8)  # calloc: untouched pages
    for k, (crop, (x0, y0, x1, y1)) in enumerate(zip(instances.crops, instances.boxes)):
        masks[k, y0:y1, x0:x1] = crop
    return {
        "boxes": torch.as_tensor(instances.boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(instances.labels, dtype=torch.int64),
        "masks": torch.from_numpy(masks),
    }


def scaled_images(images: Sequence[torch.Tensor], scale: float) -> list[torch.Tensor]:
    """Images (C, H, W) resized by `scale` (bilinear, antialiased when shrinking)."""
    if scale == 1.0:
        return list(images)
    return [
        F.interpolate(im[None].float(), scale_factor=scale, mode="bilinear", antialias=scale < 1)[0]
        for im in images
    ]


def detection_predictions(
    mask_probs: torch.Tensor,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    scaled_shape: Sequence[int],
    shape: tuple[int, int],
) -> ImagePredictions:
    """One image's detections (28x28 mask probabilities, boxes in the pixels of the image seen
    at `scaled_shape`, scores, model labels) as box-cropped predictions in its own pixels."""
    (height, width), (sh, sw) = shape, scaled_shape
    ratio = torch.tensor([width / sw, height / sh] * 2, device=boxes.device)
    kept_boxes, masks = crop_mask_probs(mask_probs, boxes * ratio, (height, width))
    return ImagePredictions(
        shape=(height, width),
        boxes=kept_boxes,
        scores=scores.float().cpu().numpy(),
        labels=labels.cpu().numpy().astype(np.int32),
        masks=masks,
    )


def crop_mask_probs(
    probs: torch.Tensor, boxes: torch.Tensor, shape: tuple[int, int]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each (M, M) mask probability resized into its own box, as torchvision pastes it.

    probs: (n, M, M); boxes: (n, 4) float x0, y0, x1, y1 in image pixels. Returns int32 boxes
    [x0, y0, x1, y1) clipped to the image and uint8 (0..255) crops of matching shapes.
    """
    height, width = shape
    n, size = probs.shape[0], probs.shape[-1]
    padded = F.pad(probs.float(), (1, 1, 1, 1))  # like torchvision's expand_masks(padding=1)
    boxes = expand_boxes(boxes.float(), (size + 2) / size).to(torch.int64).tolist()
    clipped = np.zeros((n, 4), np.int32)
    crops = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1 + 1, width), min(y1 + 1, height)
        cx1, cy1 = max(cx1, cx0), max(cy1, cy0)
        resized = F.interpolate(padded[i][None, None], size=(h, w), mode="bilinear")[0, 0]
        crops.append(resized[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0])
        clipped[i] = (cx0, cy0, cx1, cy1)
    if not crops:
        return clipped, []
    flat = torch.cat([c.reshape(-1) for c in crops])
    flat = (flat * 255.0).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
    ends = np.cumsum([c.numel() for c in crops])
    masks = [
        part.reshape(c.shape[0], c.shape[1]) for part, c in zip(np.split(flat, ends[:-1]), crops)
    ]
    return clipped, masks
