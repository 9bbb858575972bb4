"""A training sample's augmentation: scale (with jitter) and crop, dihedral flips and rotations,
and photometric jitter, applied to the image and to each instance's box-sized mask crop.

Boxes are recomputed from the transformed crops, so they always agree with the masks. Every draw
comes from the sample's own random stream, in a fixed order: geometry, dihedral steps, photometric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import AugmentConfig
from pipeline.training.records import Record, decode_crop, pixel_boxes


@dataclass(frozen=True)
class Geometry:
    """One sample's crop of the source image and its output size."""

    y0: int
    x0: int
    y1: int
    x1: int
    out_h: int
    out_w: int


def window_start(length: int, size: int, rng: np.random.Generator, point: float | None) -> int:
    """A random start of a window of `size` px inside `length` px, containing `point` if given."""
    if point is None:
        return int(rng.integers(0, length - size + 1))
    inside = min(max(math.floor(point), 0), length - 1)
    low = min(max(0, inside - size + 1), length - size)
    return int(rng.integers(low, max(low, min(inside, length - size)) + 1))


def plan_geometry(
    height: int,
    width: int,
    scale: float,
    augment: AugmentConfig | None,
    rng: np.random.Generator,
    focus: tuple[float, float] | None = None,
) -> Geometry:
    """Scale (with jitter) then random crop, expressed as a source window and an output size; the
    crop contains the source point `focus` (y, x) if given."""
    if augment is not None:
        lo, hi = augment.scale_range
        scale *= math.exp(rng.uniform(math.log(lo), math.log(hi)))
    out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
    crop_h, crop_w = (out_h, out_w) if augment is None or augment.crop is None else augment.crop
    crop_h, crop_w = min(crop_h, out_h), min(crop_w, out_w)
    sy, sx = height / out_h, width / out_w
    oy = window_start(out_h, crop_h, rng, None if focus is None else focus[0] / sy)
    ox = window_start(out_w, crop_w, rng, None if focus is None else focus[1] / sx)
    y0, x0 = math.floor(oy * sy), math.floor(ox * sx)
    y1 = min(height, max(y0 + 1, round((oy + crop_h) * sy)))
    x1 = min(width, max(x0 + 1, round((ox + crop_w) * sx)))
    return Geometry(y0, x0, y1, x1, crop_h, crop_w)


def sample_positions(start: int, stop: int, size: int) -> np.ndarray:
    """Source pixel of each of `size` output pixels resampling [start, stop) (centre-aligned)."""
    step = (stop - start) / size
    return start + np.minimum(((np.arange(size) + 0.5) * step).astype(np.int64), stop - start - 1)


def dihedral_ops(augment: AugmentConfig, rng: np.random.Generator) -> list[str]:
    """Random flips and 90-degree rotation as a list of t(ranspose), h(flip), v(flip) steps."""
    ops = [op for op, p in (("h", augment.hflip), ("v", augment.vflip)) if rng.random() < p]
    if rng.random() < augment.rot90:
        k = int(rng.integers(1, 4))  # np.rot90 by k: 1 = t then v, 2 = h then v, 3 = t then h
        ops += {1: ["t", "v"], 2: ["h", "v"], 3: ["t", "h"]}[k]
    return ops


def _apply_op(op: str, crop: np.ndarray, box: list[int], height: int, width: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    if op == "t":
        box[:] = [y0, x0, y1, x1]
        return crop.T
    if op == "h":
        box[0], box[2] = width - x1, width - x0
        return crop[:, ::-1]
    box[1], box[3] = height - y1, height - y0
    return crop[::-1]


def sample_image(image: torch.Tensor, g: Geometry, ops: list[str]) -> torch.Tensor:
    """An image (C, H, W) cut to `g`'s window, resized to its output size, then flipped and rotated
    by the dihedral steps `ops`."""
    tensor = image[:, g.y0 : g.y1, g.x0 : g.x1]
    if (g.out_h, g.out_w) != tuple(tensor.shape[1:]):
        shrink = g.out_h < tensor.shape[1]
        size = (g.out_h, g.out_w)
        tensor = F.interpolate(tensor[None], size, mode="bilinear", antialias=shrink)[0]
    for op in ops:
        tensor = tensor.transpose(1, 2) if op == "t" else tensor.flip(2 if op == "h" else 1)
    return tensor


def instance_crops(
    record: Record, g: Geometry, ops: list[str]
) -> tuple[list[np.ndarray], list[list[int]], list[int]]:
    """Each instance's mask in the sample: a tight crop, its box [x0, y0, x1, y1), its label."""
    rows = sample_positions(g.y0, g.y1, g.out_h)
    cols = sample_positions(g.x0, g.x1, g.out_w)
    src = pixel_boxes(record.boxes, record.height, record.width)
    src[:, 0::2] = np.clip(src[:, 0::2], g.x0, g.x1)
    src[:, 1::2] = np.clip(src[:, 1::2], g.y0, g.y1)
    crops, boxes, labels = [], [], []
    for i in np.flatnonzero((src[:, 2] > src[:, 0]) & (src[:, 3] > src[:, 1])):
        x0, y0, x1, y1 = src[i]
        r0, r1 = np.searchsorted(rows, [y0, y1])
        c0, c1 = np.searchsorted(cols, [x0, x1])
        if r1 <= r0 or c1 <= c0:
            continue
        crop = decode_crop(record.segmentations[i], record.height, record.width, src[i])
        crop = crop[np.ix_(rows[r0:r1] - y0, cols[c0:c1] - x0)]
        box = [int(c0), int(r0), int(c1), int(r1)]
        height, width = g.out_h, g.out_w
        for op in ops:
            crop = _apply_op(op, crop, box, height, width)
            if op == "t":
                height, width = width, height
        filled_rows, filled_cols = np.flatnonzero(crop.any(1)), np.flatnonzero(crop.any(0))
        if not len(filled_rows):
            continue  # resampling missed a sliver at the crop edge
        ra, rb, ca, cb = (
            filled_rows[0],
            filled_rows[-1] + 1,
            filled_cols[0],
            filled_cols[-1] + 1,
        )
        crops.append(crop[ra:rb, ca:cb])
        boxes.append([box[0] + int(ca), box[1] + int(ra), box[0] + int(cb), box[1] + int(rb)])
        labels.append(int(record.labels[i]))
    return crops, boxes, labels


def photometric(
    image: torch.Tensor, augment: AugmentConfig, rng: np.random.Generator
) -> torch.Tensor:
    """Random contrast about the image's mean and brightness shift, clamped to [0, 1]; then grey
    levels inverted with probability `augment.invert` (drawn only when it is not 0)."""
    contrast = rng.uniform(1 - augment.contrast, 1 + augment.contrast)
    brightness = rng.uniform(-augment.brightness, augment.brightness)
    mean = image.mean()
    image = ((image - mean) * contrast + mean + brightness).clamp_(0, 1)
    if augment.invert and rng.random() < augment.invert:
        image = 1 - image
    return image
