"""MAP-IoU, the Sartorius (and DSB 2018) metric, from label images, mask stacks or Kaggle RLE.

Per image and threshold t in 0.50, 0.55, ..., 0.95: a predicted object matches a ground-truth
object when IoU > t (strict); matches are one-to-one and as many as possible. TP = matches,
FP = unmatched predictions, FN = unmatched ground truth, image score at t = TP / (TP + FP + FN).
The image score is the mean over the 10 thresholds, the final score the mean over images.

- Strictness is exact: t = k / 20 and a pair matches when 20 * intersection > k * union, in
  integers, so an IoU of exactly 0.75 does not match at 0.75 (cellpose counts IoU >= t, stardist
  compares in float32; the competition's float64 `iou > t` agrees with the integer test).
- Empty cases: no ground truth and no prediction scores 1 at every threshold (nothing to find,
  nothing wrongly found); one side empty scores 0. An object is a label (or mask, or RLE text)
  with at least one pixel; an empty one is not counted.
- Overlapping ground truth (train.csv has some, RLE and stacks can express it, label images
  cannot): the matching is still a maximum one-to-one matching at every threshold.

How it is fast: IoU > 0.5 needs the intersection to exceed half of either object, so when the
predictions do not overlap each other, a ground-truth object's only possible partner is the
prediction covering the majority of its pixels. One scan of the pixels (or one sweep of the runs)
yields (gt, pred, pixels) pieces, a weighted majority vote per ground-truth object picks that
candidate, a second pass over the pieces counts its exact intersection, and no overlap matrix or
assignment problem is ever built. With overlapping objects on both sides (stacks only) exact pair
counts go to scipy's maximum bipartite matching.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import numba
import numpy as np

from pipeline.core.rle import Runs, as_label_image

IOU_THRESHOLD_STEPS = np.arange(10, 20)  # threshold k is IOU_THRESHOLD_STEPS[k] / 20
IOU_THRESHOLDS = IOU_THRESHOLD_STEPS / 20.0  # 0.50, 0.55, ..., 0.95
N_IOU_THRESHOLDS = len(IOU_THRESHOLDS)


# --- results ------------------------------------------------------------------------------------


def threshold_scores(tp: np.ndarray, n_true: np.ndarray, n_pred: np.ndarray) -> np.ndarray:
    """TP / (TP + FP + FN) per threshold (last axis), 1 where both sides are empty."""
    tp = np.asarray(tp, np.float64)
    n_true = np.asarray(n_true, np.float64)[..., None]
    n_pred = np.asarray(n_pred, np.float64)[..., None]
    denominator = n_true + n_pred - tp  # TP + FP + FN
    return np.where(denominator > 0, tp / np.maximum(denominator, 1), 1.0)


@dataclasses.dataclass(frozen=True)
class ImageMatch:
    """Matching of one image: true positives at every threshold and the object counts."""

    tp: np.ndarray  # (10,) int64, one per IOU_THRESHOLDS entry
    n_true: int
    n_pred: int

    @property
    def fp(self) -> np.ndarray:
        return self.n_pred - self.tp

    @property
    def fn(self) -> np.ndarray:
        return self.n_true - self.tp

    @property
    def scores(self) -> np.ndarray:
        """Score at each threshold."""
        return threshold_scores(self.tp, self.n_true, self.n_pred)

    @property
    def score(self) -> float:
        """MAP-IoU of the image: mean score over the thresholds."""
        return float(self.scores.mean())


@dataclasses.dataclass(frozen=True)
class MatchTable:
    """Matchings of many images, with each image's class (its cell type) for per-class scores."""

    ids: list[str]
    classes: list[str]
    tp: np.ndarray  # (n_images, 10)
    n_true: np.ndarray  # (n_images,)
    n_pred: np.ndarray  # (n_images,)

    @classmethod
    def from_matches(cls, matches: Mapping[str, ImageMatch], classes: Mapping[str, str]):
        """Collect per-image matchings; `classes` maps image id to class."""
        ids = list(matches)
        return cls(
            ids=ids,
            classes=[str(classes.get(i, "")) for i in ids],
            tp=np.array([matches[i].tp for i in ids], np.int64).reshape(len(ids), N_IOU_THRESHOLDS),
            n_true=np.array([matches[i].n_true for i in ids], np.int64),
            n_pred=np.array([matches[i].n_pred for i in ids], np.int64),
        )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def threshold_scores(self) -> np.ndarray:
        """(n_images, 10) score of every image at every threshold."""
        return threshold_scores(self.tp, self.n_true, self.n_pred)

    @property
    def image_scores(self) -> np.ndarray:
        """(n_images,) MAP-IoU of every image."""
        return self.threshold_scores.mean(axis=1)

    @property
    def score(self) -> float:
        """The competition score: mean over images (nan for no image)."""
        return float(self.image_scores.mean()) if len(self) else float("nan")

    def subset(self, keep: np.ndarray) -> MatchTable:
        """The images where the boolean `keep` is true."""
        return MatchTable(
            ids=[i for i, k in zip(self.ids, keep) if k],
            classes=[c for c, k in zip(self.classes, keep) if k],
            tp=self.tp[keep],
            n_true=self.n_true[keep],
            n_pred=self.n_pred[keep],
        )

    def by_class(self) -> dict[str, MatchTable]:
        """One table per class, classes sorted by name."""
        classes = np.array(self.classes, dtype=object)
        return {c: self.subset(classes == c) for c in sorted(set(self.classes))}

    def summary(self) -> dict[str, Any]:
        """Overall, per-class and per-threshold figures (scores and summed TP/FP/FN), as JSON."""
        tp = self.tp.sum(axis=0)
        fp = self.n_pred.sum() - tp
        fn = self.n_true.sum() - tp
        return {
            "score": self.score,
            "n_images": len(self),
            "n_true": int(self.n_true.sum()),
            "n_pred": int(self.n_pred.sum()),
            "per_class": {c: t.score for c, t in self.by_class().items()},
            "per_threshold": [
                {
                    "threshold": float(t),
                    "score": float(s),
                    "tp": int(a),
                    "fp": int(b),
                    "fn": int(c),
                }
                for t, s, a, b, c in zip(
                    IOU_THRESHOLDS, self.threshold_scores.mean(axis=0), tp, fp, fn
                )
            ]
            if len(self)
            else [],
            "per_class_threshold": {
                c: t.threshold_scores.mean(axis=0).tolist() for c, t in self.by_class().items()
            },
        }


