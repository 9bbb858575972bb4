"""Cellpose-style flows and mask recovery: plain references, flow properties and round trips."""

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.draw import ellipse

from pipeline.core.flows import (
    FLOW_SCALE,
    flow_error,
    follow_flows,
    label_flows,
    masks_from_endpoints,
    masks_from_flows,
)
from pipeline.core.metrics import map_iou


def touching_cells(shape: tuple[int, int], spacing: float, rng) -> np.ndarray:
    """Convex cells that touch: each pixel goes to its nearest jittered grid point (a Voronoi
    cell) when within that point's random radius (a disc); some cells are cut by the border."""
    gy, gx = np.mgrid[spacing / 2 : shape[0] : spacing, spacing / 2 : shape[1] : spacing]
    points = np.stack([gy.ravel(), gx.ravel()], 1)
    points += rng.uniform(-0.25, 0.25, points.shape) * spacing
    radii = rng.uniform(0.55, 0.8, len(points)) * spacing
    pixels = np.indices(shape).reshape(2, -1).T
    distance, nearest = cKDTree(points).query(pixels)
    return np.where(distance < radii[nearest], nearest + 1, 0).reshape(shape).astype(np.int32)


def discs(shape: tuple[int, int], centres, radii) -> np.ndarray:
    """Label image of discs 1..n (later discs over earlier ones)."""
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for k, ((cy, cx), r) in enumerate(zip(centres, radii), start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return labels


def separated_discs(shape: tuple[int, int], n: int, rng) -> np.ndarray:
    """Up to n discs of radius 4-10 with at least 3 background pixels between any two."""
    centres, radii = [], []
    for _ in range(50 * n):
        r = rng.uniform(4, 10)
        c = rng.uniform(r, np.array(shape) - 1 - r)
        if all(np.hypot(*(c - c2)) > r + r2 + 3 for c2, r2 in zip(centres, radii)):
            centres.append(c)
            radii.append(r)
        if len(centres) == n:
            break
    return discs(shape, centres, radii)


def reference_flows(labels: np.ndarray) -> np.ndarray:
    """The specification in plain numpy, one instance at a time, one whole array per step."""
    out = np.zeros((2, *labels.shape))
    for k in np.unique(labels[labels > 0]):
        ys, xs = np.nonzero(labels == k)
        top, left = ys.min() - 1, xs.min() - 1  # one pixel of padding all round
        height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        inside = np.zeros((height + 2, width + 2), bool)
        inside[ys - top, xs - left] = True
        i = np.argmin((ys - np.median(ys)) ** 2 + (xs - np.median(xs)) ** 2)
        heat = np.zeros(inside.shape)
        for _ in range(2 * (height + width)):
            heat[ys[i] - top, xs[i] - left] += 1
            total = sum(np.roll(heat, (dy, dx), (0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
            heat = np.where(inside, total / 9, 0)
        log_heat = np.log1p(heat)
        grad = np.stack(
            [
                np.roll(log_heat, -1, 0) - np.roll(log_heat, 1, 0),
                np.roll(log_heat, -1, 1) - np.roll(log_heat, 1, 1),
            ]
        )
        norm = np.hypot(*grad)
        unit = np.divide(grad, norm, out=np.zeros_like(grad), where=norm > 0)
        out[:, ys, xs] = unit[:, ys - top, xs - left]
    return out


def logits(labels: np.ndarray) -> np.ndarray:
    """A confident cell-probability map: +5 inside instances, -5 outside."""
    return np.where(labels > 0, 5.0, -5.0).astype(np.float32)


def round_trip(labels: np.ndarray, **kwargs) -> np.ndarray:
    return masks_from_flows(logits(labels), FLOW_SCALE * label_flows(labels), **kwargs)


def thin_ellipse(shape: tuple[int, int]) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    labels[ellipse(shape[0] // 2, shape[1] // 2, 4, shape[1] // 2 - 3, shape, rotation=0.3)] = 1
    return labels


# --- label_flows ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_label_flows_match_plain_reference(seed):
    rng = np.random.default_rng(seed)
    labels = touching_cells((48, 64), rng.uniform(11, 16), rng)
    labels = np.where(labels > 0, 7 * labels + 3, 0)  # ids neither 1..n nor contiguous
    ours = label_flows(labels)
    assert ours.dtype == np.float32 and ours.shape == (2, *labels.shape)
    np.testing.assert_allclose(ours, reference_flows(labels), atol=1e-5)


def test_label_flows_match_reference_on_a_thin_ellipse():
    labels = thin_ellipse((40, 90))
    labels[:, :30] = 0  # not point-symmetric: the centre's gradient is more than rounding noise
    np.testing.assert_allclose(label_flows(labels), reference_flows(labels), atol=1e-5)


def test_flows_are_unit_inside_and_zero_outside():
    labels = touching_cells((96, 128), 14, np.random.default_rng(3))
    norm = np.hypot(*label_flows(labels))
    inside = labels > 0
    assert (norm[~inside] == 0).all()
    nonzero = norm[inside] > 0
    assert nonzero.mean() > 0.99  # only centres of symmetric shapes may have no gradient
    np.testing.assert_allclose(norm[inside][nonzero], 1.0, atol=1e-5)


def test_flows_point_to_the_centre_of_a_disc():
    labels = discs((64, 64), [(30, 33)], [15])
    flows = label_flows(labels)
    ys, xs = np.nonzero(labels)
    towards = np.stack([30 - ys, 33 - xs]).astype(float)
    dot = (flows[:, ys, xs] * towards).sum(axis=0)
    off_centre = (ys != 30) | (xs != 33)
    assert (dot[off_centre] > 0).mean() > 0.99
    cosine = dot[off_centre] / np.hypot(*towards[:, off_centre])
    assert np.median(cosine) > 0.95


def test_instances_do_not_see_each_other():
    pair = touching_cells((40, 40), 16, np.random.default_rng(4))
    flows = label_flows(pair)
    for k in np.unique(pair[pair > 0]):
        alone = np.where(pair == k, pair, 0)
        np.testing.assert_array_equal(flows[:, pair == k], label_flows(alone)[:, pair == k])


def test_label_flows_edge_cases():
    assert not label_flows(np.zeros((20, 30), np.int32)).any()
    assert label_flows(np.zeros((0, 0), np.int32)).shape == (2, 0, 0)
    labels = np.zeros((20, 30), np.int64)
    labels[5, 5] = 2**40  # a one-pixel instance with a huge id: no gradient, no flow
    labels[10:20, 20:30] = 3  # a square in the corner, touching two borders
    flows = label_flows(labels)
    assert not flows[:, 5, 5].any()
    np.testing.assert_array_equal(flows, label_flows(np.where(labels == 3, 1, 0)))
    with pytest.raises(ValueError, match=">= 0"):
        label_flows(-labels)


# --- follow_flows ---------------------------------------------------------------------------------


def reference_follow(flows, mask, n_iter):
    """Euler steps with scipy's bilinear interpolation of the field, zero outside the mask."""
    field = np.where(mask, flows / FLOW_SCALE, 0.0)
    points = np.array(np.nonzero(mask), float)
    top = np.array(mask.shape, float)[:, None] - 1
    for _ in range(n_iter):
        step = [ndimage.map_coordinates(f, points, order=1, mode="nearest") for f in field]
        points = np.clip(points + step, 0, top)
    return points.T


def test_follow_flows_match_plain_euler_steps():
    rng = np.random.default_rng(5)
    shape = (40, 50)
    flows = FLOW_SCALE * ndimage.gaussian_filter(rng.normal(size=(2, *shape)), (0, 4, 4)) * 3
    mask = ndimage.gaussian_filter(rng.normal(size=shape), 3) > -0.05
    ends = follow_flows(flows, mask, n_iter=15)
    assert ends.dtype == np.float32 and ends.shape == (np.count_nonzero(mask), 2)
    np.testing.assert_allclose(ends, reference_follow(flows, mask, 15), atol=1e-3)


def test_follow_flows_clip_to_the_image():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    flows = np.zeros((2, 10, 12), np.float32)
    flows[1] = FLOW_SCALE  # one pixel to the right per step, inside the mask
    ends = follow_flows(flows, mask, n_iter=4)
    ys, xs = np.nonzero(mask)
    np.testing.assert_allclose(ends[:, 0], ys)
    np.testing.assert_allclose(ends[:, 1], np.minimum(xs + 4, 9))  # the field is 0 past x = 8
    mask[2:5, :3] = True
    flows[1] = -3 * FLOW_SCALE
    assert (follow_flows(flows, mask, n_iter=3)[:, 1] == 0).all()  # 8 -> 5 -> 2 -> 0
    flows[0, 2] = np.nan  # not finite: no step
    flows[0, 3] = np.finfo(np.float32).max  # down to the last row
    flows[0, 4] = -np.inf  # not finite: no step
    ys = np.nonzero(mask)[0]
    np.testing.assert_array_equal(
        follow_flows(flows, mask, n_iter=2)[:, 0], np.where(ys == 3, 9, ys)
    )
    assert follow_flows(flows, np.zeros((10, 12), bool)).shape == (0, 2)


# --- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_round_trip_recovers_touching_cells(seed):
    labels = touching_cells((120, 160), 18, np.random.default_rng(seed))
    pred = round_trip(labels)
    assert pred.dtype == np.int32
    assert map_iou(labels, pred) >= 0.9


@pytest.mark.parametrize("seed", range(3))
def test_round_trip_counts_separated_discs_exactly(seed):
    labels = separated_discs((100, 120), 25, np.random.default_rng(10 + seed))
    pred = round_trip(labels)
    assert pred.max() == labels.max()
    np.testing.assert_array_equal(np.unique(pred), np.arange(labels.max() + 1))  # 1..n


def test_round_trip_on_border_and_elongated_instances():
    labels = discs((60, 80), [(0, 0), (30, 79), (59, 40)], [14, 12, 10])  # cut by the border
    assert map_iou(labels, round_trip(labels)) == 1.0
    labels = thin_ellipse((40, 90))
    assert map_iou(labels, round_trip(labels)) == 1.0


def test_holes_are_filled():
    labels = discs((50, 50), [(25, 25)], [15])
    cellprob = logits(labels)
    cellprob[24:27, 24:27] = -5  # the points stop in the hole (no flow outside the foreground)
    pred = masks_from_flows(cellprob, FLOW_SCALE * label_flows(labels))
    np.testing.assert_array_equal(pred, labels)


def test_small_and_huge_masks_are_dropped():
    labels = discs((60, 60), [(15, 15), (40, 40)], [3, 12])  # 29 and 441 pixels
    assert round_trip(labels, min_size=15).max() == 2
    np.testing.assert_array_equal(round_trip(labels, min_size=30), np.where(labels == 2, 1, 0))
    mask = labels > 0
    ends = follow_flows(FLOW_SCALE * label_flows(labels), mask)
    assert masks_from_endpoints(ends, mask, max_size_fraction=0.1).max() == 1  # 441 > 360
    with pytest.raises(ValueError, match="end points for"):
        masks_from_endpoints(ends[1:], mask)
    for outside in (-1, 60, np.nan):
        ends[7, 1] = outside
        with pytest.raises(ValueError, match="inside the image"):
            masks_from_endpoints(ends, mask)


def test_one_pixel_instances_and_no_foreground():
    labels = discs((40, 40), [(20, 20)], [8])
    labels[2, 2] = 2
    np.testing.assert_array_equal(round_trip(labels, min_size=0), np.where(labels == 1, 1, 0))
    empty = np.zeros((30, 40), np.int32)
    for cellprob in (logits(empty), np.zeros((30, 40))):  # 0 is not above the threshold 0
        pred = masks_from_flows(cellprob, np.zeros((2, 30, 40)))
        assert pred.dtype == np.int32 and pred.shape == (30, 40) and not pred.any()
    assert masks_from_flows(np.zeros((0, 0)), np.zeros((2, 0, 0))).shape == (0, 0)
    with pytest.raises(ValueError, match="flows must have shape"):
        masks_from_flows(np.zeros((30, 40)), np.zeros((2, 40, 30)))


# --- flow error -----------------------------------------------------------------------------------


def rotate(flows: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * flows[0] - s * flows[1], s * flows[0] + c * flows[1]])


def test_flow_error_of_true_random_and_absent_flows():
    labels = separated_discs((100, 120), 12, np.random.default_rng(20))
    labels = np.where(labels > 0, 2 * labels, 0)  # odd labels absent
    true = FLOW_SCALE * label_flows(labels)
    errors = flow_error(labels, true)
    assert errors.shape == (labels.max(),)
    assert np.isnan(errors[0::2]).all()
    assert (errors[1::2] < 1e-10).all()
    angle = np.random.default_rng(21).uniform(0, 2 * np.pi, labels.shape)
    random = FLOW_SCALE * np.stack([np.sin(angle), np.cos(angle)]) * (labels > 0)
    assert (flow_error(labels, random)[1::2] > 1.0).all()  # about 2 for unrelated unit vectors
    assert flow_error(np.zeros((5, 5), np.int32), np.zeros((2, 5, 5))).shape == (0,)


def test_flow_threshold_drops_masks_whose_flows_disagree():
    labels = separated_discs((100, 120), 12, np.random.default_rng(30))
    flows = FLOW_SCALE * label_flows(labels)
    bent = labels % 2 == 1
    flows[:, bent] = rotate(flows, np.radians(50))[:, bent]  # still inward: same end points
    cellprob = logits(labels)
    assert map_iou(labels, masks_from_flows(cellprob, flows, flow_threshold=0)) == 1.0
    kept = masks_from_flows(cellprob, flows, flow_threshold=0.4)  # 50 degrees costs 0.71
    assert map_iou(np.where(bent, 0, labels), kept) == 1.0
