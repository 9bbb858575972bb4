"""Test-time augmentation and ensembling on box-cropped predictions.

Flips are undone exactly on boxes and crops. Predictions of several views (flips, models) of one
image are merged by clustering: views are taken in turn, and each detection joins the cluster
whose first box it overlaps most (box IoU above a threshold, same class, one detection per view
and cluster) or starts a new one. A cluster becomes one instance: its box is the union of its
members' boxes, its mask the mean of their probabilities over all views (a view that missed the
instance counts as 0: mask voting), its score the sum of member scores over the number of views.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.core.predictions import ImagePredictions, quantise

FLIPS = {
    "none": (False, False),
    "hflip": (True, False),
    "vflip": (False, True),
    "hvflip": (True, True),
}


def flip_predictions(pred: ImagePredictions, horizontal: bool, vertical: bool) -> ImagePredictions:
    """Predictions made on a flipped image, mapped back to the original (flips are their own
    inverse, so this also maps original predictions onto the flipped image)."""
    height, width = pred.shape
    boxes = pred.boxes.copy()
    masks = list(pred.masks)
    if horizontal:
        boxes[:, [0, 2]] = width - pred.boxes[:, [2, 0]]
        masks = [m[:, ::-1] for m in masks]
    if vertical:
        boxes[:, [1, 3]] = height - pred.boxes[:, [3, 1]]
        masks = [m[::-1, :] for m in masks]
    return ImagePredictions(
        pred.shape, boxes, pred.scores, pred.labels, [np.ascontiguousarray(m) for m in masks]
    )


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of (n, 4) and (m, 4) boxes [x0, y0, x1, y1)."""
    a = a.astype(np.float64)[:, None]
    b = b.astype(np.float64)[None]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _clusters(views: Sequence[ImagePredictions], iou_threshold: float) -> list[list[tuple]]:
    """Members (view, index) of each cluster, in order of the clusters' first member."""
    clusters: list[list[tuple[int, int]]] = []
    heads = np.zeros((0, 4), np.int64)
    head_labels = np.zeros(0, np.int64)
    for v, view in enumerate(views):
        order = np.argsort(-view.scores, kind="stable")
        iou = box_iou(view.boxes[order], heads) if len(heads) else np.zeros((len(order), 0))
        iou[view.labels[order][:, None] != head_labels[None, :]] = 0.0
        taken = np.zeros(len(heads), bool)
        new_heads = []
        for row, i in enumerate(order):
            candidates = np.where(taken, -1.0, iou[row])
            best = int(np.argmax(candidates)) if len(candidates) else -1
            if best >= 0 and candidates[best] > iou_threshold:
                clusters[best].append((v, int(i)))
                taken[best] = True
            else:
                clusters.append([(v, int(i))])
                new_heads.append(i)
        heads = np.concatenate([heads, view.boxes[new_heads].reshape(-1, 4)])
        head_labels = np.concatenate([head_labels, view.labels[new_heads]])
    return clusters


def merge_predictions(
    views: Sequence[ImagePredictions], iou_threshold: float = 0.55, min_votes: int = 1
) -> ImagePredictions:
    """One set of predictions from several views of one image (all in its original pixels)."""
    if not views:
        raise ValueError("nothing to merge")
    if len(views) == 1:
        return views[0]
    shape = views[0].shape
    boxes, scores, labels, masks = [], [], [], []
    for members in _clusters(views, iou_threshold):
        if len(members) < min_votes:
            continue
        member_boxes = np.array([views[v].boxes[i] for v, i in members])
        x0, y0 = member_boxes[:, :2].min(axis=0)
        x1, y1 = member_boxes[:, 2:].max(axis=0)
        total = np.zeros((y1 - y0, x1 - x0), np.float64)
        for v, i in members:
            bx0, by0, bx1, by1 = views[v].boxes[i]
            total[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] += views[v].masks[i]
        member_labels = [int(views[v].labels[i]) for v, i in members]
        boxes.append([x0, y0, x1, y1])
        scores.append(sum(float(views[v].scores[i]) for v, i in members) / len(views))
        labels.append(max(set(member_labels), key=member_labels.count))
        masks.append(quantise(total / (255.0 * len(views))))
    if not boxes:
        return ImagePredictions.empty(shape)
    return ImagePredictions(
        shape,
        np.array(boxes, np.int32),
        np.array(scores, np.float32),
        np.array(labels, np.int32),
        masks,
    )
