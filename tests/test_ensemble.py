"""TTA views and merging (views, families) on box-cropped predictions."""

import numpy as np
import pytest
import torch

from pipeline.core.ensemble import (
    VIEWS,
    box_iou,
    flip_predictions,
    merge_families,
    merge_predictions,
    unview_predictions,
)
from pipeline.core.instances import instance_boxes_and_crops, paint_instances
from pipeline.core.predictions import ImagePredictions
from pipeline.models.inference import view_tensor


def preds(shape, boxes, scores, labels=None, value=255):
    boxes = np.array(boxes, np.int32).reshape(-1, 4)
    masks = [np.full((b[3] - b[1], b[2] - b[0]), value, np.uint8) for b in boxes]
    labels = np.ones(len(boxes), np.int32) if labels is None else np.array(labels, np.int32)
    return ImagePredictions(shape, boxes, np.array(scores, np.float32), labels, masks)


def full_mask(pred, i):
    out = np.zeros(pred.shape, np.uint8)
    x0, y0, x1, y1 = pred.boxes[i]
    out[y0:y1, x0:x1] = pred.masks[i]
    return out


@pytest.mark.parametrize(("h", "v"), [(True, False), (False, True), (True, True)])
def test_flip_matches_flipping_the_image(h, v):
    rng = np.random.default_rng(0)
    pred = preds((7, 11), [[1, 2, 5, 6], [0, 0, 11, 1]], [0.9, 0.5])
    pred.masks[0] = rng.integers(0, 256, (4, 4)).astype(np.uint8)
    flipped = flip_predictions(pred, h, v)
    for i in range(2):
        expected = full_mask(pred, i)
        expected = expected[:, ::-1] if h else expected
        expected = expected[::-1] if v else expected
        np.testing.assert_array_equal(full_mask(flipped, i), expected)
    back = flip_predictions(flipped, h, v)
    np.testing.assert_array_equal(back.boxes, pred.boxes)


def test_box_iou():
    a = np.array([[0, 0, 2, 2], [0, 0, 0, 0]])
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2]])
    np.testing.assert_allclose(box_iou(a, b), [[1 / 7, 1.0], [0.0, 0.0]])


def test_merge_votes_and_averages():
    a = preds((20, 20), [[0, 0, 4, 4], [10, 10, 14, 14]], [0.8, 0.6])
    b = preds((20, 20), [[0, 0, 4, 5], [15, 0, 19, 4]], [0.6, 0.4], value=127)
    merged = merge_predictions([a, b], iou_threshold=0.5)
    assert len(merged) == 3
    assert merged.boxes[0].tolist() == [0, 0, 4, 5]  # union of the matched pair
    assert merged.scores.tolist() == pytest.approx([0.7, 0.3, 0.2])
    np.testing.assert_array_equal(merged.masks[0][:4], np.full((4, 4), 191))  # (255 + 127) / 2
    np.testing.assert_array_equal(merged.masks[0][4], np.full(4, 64))  # only b: 127 / 2
    assert merged.masks[1].max() == 128  # seen by one view of two
    voted = merge_predictions([a, b], iou_threshold=0.5, min_votes=2)
    assert len(voted) == 1


def test_merge_respects_classes_and_one_member_per_view():
    a = preds((10, 10), [[0, 0, 4, 4]], [0.9], labels=[1])
    b = preds((10, 10), [[0, 0, 4, 4], [0, 0, 4, 4]], [0.8, 0.7], labels=[2, 1])
    merged = merge_predictions([a, b], iou_threshold=0.5)
    assert sorted(merged.labels.tolist()) == [1, 2]
    c = preds((10, 10), [[0, 0, 4, 4], [0, 0, 4, 4]], [0.8, 0.7])
    assert len(merge_predictions([a, c], iou_threshold=0.5)) == 2


def test_merged_identical_views_paint_the_same():
    a = preds((12, 12), [[0, 0, 5, 5], [6, 6, 12, 12]], [0.9, 0.8])
    merged = merge_predictions([a, a, a])
    assert merged.scores.tolist() == pytest.approx([0.9, 0.8])
    for i in range(2):
        np.testing.assert_array_equal(merged.masks[i], a.masks[i])
    np.testing.assert_array_equal(
        paint_instances(a.shape, merged.boxes, [m > 127 for m in merged.masks])[0],
        paint_instances(a.shape, a.boxes, [m > 127 for m in a.masks])[0],
    )


def test_merge_edge_cases():
    empty = ImagePredictions.empty((5, 5))
    assert len(merge_predictions([empty, empty])) == 0
    with pytest.raises(ValueError, match="nothing to merge"):
        merge_predictions([])


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_every_view_is_undone_exactly(view):
    """Instances found on a view of an image (transposed, flipped, rotated) map back onto the
    instances of the image itself, pixel for pixel."""
    rng = np.random.default_rng(1)
    labels = np.zeros((13, 21), np.int32)
    labels[1:5, 2:9] = 1
    labels[6:12, 14:20] = 2
    labels[8:10, 1:4] = 3
    labels[rng.random(labels.shape) < 0.05] = 0  # ragged masks
    viewed = view_tensor(torch.from_numpy(labels), view).numpy()
    ids, boxes, crops = instance_boxes_and_crops(viewed)
    pred = ImagePredictions(
        viewed.shape,
        boxes.astype(np.int32),
        ids.astype(np.float32),  # the score carries the instance id through
        np.ones(len(ids), np.int32),
        [c.astype(np.uint8) * 255 for c in crops],
        ids.astype(np.float32) / 10,
    )
    back = unview_predictions(pred, view)
    assert back.shape == labels.shape
    painted = np.zeros_like(labels)
    for (x0, y0, x1, y1), crop, k in zip(back.boxes, back.masks, back.scores):
        painted[y0:y1, x0:x1][crop > 0] = int(k)
    np.testing.assert_array_equal(painted, labels)
    np.testing.assert_allclose(back.errors, back.scores / 10)


def test_weighted_merge_of_two_families():
    a = preds((20, 20), [[0, 0, 4, 4], [10, 10, 14, 14]], [0.8, 0.6])
    b = preds((20, 20), [[0, 0, 4, 4]], [0.2], value=0)
    b.errors = np.array([0.5], np.float32)
    merged = merge_predictions([a, b], iou_threshold=0.5, weights=[3.0, 1.0])
    assert merged.scores.tolist() == pytest.approx([(3 * 0.8 + 0.2) / 4, 3 * 0.6 / 4])
    assert merged.masks[0].max() == round(255 * 3 / 4)
    assert merged.errors.tolist() == pytest.approx([0.5 / 4, 0.0])  # weighted over members
    only_a = merge_predictions([a, b], weights=[1.0, 0.0])
    assert only_a is a
    with pytest.raises(ValueError, match="not all 0"):
        merge_predictions([a, b], weights=[0.0, 0.0])
    by_family = merge_families({"x": {"i": a}, "y": {"i": b}}, {"x": 3.0, "y": 1.0}, 0.5)
    assert by_family["i"].scores.tolist() == pytest.approx(merged.scores.tolist())


def test_one_family_of_positive_weight_is_used_as_it_is():
    a = preds((20, 20), [[0, 0, 4, 4]], [0.8])
    b = preds((20, 20), [[0, 0, 5, 5]], [0.6])
    chosen = merge_families({"x": {"i": a}, "y": {"i": b}}, {"x": 0.0, "y": 0.5})
    assert chosen == {"i": b} and chosen["i"] is b
    with pytest.raises(ValueError, match="no family has a positive weight"):
        merge_families({"x": {"i": a}}, {"x": 0.0})