# --- compiled kernels ---------------------------------------------------------------------------

_BYTE_ONES = np.uint64(0x0101010101010101)


@numba.njit(cache=True, nogil=True)
def _label_pieces(gt, pred):  # pragma: no cover - compiled
    """Two flat label images -> object areas and (gt, pred, pixels) pieces where both are set.

    A piece is a run of consecutive pixels with one (gt, pred) pair. The only loop over pixels
    flags run starts (it vectorises); the flags are then read eight at a time (as little-endian
    words) to list the runs, and later loops visit runs only. The last value returned is the
    piece count, or -1 for a negative label, -2 for a label above the pixel count. Indices are
    cast to unsigned so that numba drops its negative-index checks from the hot loops.
    """
    size = gt.shape[0]
    one = np.uint64(1)
    n_words = size // 8 + 1
    change = np.zeros(8 * n_words, np.uint8)  # 1 where a run starts; SIMD-friendly loop
    for i in range(1, size):
        u = np.uint64(i)
        change[u] = (gt[u] != gt[u - one]) | (pred[u] != pred[u - one])
    change[0] = size > 0
    change[size] = 1  # closes the last run
    run_start = np.empty(size + 2, np.int32)  # callers keep size < 2**31
    n_runs = -1  # the closing mark is not a run
    words = change.view(np.uint64)  # 8 flags a word: skip runs' insides 8 pixels at a time
    for w in range(n_words):
        bits = words[np.uint64(w)]
        while bits:
            below = ((bits & (~bits + one)) - one) & _BYTE_ONES  # a 1 in each byte below
            run_start[np.uint64(n_runs + 1)] = 8 * w + ((below * _BYTE_ONES) >> np.uint64(56))
            n_runs += 1
            bits &= bits - one
    top_gt = 0
    top_pred = 0
    nothing = np.zeros(0, np.int64)
    for r in range(n_runs):
        start = np.uint64(run_start[np.uint64(r)])
        if gt[start] < 0 or pred[start] < 0:
            return nothing, nothing, nothing, nothing, nothing, -1
        top_gt = max(top_gt, gt[start])
        top_pred = max(top_pred, pred[start])
    if top_gt > size or top_pred > size:
        return nothing, nothing, nothing, nothing, nothing, -2
    area_gt = np.zeros(int(top_gt) + 1, np.int64)
    area_pred = np.zeros(int(top_pred) + 1, np.int64)
    piece_gt = np.empty(n_runs, np.int64)
    piece_pred = np.empty(n_runs, np.int64)
    piece_px = np.empty(n_runs, np.int64)
    n_pieces = 0
    for r in range(n_runs):
        start = np.uint64(run_start[np.uint64(r)])
        length = run_start[np.uint64(r) + one] - start
        g = gt[start]
        p = pred[start]
        area_gt[np.uint64(g)] += length
        area_pred[np.uint64(p)] += length
        k = np.uint64(n_pieces)
        piece_gt[k] = g
        piece_pred[k] = p
        piece_px[k] = length
        n_pieces += (g != 0) & (p != 0)
    return area_gt, area_pred, piece_gt, piece_pred, piece_px, n_pieces


