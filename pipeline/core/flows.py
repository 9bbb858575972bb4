"""Cellpose-style flows: per-pixel unit vectors toward each instance's centre, and masks back.

A flow-based model predicts, per pixel, a cell probability and two flow components. The training
target for the flows is the spatial gradient of a heat-diffusion field started at each instance's
centre and confined to the instance. At inference every foreground pixel follows the predicted
flows; pixels whose end points converge form one mask, and masks whose flows disagree with the
flows recomputed from their own shape are dropped.

Conventions:
- flows are (2, H, W) float32 arrays, component 0 is dy (down the rows), component 1 is dx.
- `label_flows` returns unit flows (zero outside instances). A network predicts them FLOW_SCALE
  times larger (cellpose's convention; train on `FLOW_SCALE * label_flows(labels)`), and every
  function here that takes predicted `flows` takes them at that scale: `follow_flows` steps by
  flows / FLOW_SCALE (one pixel per step for a unit flow), `flow_error` compares label_flows with
  flows / FLOW_SCALE.
- cellprob is a logit: foreground is cellprob > cellprob_threshold (0 means probability 0.5).
- Everything is computed per instance inside its box: no (N, H, W) stack is ever built.
"""

from __future__ import annotations

import numba
import numpy as np
from scipy import ndimage

from pipeline.core.instances import instance_boxes, instance_boxes_and_crops
from pipeline.core.rle import as_label_image

FLOW_SCALE = 5.0  # predicted flows = FLOW_SCALE * unit flows
SEED_MIN_COUNT = 10  # a histogram peak seeds a mask when more end points than this land on it
GROW_MIN_COUNT = 2  # seeds grow over histogram cells holding more end points than this
GROW_STEPS = 5  # ... at most this many 8-connected steps from the seed
PEAK_RADIUS = 2  # a seed is the maximum of the (2 * PEAK_RADIUS + 1)^2 window around it
MAX_SIZE_FRACTION = 0.4  # masks larger than this fraction of the image are dropped


# --- flows from labels ---------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _centre(inside):  # pragma: no cover - compiled
    """The instance pixel nearest the median of its pixel coordinates (first in raster order)."""
    ys, xs = np.nonzero(inside)
    my = np.median(ys.astype(np.float64))
    mx = np.median(xs.astype(np.float64))
    i = np.argmin((ys - my) ** 2 + (xs - mx) ** 2)
    return ys[i], xs[i]


@numba.njit(cache=True, nogil=True)
def _diffuse(inside, cy, cx, n_iter):  # pragma: no cover - compiled
    """Heat (padded by one pixel) after n_iter steps of: add 1 at the centre, then replace every
    instance pixel by the mean of its 3x3 neighbourhood, pixels outside the instance holding 0."""
    h, w = inside.shape
    keep = np.zeros((h + 2, w + 2))
    keep[1:-1, 1:-1] = inside
    heat = np.zeros((h + 2, w + 2))
    rows = np.zeros((h + 2, w + 2))  # 1x3 sums, then 3x3 sums from three of them
    for _ in range(n_iter):
        heat[cy + 1, cx + 1] += 1.0
        for r in range(1, h + 1):
            for c in range(1, w + 1):
                rows[r, c] = heat[r, c - 1] + heat[r, c] + heat[r, c + 1]
        for r in range(1, h + 1):
            for c in range(1, w + 1):
                heat[r, c] = keep[r, c] * (rows[r - 1, c] + rows[r, c] + rows[r + 1, c]) / 9.0
    return heat


@numba.njit(cache=True, nogil=True)
def _instance_flows(inside, out):  # pragma: no cover - compiled
    """Write the unit gradient of log(1 + heat) at the instance's pixels into out (2, h, w)."""
    h, w = inside.shape
    cy, cx = _centre(inside)
    log_heat = np.log1p(_diffuse(inside, cy, cx, 2 * (h + w)))
    for r in range(h):
        for c in range(w):
            if not inside[r, c]:
                continue
            dy = log_heat[r + 2, c + 1] - log_heat[r, c + 1]
            dx = log_heat[r + 1, c + 2] - log_heat[r + 1, c]
            norm = np.sqrt(dy * dy + dx * dx)
            if norm > 0:
                out[0, r, c] = dy / norm
                out[1, r, c] = dx / norm


