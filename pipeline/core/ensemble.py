"""Test-time augmentation and ensembling on box-cropped predictions.

A view is one of the eight symmetries of the square (`VIEWS`): the image is transposed (or not),
then flipped horizontally and / or vertically; predictions made on a view are mapped back exactly
(`unview_predictions`), boxes and crops alike. Predictions of several views (TTA views, scales,
fold models, families) of one image are merged by clustering: views are taken in turn, and each
detection joins the cluster whose first box it overlaps most (box IoU above a threshold, same
class, one detection per view and cluster) or starts a new one. A cluster becomes one instance:
its box is the union of its members' boxes, its mask the weighted mean of their probabilities over
all views (a view that missed the instance counts as 0: mask voting), its score the weighted mean
of member scores over all views, its error the weighted mean of its members' errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.core.predictions import ImagePredictions, quantise
from pipeline.core.views import VIEWS


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
        pred.shape,
        boxes,
        pred.scores,
        pred.labels,
        [np.ascontiguousarray(m) for m in masks],
        pred.errors,
    )


def transpose_predictions(pred: ImagePredictions) -> ImagePredictions:
    """Predictions of a transposed image mapped back (the transpose is its own inverse)."""
    return ImagePredictions(
        (pred.shape[1], pred.shape[0]),
        np.ascontiguousarray(pred.boxes[:, [1, 0, 3, 2]]),
        pred.scores,
        pred.labels,
        [np.ascontiguousarray(m.T) for m in pred.masks],
        pred.errors,
    )


def unview_predictions(pred: ImagePredictions, view: str) -> ImagePredictions:
    """Predictions made on `view` of an image, in the original image's pixels."""
    transpose, horizontal, vertical = VIEWS[view]
    pred = flip_predictions(pred, horizontal, vertical) if horizontal or vertical else pred
    return transpose_predictions(pred) if transpose else pred


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
    views: Sequence[ImagePredictions],
    iou_threshold: float = 0.55,
    min_votes: int = 1,
    weights: Sequence[float] | None = None,
) -> ImagePredictions:
    """One set of predictions from several views of one image (all in its original pixels),
    each view weighted (default 1; a view of weight 0 is left out)."""
    if not views:
        raise ValueError("nothing to merge")
    weights = [1.0] * len(views) if weights is None else [float(w) for w in weights]
    if len(weights) != len(views) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(
            f"weights {weights} for {len(views)} views: need one each, >= 0, not all 0"
        )
    kept = [(view, w) for view, w in zip(views, weights) if w > 0]
    views, weights = [v for v, _ in kept], [w for _, w in kept]
    if len(views) == 1:
        return views[0]
    shape, total_weight = views[0].shape, sum(weights)
    boxes, scores, labels, masks, errors = [], [], [], [], []
    for members in _clusters(views, iou_threshold):
        if len(members) < min_votes:
            continue
        member_boxes = np.array([views[v].boxes[i] for v, i in members])
        x0, y0 = member_boxes[:, :2].min(axis=0)
        x1, y1 = member_boxes[:, 2:].max(axis=0)
        total = np.zeros((y1 - y0, x1 - x0), np.float64)
        for v, i in members:
            bx0, by0, bx1, by1 = views[v].boxes[i]
            total[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] += weights[v] * views[v].masks[i]
        member_weights = np.array([weights[v] for v, _ in members])
        votes: dict[int, float] = {}
        for (v, i), w in zip(members, member_weights):
            votes[int(views[v].labels[i])] = votes.get(int(views[v].labels[i]), 0.0) + w
        boxes.append([x0, y0, x1, y1])
        scores.append(
            sum(weights[v] * float(views[v].scores[i]) for v, i in members) / total_weight
        )
        labels.append(max(sorted(votes), key=votes.__getitem__))
        masks.append(quantise(total / (255.0 * total_weight)))
        member_errors = np.array([views[v].errors[i] for v, i in members], np.float64)
        errors.append(float(member_errors @ member_weights / member_weights.sum()))
    if not boxes:
        return ImagePredictions.empty(shape)
    return ImagePredictions(
        shape,
        np.array(boxes, np.int32),
        np.array(scores, np.float32),
        np.array(labels, np.int32),
        masks,
        np.array(errors, np.float32),
    )


def merge_families(
    family_predictions: Mapping[str, Mapping[str, ImagePredictions]],
    weights: Mapping[str, float],
    iou_threshold: float = 0.55,
    min_votes: int = 1,
) -> dict[str, ImagePredictions]:
    """Per image, the predictions of the families of positive weight: one family's as they are,
    several merged with their weights; every such family must have predicted the same images."""
    used = [f for f in family_predictions if weights.get(f, 0.0) > 0]
    if not used:
        raise ValueError(f"no family has a positive weight in {dict(weights)}")
    ids = list(family_predictions[used[0]])
    for family in used[1:]:
        if set(family_predictions[family]) != set(ids):
            raise ValueError(f"{family} and {used[0]} predicted different images")
    return {
        image_id: merge_predictions(
            [family_predictions[f][image_id] for f in used],
            iou_threshold,
            min_votes,
            [weights[f] for f in used],
        )
        for image_id in ids
    }