@numba.njit(cache=True, nogil=True)
def _radix_order(keys):  # pragma: no cover - compiled
    """Stable order of non-negative keys: LSD radix sort of packed (key, index) words."""
    n = keys.shape[0]
    top = 0
    ascending = True
    for r in range(n):
        top = max(top, keys[r])
        ascending &= r == 0 or keys[r] >= keys[r - 1]
    if ascending:
        return np.arange(n)
    index_bits = 1
    while (n - 1) >> index_bits:
        index_bits += 1
    key_bits = 1
    while top >> key_bits:
        key_bits += 1
    if key_bits + index_bits > 62:  # too wide to pack: numba's own sort
        return np.argsort(keys, kind="mergesort")
    passes = (key_bits + 10) // 11
    digit_bits = (key_bits + passes - 1) // passes
    mask = (1 << digit_bits) - 1
    words = np.empty(n, np.int64)
    count = np.zeros((passes, mask + 2), np.int64)
    for r in range(n):
        words[r] = (keys[r] << index_bits) | r
        for q in range(passes):
            count[q, ((keys[r] >> (q * digit_bits)) & mask) + 1] += 1
    spare = np.empty(n, np.int64)
    for q in range(passes):
        bucket = count[q]
        for d in range(mask + 1):
            bucket[d + 1] += bucket[d]
        shift = index_bits + q * digit_bits
        for r in range(n):
            d = (words[r] >> shift) & mask
            spare[bucket[d]] = words[r]
            bucket[d] += 1
        words, spare = spare, words
    return words & ((1 << index_bits) - 1)