@numba.njit(cache=True, nogil=True)
def _label_flows(labels, ids, boxes):  # pragma: no cover - compiled
    flows = np.zeros((2, labels.shape[0], labels.shape[1]), np.float32)
    for i in range(ids.shape[0]):
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        _instance_flows(labels[y0:y1, x0:x1] == ids[i], flows[:, y0:y1, x0:x1])
    return flows


def label_flows(labels: np.ndarray) -> np.ndarray:
    """(2, H, W) float32 unit flows (dy, dx) toward each instance's centre; 0 outside instances.

    Per instance (any ids >= 0, 0 = background): heat diffused from its centre for
    2 * (box height + box width) steps inside the instance, then the gradient of log(1 + heat) by
    central differences, normalised. A pixel where that gradient vanishes (a one-pixel instance,
    a part cut off from the centre) gets a zero flow.
    """
    labels = as_label_image(labels).astype(np.int64, copy=False)
    ids, boxes = instance_boxes(labels)
    return _label_flows(labels, ids, boxes)


# --- following the flows -------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, fastmath=True)  # inputs are finite and bounded
def _follow(field, ys, xs, n_iter):  # pragma: no cover - compiled
    """Euler steps of all points at once (independent work per step keeps the CPU busy).

    field: (2, H + 1, W + 1), the last row and column zero, so that a point on the image's last
    row or column reads its bilinear neighbours without a bounds test (their weight is 0).
    """
    h, w = field.shape[1] - 1, field.shape[2] - 1
    step_y, step_x = field[0].ravel(), field[1].ravel()
    stride = np.uint32(w + 1)
    pos_y, pos_x = ys.astype(np.float32), xs.astype(np.float32)
    top_y, top_x = np.float32(h - 1), np.float32(w - 1)
    zero, one = np.float32(0), np.float32(1)
    for _ in range(n_iter):
        for i in range(pos_y.shape[0]):
            y, x = pos_y[i], pos_x[i]
            row, col = np.int32(y), np.int32(x)  # positions stay >= 0: truncation is floor
            k = np.uint32(row) * stride + np.uint32(col)  # unsigned: no negative-index checks
            below = k + stride
            ty, tx = y - np.float32(row), x - np.float32(col)
            sy, sx = one - ty, one - tx
            dy = sy * (sx * step_y[k] + tx * step_y[k + 1]) + ty * (
                sx * step_y[below] + tx * step_y[below + 1]
            )
            dx = sy * (sx * step_x[k] + tx * step_x[k + 1]) + ty * (
                sx * step_x[below] + tx * step_x[below + 1]
            )
            pos_y[i] = min(max(y + dy, zero), top_y)
            pos_x[i] = min(max(x + dx, zero), top_x)
    return np.stack((pos_y, pos_x), axis=1)


