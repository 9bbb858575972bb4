"""GlaS 2015 object-level metrics (the seeds' gland benchmark) and the seeds' count score.

From label images, per image, then pooled over a set of images as the GlaS contest does:
- object F1: a predicted object is a TP when it covers more than 50% of the ground-truth object
  it overlaps most, else an FP; FN = ground-truth objects - TP. F1 = 2TP / (2TP + FP + FN),
  from the counts summed over all images.
- object Dice: 1/2 (sum over ground-truth objects G of |G|/sum|G| Dice(G, S*) + the same over
  predicted objects S with their best ground truth G*), where the partner is the object of the
  other side overlapping most; no overlapping partner gives Dice 0. Weights run over all objects
  of the set.
- object Hausdorff: the same weighting of Hausdorff distances; an object with no overlapping
  partner takes the nearest object of the other side (smallest Hausdorff distance) instead.
- count score: min(n_pred, n_true) / max(n_pred, n_true) per image, averaged over images.

Empty cases: an image with no object on either side has F1 1, Dice 1, Hausdorff 0 and count 1;
an object whose image has no object at all on the other side has Dice 0 and a Hausdorff distance
equal to the image diagonal. A side with no object in the whole set leaves out its half of the
Dice and Hausdorff sums. Ties in overlap go to the lower label.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from pipeline.core import rle
from pipeline.core.metrics import compact_labels, pair_counts, pieces_of_labels
from pipeline.core.submission_matching import ImageRows

METRICS = ("object_f1", "object_dice", "object_hausdorff", "count")


@dataclasses.dataclass(frozen=True)
class GlasImage:
    """One image's object counts and area-weighted Dice / Hausdorff sums (pooled later)."""

    tp: int
    n_true: int
    n_pred: int
    area_true: int  # pixels of all ground-truth objects
    area_pred: int
    dice_true: float  # sum over ground-truth objects of |G| Dice(G, S*)
    dice_pred: float  # sum over predicted objects of |S| Dice(G*, S)
    hausdorff_true: float  # sum over ground-truth objects of |G| H(G, S*)
    hausdorff_pred: float

    @property
    def count(self) -> float:
        """The seeds' count score: min / max of the object counts (1 when both are 0)."""
        top = max(self.n_true, self.n_pred)
        return min(self.n_true, self.n_pred) / top if top else 1.0

    def summary(self) -> dict[str, float]:
        """This image alone, as `glas_summary` pools a set."""
        return glas_summary([self])