@numba.njit(cache=True, nogil=True)
def _sort_side(starts, lengths, offsets):  # pragma: no cover - compiled
    """One side's runs in start order, with instance ids (1..n), areas, and overlap-free layers.

    Layers are assigned first-fit; also returns the layer count and the first pair of
    overlapping runs (sorted positions, or -1).
    """
    n = starts.shape[0]
    n_inst = offsets.shape[0] - 1
    area = np.zeros(n_inst + 1, np.int64)
    run_id = np.empty(n, np.int64)
    for inst in range(n_inst):
        for r in range(offsets[inst], offsets[inst + 1]):
            run_id[r] = inst + 1
            area[inst + 1] += lengths[r]
    order = _radix_order(starts)
    start = np.empty(n, np.int64)
    end = np.empty(n, np.int64)
    ids = np.empty(n, np.int64)
    for r in range(n):
        o = order[r]
        start[r] = starts[o]
        end[r] = starts[o] + lengths[o]
        ids[r] = run_id[o]
    layer = np.zeros(n, np.int64)
    layer_end = np.zeros(n + 1, np.int64)
    layer_last = np.full(n + 1, -1, np.int64)
    n_layers = 1
    clash = np.full(2, -1, np.int64)
    for r in range(n):
        lay = 0
        while lay < n_layers and layer_end[lay] > start[r]:
            lay += 1
        if lay > 0 and clash[0] < 0:
            clash[0] = layer_last[0]
            clash[1] = r
        n_layers = max(n_layers, lay + 1)
        layer[r] = lay
        layer_end[lay] = end[r]
        layer_last[lay] = r
    return start, end, ids, area, layer, n_layers, clash


@numba.njit(cache=True, nogil=True)
def _merge_layer(
    a_start, a_end, a_id, b_start, b_end, b_id, piece_a, piece_b, piece_px, n
):  # pragma: no cover - compiled
    """Two pointers over two overlap-free run lists sorted by start; appends pieces after n."""
    i = 0
    j = 0
    while i < a_start.shape[0] and j < b_start.shape[0]:
        lo = max(a_start[i], b_start[j])
        hi = min(a_end[i], b_end[j])
        piece_a[n] = a_id[i]
        piece_b[n] = b_id[j]
        piece_px[n] = hi - lo
        n += lo < hi
        advance_a = a_end[i] <= b_end[j]
        i += advance_a
        j += not advance_a
    return n


@numba.njit(cache=True, nogil=True)
def _merge_runs(
    a_start, a_end, a_id, a_layer, n_a_layers, b_start, b_end, b_id, b_layer, n_b_layers
):  # pragma: no cover - compiled
    """The (a, b, pixels) pieces where runs of side a and side b intersect, layer by layer."""
    capacity = a_start.shape[0] * n_b_layers + b_start.shape[0] * n_a_layers
    piece_a = np.empty(capacity, np.int64)
    piece_b = np.empty(capacity, np.int64)
    piece_px = np.empty(capacity, np.int64)
    if n_a_layers == 1 and n_b_layers == 1:
        n = _merge_layer(a_start, a_end, a_id, b_start, b_end, b_id, piece_a, piece_b, piece_px, 0)
        return piece_a, piece_b, piece_px, n
    n = 0
    for la in range(n_a_layers):
        x = a_layer == la
        for lb in range(n_b_layers):
            y = b_layer == lb
            n = _merge_layer(
                a_start[x], a_end[x], a_id[x], b_start[y], b_end[y], b_id[y],
                piece_a, piece_b, piece_px, n,
            )  # fmt: skip
    return piece_a, piece_b, piece_px, n