def _check_flows(flows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    flows = np.asarray(flows, np.float32)
    if flows.shape != (2, *shape):
        raise ValueError(f"flows must have shape {(2, *shape)}, got {flows.shape}")
    return flows


def follow_flows(flows: np.ndarray, mask: np.ndarray, n_iter: int = 200) -> np.ndarray:
    """(n, 2) float32 end points (y, x) of the mask's pixels (raster order) after n_iter steps.

    Each step moves a point by flows / FLOW_SCALE at its position, bilinearly interpolated, the
    field taken as zero outside `mask` (and where not finite); points are clipped to the image.
    """
    mask = np.asarray(mask, bool)
    flows = _check_flows(flows, mask.shape)
    h, w = mask.shape
    field = np.zeros((2, h + 1, w + 1), np.float32)
    steps = np.where(mask & np.isfinite(flows).all(axis=0), flows / np.float32(FLOW_SCALE), 0)
    np.clip(steps, -max(h, w), max(h, w), out=field[:, :h, :w])  # no overflow in the sums
    ys, xs = np.nonzero(mask)
    return _follow(field, ys, xs, n_iter)


# --- clustering end points -----------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _seeds(hist):  # pragma: no cover - compiled
    """(n, 2) y, x of histogram cells above SEED_MIN_COUNT that are the maximum of their window,
    most end points first (ties in raster order)."""
    h, w = hist.shape
    peak = np.zeros((h, w), np.bool_)
    for y in range(h):
        for x in range(w):
            if hist[y, x] > SEED_MIN_COUNT:
                window = hist[
                    max(y - PEAK_RADIUS, 0) : y + PEAK_RADIUS + 1,
                    max(x - PEAK_RADIUS, 0) : x + PEAK_RADIUS + 1,
                ]
                peak[y, x] = hist[y, x] >= window.max()
    ys, xs = np.nonzero(peak)
    minus_count = np.empty(ys.shape[0], np.int64)
    for i in range(ys.shape[0]):
        minus_count[i] = -hist[ys[i], xs[i]]
    order = np.argsort(minus_count, kind="mergesort")
    seeds = np.empty((ys.shape[0], 2), np.int64)
    seeds[:, 0] = ys[order]
    seeds[:, 1] = xs[order]
    return seeds


@numba.njit(cache=True, nogil=True)
def _grow(hist, seeds):  # pragma: no cover - compiled
    """Region id per histogram cell: each seed in turn, unless an earlier region took it, claims
    the unclaimed cells holding more than GROW_MIN_COUNT end points within GROW_STEPS steps."""
    h, w = hist.shape
    region = np.zeros((h, w), np.int32)
    side = 2 * GROW_STEPS + 1
    queue = np.empty((side * side, 3), np.int64)  # y, x, steps from the seed
    n_regions = 0
    for s in range(seeds.shape[0]):
        if region[seeds[s, 0], seeds[s, 1]]:
            continue
        n_regions += 1
        region[seeds[s, 0], seeds[s, 1]] = n_regions
        queue[0] = (seeds[s, 0], seeds[s, 1], 0)
        head, tail = 0, 1
        while head < tail:
            y, x, steps = queue[head]
            head += 1
            if steps == GROW_STEPS:
                continue
            for ny in range(max(y - 1, 0), min(y + 2, h)):
                for nx in range(max(x - 1, 0), min(x + 2, w)):
                    if region[ny, nx] == 0 and hist[ny, nx] > GROW_MIN_COUNT:
                        region[ny, nx] = n_regions
                        queue[tail] = (ny, nx, steps + 1)
                        tail += 1
    return region, n_regions


@numba.njit(cache=True, nogil=True)
def _cluster(ends, shape):  # pragma: no cover - compiled
    """Region id (0: none) of every end point and the number of regions."""
    hist = np.zeros(shape, np.int32)
    rounded = np.empty((ends.shape[0], 2), np.int64)
    for i in range(ends.shape[0]):
        rounded[i, 0] = int(ends[i, 0] + 0.5)  # end points are >= 0: int() is floor
        rounded[i, 1] = int(ends[i, 1] + 0.5)
        hist[rounded[i, 0], rounded[i, 1]] += 1
    region, n_regions = _grow(hist, _seeds(hist))
    ids = np.empty(ends.shape[0], np.int32)
    for i in range(ends.shape[0]):
        ids[i] = region[rounded[i, 0], rounded[i, 1]]
    return ids, n_regions


def _keep_labels(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """int32 labels where label k survives if keep[k - 1], renumbered 1..n in order; others 0."""
    lookup = np.zeros(len(keep) + 1, np.int32)
    lookup[1:][keep] = np.arange(1, int(np.count_nonzero(keep)) + 1)
    return lookup[labels]


def masks_from_endpoints(
    ends: np.ndarray,
    mask: np.ndarray,
    min_size: int = 15,
    max_size_fraction: float = MAX_SIZE_FRACTION,
) -> np.ndarray:
    """int32 label image grouping the mask's pixels (raster order) by where their end points meet.

    End points are rounded to a histogram; its peaks holding more than SEED_MIN_COUNT points seed
    masks, strongest first, each growing over nearby cells with more than GROW_MIN_COUNT points;
    a pixel takes the mask its end point landed in. Masks under min_size pixels or over
    max_size_fraction of the image are dropped; labels are 1..n.
    """
    mask = np.asarray(mask, bool)
    ends = np.asarray(ends, np.float32).reshape(-1, 2)
    if len(ends) != np.count_nonzero(mask):
        raise ValueError(f"{len(ends)} end points for {np.count_nonzero(mask)} mask pixels")
    if not ((ends >= 0) & (ends <= np.array(mask.shape) - 1)).all():
        raise ValueError("end points must lie inside the image")
    labels = np.zeros(mask.shape, np.int32)
    ids, n_regions = _cluster(ends, mask.shape)
    labels[mask] = ids
    sizes = np.bincount(ids, minlength=n_regions + 1)[1:]
    return _keep_labels(labels, (sizes >= min_size) & (sizes <= max_size_fraction * mask.size))


# --- checking and finishing masks ----------------------------------------------------------------


def flow_error(labels: np.ndarray, flows: np.ndarray) -> np.ndarray:
    """Per label k = 1..max (entry k - 1): mean of |label_flows - flows / FLOW_SCALE|^2 over k.

    Labels absent from the image get NaN (memory grows with the largest label). A mask whose
    shape agrees with its predicted flows scores near 0; unrelated unit flows score about 2.
    """
    labels = as_label_image(labels)
    flows = _check_flows(flows, labels.shape)
    squared = ((label_flows(labels) - flows / np.float32(FLOW_SCALE)) ** 2).sum(axis=0)
    n = int(labels.max()) if labels.size else 0
    sums = np.bincount(labels.ravel(), weights=squared.ravel(), minlength=n + 1)[1:]
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def _fill_holes(labels: np.ndarray) -> np.ndarray:
    """Labels with each instance's holes filled, where the hole is background (other instances
    inside a hole are kept)."""
    filled = np.array(labels, copy=True)
    for k, (x0, y0, x1, y1), crop in zip(*instance_boxes_and_crops(labels)):
        box = filled[y0:y1, x0:x1]
        box[ndimage.binary_fill_holes(crop) & (box == 0)] = k
    return filled


def masks_from_flows(
    cellprob: np.ndarray,
    flows: np.ndarray,
    cellprob_threshold: float = 0.0,
    flow_threshold: float = 0.4,
    min_size: int = 15,
    n_iter: int = 200,
) -> np.ndarray:
    """int32 label image (1..n) from cell-probability logits (H, W) and predicted flows (2, H, W).

    Foreground (cellprob > cellprob_threshold) pixels follow the flows (`follow_flows`), their
    end points are clustered (`masks_from_endpoints`), masks with `flow_error` above
    flow_threshold are dropped (flow_threshold <= 0 keeps all), and holes are filled.
    """
    cellprob = np.asarray(cellprob)
    if cellprob.ndim != 2:
        raise ValueError(f"cellprob must be 2-D, got shape {cellprob.shape}")
    flows = _check_flows(flows, cellprob.shape)
    mask = cellprob > cellprob_threshold
    ends = follow_flows(flows, mask, n_iter)
    labels = masks_from_endpoints(ends, mask, min_size)
    if flow_threshold > 0 and labels.any():
        labels = _keep_labels(labels, flow_error(labels, flows) <= flow_threshold)
    return _fill_holes(labels)