def _bboxes(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(n, 4) boxes [row0, col0, row1, col1) of the given labels."""
    slices = ndimage.find_objects(labels)
    boxes = [(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in (slices[i - 1] for i in ids)]
    return np.array(boxes, np.int64).reshape(-1, 4)


class _Objects:
    """One side's objects: labels, ids, areas and boxes, for pairwise distances."""

    def __init__(self, labels: np.ndarray, area: np.ndarray):
        self.labels = labels
        self.ids = np.flatnonzero(area[1:]) + 1
        self.area = area
        self.box = np.zeros((len(area), 4), np.int64)
        self.box[self.ids] = _bboxes(labels, self.ids)


def overlap_table(
    gt_labels: np.ndarray, pred_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every overlapping (gt, pred) label pair with its pixel count, and both sides' areas.

    Returns (gt label, pred label, intersection) arrays over the pairs, sorted by gt then pred,
    and the area of every label value (index = label) on each side.
    """
    area_gt, area_pred, piece_gt, piece_pred, piece_px, n = pieces_of_labels(gt_labels, pred_labels)
    if n == -2:
        raise ValueError("labels must be at most the pixel count (renumber them)")
    pair_gt, pair_pred, inter = pair_counts(
        piece_gt[:n], piece_pred[:n], piece_px[:n], area_pred.shape[0]
    )
    return pair_gt, pair_pred, inter, area_gt, area_pred


def hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """Hausdorff distance between two non-empty boolean masks of one shape (exact, Euclidean)."""
    to_b = ndimage.distance_transform_edt(~b)
    to_a = ndimage.distance_transform_edt(~a)
    return float(max(to_b[a].max(), to_a[b].max()))


def _pair_hausdorff(x: _Objects, i: int, y: _Objects, j: int) -> float:
    r0, c0 = np.minimum(x.box[i, :2], y.box[j, :2])
    r1, c1 = np.maximum(x.box[i, 2:], y.box[j, 2:])
    return hausdorff(x.labels[r0:r1, c0:c1] == i, y.labels[r0:r1, c0:c1] == j)


def _nearest_hausdorff(x: _Objects, i: int, y: _Objects) -> float:
    """Smallest Hausdorff distance from object i of x to any object of y (y not empty)."""
    # bound: an object's extreme pixel is at least the box-edge difference from the other object
    bound = np.abs(y.box[y.ids] - x.box[i]).max(axis=1)
    best = np.inf
    for k in np.argsort(bound, kind="stable"):
        if bound[k] >= best:
            break
        best = min(best, _pair_hausdorff(x, i, y, int(y.ids[k])))
    return best


def _best_partner(own: np.ndarray, other: np.ndarray, inter: np.ndarray, n_own: int):
    """For each own label: the other-side label overlapping most (0: none) and that overlap."""
    partner = np.zeros(n_own, np.int64)
    overlap = np.zeros(n_own, np.int64)
    order = np.lexsort((other, -inter, own))  # per own label: largest overlap, then lower label
    first = np.ones(len(order), bool)
    first[1:] = own[order][1:] != own[order][:-1]
    best = order[first]
    partner[own[best]] = other[best]
    overlap[own[best]] = inter[best]
    return partner, overlap


def _side_sums(
    own: _Objects,
    other: _Objects,
    partner: np.ndarray,
    overlap: np.ndarray,
    diagonal: float,
    distances: dict[tuple[int, int], float],
    own_is_truth: bool,
) -> tuple[float, float]:
    """Area-weighted sums of Dice and Hausdorff distance of one side's objects to their partners.

    `distances` caches Hausdorff distances by (gt label, pred label) across both sides.
    """
    dice = hausdorff_sum = 0.0
    for i in own.ids.tolist():
        j = int(partner[i])
        weight = float(own.area[i])
        if j:
            dice += weight * 2 * overlap[i] / (own.area[i] + other.area[j])
            key = (i, j) if own_is_truth else (j, i)
            if key not in distances:
                distances[key] = _pair_hausdorff(own, i, other, j)
            hausdorff_sum += weight * distances[key]
        elif len(other.ids):
            hausdorff_sum += weight * _nearest_hausdorff(own, i, other)
        else:
            hausdorff_sum += weight * diagonal
    return dice, hausdorff_sum


def glas_image(gt_labels: np.ndarray, pred_labels: np.ndarray) -> GlasImage:
    """GlaS counts and sums of one image from two label images (0 = background)."""
    gt, pred = (
        compact_labels(x) if x.size and int(x.max()) > x.size else np.asarray(x)
        for x in (gt_labels, pred_labels)
    )
    pair_gt, pair_pred, inter, area_gt, area_pred = overlap_table(gt, pred)
    truth = _Objects(gt, area_gt)
    preds = _Objects(pred, area_pred)
    diagonal = float(np.hypot(*gt.shape))
    best_pred, overlap_gt = _best_partner(pair_gt, pair_pred, inter, len(area_gt))
    best_gt, overlap_pred = _best_partner(pair_pred, pair_gt, inter, len(area_pred))

    tp = int(np.count_nonzero(2 * overlap_pred[preds.ids] > area_gt[best_gt[preds.ids]]))
    distances: dict[tuple[int, int], float] = {}
    dice_true, hausdorff_true = _side_sums(
        truth, preds, best_pred, overlap_gt, diagonal, distances, own_is_truth=True
    )
    dice_pred, hausdorff_pred = _side_sums(
        preds, truth, best_gt, overlap_pred, diagonal, distances, own_is_truth=False
    )
    return GlasImage(
        tp=tp,
        n_true=len(truth.ids),
        n_pred=len(preds.ids),
        area_true=int(area_gt[1:].sum()),
        area_pred=int(area_pred[1:].sum()),
        dice_true=dice_true,
        dice_pred=dice_pred,
        hausdorff_true=hausdorff_true,
        hausdorff_pred=hausdorff_pred,
    )


def _two_sided(true_sum: float, true_area: int, pred_sum: float, pred_area: int, empty: float):
    halves = [s / a for s, a in ((true_sum, true_area), (pred_sum, pred_area)) if a]
    return float(np.mean(halves)) if halves else empty


def glas_summary(images: Sequence[GlasImage]) -> dict[str, float]:
    """Object F1, object Dice, object Hausdorff (pooled over the images) and mean count score."""
    if not images:
        return {name: float("nan") for name in METRICS}
    tp = sum(i.tp for i in images)
    fp = sum(i.n_pred for i in images) - tp
    fn = sum(i.n_true for i in images) - tp
    area_true = sum(i.area_true for i in images)
    area_pred = sum(i.area_pred for i in images)
    return {
        "object_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "object_dice": _two_sided(
            sum(i.dice_true for i in images),
            area_true,
            sum(i.dice_pred for i in images),
            area_pred,
            1.0,
        ),  # fmt: skip
        "object_hausdorff": _two_sided(
            sum(i.hausdorff_true for i in images),
            area_true,
            sum(i.hausdorff_pred for i in images),
            area_pred,
            0.0,
        ),  # fmt: skip
        "count": float(np.mean([i.count for i in images])),
    }


def glas_rows(image: ImageRows, order: rle.Order = "row") -> GlasImage:
    """GlaS of one submission image (already checked by `match_image_rows`).

    Overlapping ground-truth masks are painted in row order, the later one winning.
    """
    truth = rle.decode_labels(image.true_texts, image.shape, order, overlap="last")
    return glas_image(truth, rle.decode_labels(image.pred_texts, image.shape, order))