@numba.njit(cache=True, nogil=True)
def _match_by_majority(piece_a, piece_b, piece_px, n_pieces, area_a, area_b):  # pragma: no cover
    """True positives per threshold when side b's objects do not overlap each other.

    Each a-object's only candidate is the b-object covering most of it (weighted Boyer-Moore
    vote over its pieces); a b-object matches at threshold k when any of its a-candidates does.
    """
    n_a = area_a.shape[0]
    candidate = np.zeros(n_a, np.int64)
    votes = np.zeros(n_a, np.int64)
    for k in range(n_pieces):
        a = np.uint64(piece_a[k])  # unsigned: no negative-index checks
        b = piece_b[k]
        w = piece_px[k]
        if candidate[a] == b:
            votes[a] += w
        elif votes[a] >= w:
            votes[a] -= w
        else:
            candidate[a] = b
            votes[a] = w - votes[a]
    inter = np.zeros(n_a, np.int64)
    for k in range(n_pieces):
        a = np.uint64(piece_a[k])
        if piece_b[k] == candidate[a]:
            inter[a] += piece_px[k]
    levels = np.zeros(area_b.shape[0], np.int64)  # thresholds passed by b's best match
    for a in range(1, n_a):
        if inter[a] == 0:
            continue
        b = candidate[a]
        union = area_a[a] + area_b[b] - inter[a]
        passed = 0
        while passed < 10 and 20 * inter[a] > (10 + passed) * union:
            passed += 1
        levels[b] = max(levels[b], passed)
    tp = np.zeros(10, np.int64)
    for b in range(1, levels.shape[0]):
        for k in range(levels[b]):
            tp[k] += 1
    return tp


# --- matching ---------------------------------------------------------------------------------


def _count_objects(area: np.ndarray) -> int:
    return int(np.count_nonzero(area[1:]))


