"""Paint box-cropped instance masks into a label image, greedily, so no two share a pixel.

Instances are visited in a given order (best score first, or largest first); each keeps only the
pixels no earlier instance took (`mask & ~used`), and is dropped when what remains is below a
minimum area or below a fraction of its own area. Masks stay cropped to their boxes throughout:
one image with 1000 instances never needs a (1000, H, W) stack. `instance_boxes_and_crops` goes
the other way, from a label image to the boxes and crops that `paint_instances` takes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
from scipy import ndimage

from pipeline.core.metrics import compact_labels
from pipeline.core.rle import as_label_image


@numba.njit(cache=True, nogil=True)
def _paint(height, width, boxes, flat, offsets, order, min_area, min_keep):  # pragma: no cover
    labels = np.zeros((height, width), np.int32)
    kept = np.empty(order.shape[0], np.int64)
    n_kept = 0
    for i in order:
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        crop = flat[offsets[i] : offsets[i + 1]].reshape(y1 - y0, x1 - x0)
        own = 0
        free = 0
        for r in range(y1 - y0):
            for c in range(x1 - x0):
                if crop[r, c]:
                    own += 1
                    if labels[y0 + r, x0 + c] == 0:
                        free += 1
        if own == 0 or free < min_area[i] or free < min_keep[i] * own:
            continue
        n_kept += 1
        for r in range(y1 - y0):
            for c in range(x1 - x0):
                if crop[r, c] and labels[y0 + r, x0 + c] == 0:
                    labels[y0 + r, x0 + c] = n_kept
        kept[n_kept - 1] = i
    return labels, kept[:n_kept]


def paint_instances(
    shape: tuple[int, int],
    boxes: np.ndarray,
    masks: Sequence[np.ndarray],
    order: np.ndarray | None = None,
    min_area: int | np.ndarray = 1,
    min_keep: float | np.ndarray = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Label image (int32) and the kept instance indices; kept[k] is painted as label k + 1.

    boxes: (n, 4) ints x0, y0, x1, y1 (end exclusive) inside the image; masks[i]: bool crop of
    shape (y1 - y0, x1 - x0); order: visiting order (default 0..n-1); an instance is dropped when
    fewer than `min_area` pixels, or fewer than `min_keep` of its own pixels, are still free
    (each a scalar or one value per instance).
    """
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    height, width = int(shape[0]), int(shape[1])
    if len(masks) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(masks)} masks")
    if len(boxes) and (
        (boxes[:, :2] < 0).any()
        or (boxes[:, 2] > width).any()
        or (boxes[:, 3] > height).any()
        or (boxes[:, 2:] < boxes[:, :2]).any()
    ):
        raise ValueError("boxes must lie inside the image with x0 <= x1 and y0 <= y1")
    for i, m in enumerate(masks):
        if m.shape != (boxes[i, 3] - boxes[i, 1], boxes[i, 2] - boxes[i, 0]):
            raise ValueError(f"mask {i} has shape {m.shape}, its box is {boxes[i].tolist()}")
    sizes = np.array([m.size for m in masks], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    flat = (np.concatenate([m.ravel() for m in masks]) if masks else np.zeros(0)).astype(np.bool_)
    order = np.arange(len(boxes)) if order is None else np.asarray(order, np.int64)
    n = len(boxes)
    min_area = np.broadcast_to(np.asarray(min_area, np.int64), (n,))
    min_keep = np.broadcast_to(np.asarray(min_keep, np.float64), (n,))
    return _paint(height, width, boxes, flat, offsets, order, min_area, min_keep)


def order_by_score(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score, ties by index."""
    return np.argsort(-np.asarray(scores), kind="stable")


def order_by_area(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Indices by descending mask area, ties by index (the seeds kept the biggest)."""
    return np.argsort(-np.array([int(np.count_nonzero(m)) for m in masks]), kind="stable")


def instance_boxes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids (ascending) of the labels > 0 present and their (n, 4) int32 boxes x0, y0, x1, y1."""
    labels = as_label_image(labels)
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be >= 0")
    ids = None
    if labels.size and labels.max() > labels.size:  # ids far apart: find boxes on 1..n
        ids = np.unique(labels)
        ids = ids[ids > 0]
        labels = compact_labels(labels)
    slices = ndimage.find_objects(labels.astype(np.intp, copy=False)) if labels.size else []
    present = [k for k, s in enumerate(slices, start=1) if s is not None]
    boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in slices if s is not None]
    ids = np.array(present, np.int64) if ids is None else ids.astype(np.int64)
    return ids, np.array(boxes, np.int32).reshape(-1, 4)


def instance_boxes_and_crops(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Ids, boxes (as `instance_boxes`) and each instance's bool mask cropped to its box."""
    labels = np.asarray(labels)
    ids, boxes = instance_boxes(labels)
    crops = [labels[y0:y1, x0:x1] == k for k, (x0, y0, x1, y1) in zip(ids, boxes)]
    return ids, boxes, crops


def median_diameter(areas: np.ndarray) -> float:
    """Median diameter (px) of instances of these areas, as the circle of the same area has it
    (cellpose's measure); 0 for no instance."""
    if not len(areas):
        return 0.0
    return float(np.median(2 * np.sqrt(np.asarray(areas, np.float64) / np.pi)))


def label_image_diameter(labels: np.ndarray) -> float:
    """`median_diameter` of the instances of a label image (0: background)."""
    areas = np.bincount(labels.ravel())[1:]
    return median_diameter(areas[areas > 0])