def pair_counts(
    piece_a: np.ndarray, piece_b: np.ndarray, piece_px: np.ndarray, n_b: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pieces summed per (a, b) pair: (a, b, pixels), sorted by a then b."""
    keys, inverse = np.unique(piece_a * n_b + piece_b, return_inverse=True)
    a, b = np.divmod(keys, n_b)
    return a, b, np.bincount(inverse, weights=piece_px, minlength=len(keys)).astype(np.int64)


def _match_general(
    piece_a: np.ndarray,
    piece_b: np.ndarray,
    piece_px: np.ndarray,
    area_a: np.ndarray,
    area_b: np.ndarray,
) -> np.ndarray:
    """True positives per threshold by maximum bipartite matching (both sides overlap)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    a, b, inter = pair_counts(piece_a, piece_b, piece_px, area_b.shape[0])
    union = area_a[a] + area_b[b] - inter
    tp = np.zeros(N_IOU_THRESHOLDS, np.int64)
    for k, step in enumerate(IOU_THRESHOLD_STEPS):
        edge = 20 * inter > step * union
        if not edge.any():
            break
        graph = csr_matrix(
            (np.ones(int(edge.sum()), np.int8), (a[edge], b[edge])),
            shape=(area_a.shape[0], area_b.shape[0]),
        )
        tp[k] = int(np.count_nonzero(maximum_bipartite_matching(graph, perm_type="column") >= 0))
    return tp


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n in order, background kept 0."""
    values, inverse = np.unique(labels, return_inverse=True)
    return (inverse + int(values[0] != 0)).reshape(labels.shape)


def pieces_of_labels(gt_labels: np.ndarray, pred_labels: np.ndarray) -> tuple:
    """Checked label images -> `_label_pieces` (piece count -2: labels above the pixel count)."""
    gt = as_label_image(gt_labels, "ground truth")
    pred = as_label_image(pred_labels, "prediction")
    if gt.shape != pred.shape:
        raise ValueError(f"label images differ in shape: {gt.shape} vs {pred.shape}")
    if gt.size >= 2**31:
        raise ValueError(f"image too large: {gt.shape}")
    pieces = _label_pieces(gt.ravel(), pred.ravel())
    if pieces[-1] == -1:
        raise ValueError("labels must be >= 0")
    return pieces


def match_labels(gt_labels: np.ndarray, pred_labels: np.ndarray) -> ImageMatch:
    """Match two label images (0 = background, each other value one object)."""
    area_gt, area_pred, piece_gt, piece_pred, piece_px, n = pieces_of_labels(gt_labels, pred_labels)
    if n == -2:  # labels larger than the pixel count: number them 1..n first
        area_gt, area_pred, piece_gt, piece_pred, piece_px, n = pieces_of_labels(
            compact_labels(np.asarray(gt_labels)), compact_labels(np.asarray(pred_labels))
        )
    tp = _match_by_majority(piece_gt, piece_pred, piece_px, n, area_gt, area_pred)
    return ImageMatch(tp, _count_objects(area_gt), _count_objects(area_pred))


def map_iou(gt_labels: np.ndarray, pred_labels: np.ndarray) -> float:
    """MAP-IoU of one image from two integer label images."""
    return match_labels(gt_labels, pred_labels).score


class OverlapError(ValueError):
    """Two instances of one image share a pixel; `pair` holds their 0-based indices."""

    def __init__(self, pair: tuple[int, int]):
        self.pair = pair
        super().__init__(f"instances {pair[0]} and {pair[1]} overlap")


class _SortedRuns(NamedTuple):
    start: np.ndarray
    end: np.ndarray
    id: np.ndarray  # instance index + 1
    area: np.ndarray  # area of each id, 0 first
    layer: np.ndarray  # runs of one layer do not overlap
    n_layers: int
    clash: tuple[int, int] | None  # first pair of overlapping instances (0-based)


def _sort_runs(runs: Runs) -> _SortedRuns:
    """One side's runs sorted by start and split into overlap-free layers."""
    start, end, ids, area, layer, n_layers, clash = _sort_side(
        runs.starts, runs.lengths, runs.offsets
    )
    pair = None if clash[0] < 0 else (int(ids[clash[0]]) - 1, int(ids[clash[1]]) - 1)
    return _SortedRuns(start, end, ids, area, layer, int(n_layers), pair)


def match_runs(gt: Runs, pred: Runs, allow_pred_overlap: bool = False) -> ImageMatch:
    """Match instances given as runs (`rle.parse_runs` of one image, same shape and pixel order).

    Runs are intersected directly, never painted. Overlapping predictions raise OverlapError
    unless `allow_pred_overlap`; overlapping ground truth is always allowed.
    """
    a = _sort_runs(gt)
    b = _sort_runs(pred)
    if b.clash is not None and not allow_pred_overlap:
        raise OverlapError(b.clash)
    piece_a, piece_b, piece_px, n = _merge_runs(
        a.start, a.end, a.id, a.layer, a.n_layers,
        b.start, b.end, b.id, b.layer, b.n_layers,
    )  # fmt: skip
    if b.clash is None:
        tp = _match_by_majority(piece_a, piece_b, piece_px, n, a.area, b.area)
    elif a.clash is None:
        tp = _match_by_majority(piece_b, piece_a, piece_px, n, b.area, a.area)
    else:
        tp = _match_general(piece_a[:n], piece_b[:n], piece_px[:n], a.area, b.area)
    return ImageMatch(tp, _count_objects(a.area), _count_objects(b.area))


def stack_runs(masks: np.ndarray) -> Runs:
    """Runs (row-major) of an (n, height, width) stack of instance masks; overlaps allowed."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected an (n, height, width) mask stack, got shape {masks.shape}")
    flat = np.zeros((masks.shape[0], masks[0].size + 2 if len(masks) else 2), np.int8)
    flat[:, 1:-1] = masks.reshape(len(masks), -1) != 0
    step = np.diff(flat, axis=1)
    plane, starts = np.nonzero(step == 1)
    ends = np.nonzero(step == -1)[1]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(plane, minlength=len(masks)))])
    return Runs(starts.astype(np.int64), (ends - starts).astype(np.int64), offsets.astype(np.int64))


def match_stacks(gt_masks: np.ndarray, pred_masks: np.ndarray) -> ImageMatch:
    """Match two (n, height, width) instance-mask stacks; either side may overlap itself."""
    if gt_masks.shape[1:] != pred_masks.shape[1:]:
        raise ValueError(f"stacks differ in image shape: {gt_masks.shape} vs {pred_masks.shape}")
    return match_runs(stack_runs(gt_masks), stack_runs(pred_masks), allow_pred_overlap=True)
