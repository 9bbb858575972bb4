"""Greedy painting of box-cropped masks against a plain full-size reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.instances import (
    instance_boxes,
    instance_boxes_and_crops,
    order_by_area,
    order_by_score,
    paint_instances,
)
from pipeline.core.predictions import ImagePredictions, load_predictions, quantise, save_predictions


def random_instances(rng, shape, n):
    h, w = shape
    x0 = rng.integers(0, w, n)
    y0 = rng.integers(0, h, n)
    x1 = np.minimum(w, x0 + rng.integers(0, 12, n))
    y1 = np.minimum(h, y0 + rng.integers(0, 12, n))
    boxes = np.stack([x0, y0, x1, y1], 1)
    masks = [rng.random((b[3] - b[1], b[2] - b[0])) < 0.6 for b in boxes]
    return boxes, masks


def reference_paint(shape, boxes, masks, order, min_area, min_keep):
    """The notebook way: one full-size mask per instance, `mask & ~used`."""
    used = np.zeros(shape, bool)
    labels = np.zeros(shape, np.int32)
    kept = []
    for i in order:
        full = np.zeros(shape, bool)
        x0, y0, x1, y1 = boxes[i]
        full[y0:y1, x0:x1] = masks[i]
        free = full & ~used
        own = full.sum()
        if own == 0 or free.sum() < min_area or free.sum() < min_keep * own:
            continue
        kept.append(i)
        labels[free] = len(kept)
        used |= free
    return labels, np.array(kept, dtype=np.int64)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 60),
    min_area=st.integers(0, 20),
    min_keep=st.sampled_from([0.0, 0.3, 0.9]),
    by=st.sampled_from(["score", "area"]),
)
def test_matches_reference(seed, n, min_area, min_keep, by):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    boxes, masks = random_instances(rng, shape, n)
    order = order_by_score(rng.random(n)) if by == "score" else order_by_area(masks)
    labels, kept = paint_instances(shape, boxes, masks, order, min_area, min_keep)
    ref_labels, ref_kept = reference_paint(shape, boxes, masks, order, min_area, min_keep)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(kept, ref_kept)


def test_no_shared_pixels_and_higher_score_wins():
    boxes = np.array([[0, 0, 4, 4], [2, 2, 6, 6]])
    masks = [np.ones((4, 4), bool), np.ones((4, 4), bool)]
    labels, kept = paint_instances((6, 6), boxes, masks, order_by_score(np.array([0.2, 0.9])))
    assert kept.tolist() == [1, 0]
    assert (labels == 1).sum() == 16 and (labels == 2).sum() == 12
    _, kept = paint_instances(
        (6, 6), boxes, masks, order_by_score(np.array([0.2, 0.9])), min_keep=0.8
    )
    assert kept.tolist() == [1]  # the loser kept 12/16 < 80% of its pixels


def test_orders():
    assert order_by_score(np.array([0.1, 0.5, 0.5])).tolist() == [1, 2, 0]
    masks = [np.ones((1, 2), bool), np.ones((3, 3), bool), np.zeros((2, 2), bool)]
    assert order_by_area(masks).tolist() == [1, 0, 2]


def test_bad_input():
    with pytest.raises(ValueError, match="inside the image"):
        paint_instances((4, 4), np.array([[0, 0, 5, 2]]), [np.ones((2, 5), bool)])
    with pytest.raises(ValueError, match="mask 0 has shape"):
        paint_instances((4, 4), np.array([[0, 0, 2, 2]]), [np.ones((3, 2), bool)])
    with pytest.raises(ValueError, match="1 boxes but 0 masks"):
        paint_instances((4, 4), np.array([[0, 0, 2, 2]]), [])


def test_predictions_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    boxes, masks = random_instances(rng, (30, 40), 25)
    images = {
        "a": ImagePredictions(
            (30, 40),
            boxes.astype(np.int32),
            rng.random(25).astype(np.float32),
            rng.integers(1, 4, 25).astype(np.int32),
            [quantise(m * rng.random(m.shape)) for m in masks],
        ),
        "b": ImagePredictions.empty((8, 9)),
    }
    save_predictions(tmp_path / "p.npz", images)
    back = load_predictions(tmp_path / "p.npz")
    assert list(back) == ["a", "b"]
    assert back["b"].shape == (8, 9) and len(back["b"]) == 0
    for got, want in zip(back["a"].masks, images["a"].masks):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(back["a"].boxes, images["a"].boxes)
    np.testing.assert_array_equal(back["a"].scores, images["a"].scores)
    np.testing.assert_array_equal(back["a"].labels, images["a"].labels)


def test_predictions_errors(tmp_path):
    bad = ImagePredictions(
        (4, 4),
        np.array([[0, 0, 2, 2]], np.int32),
        np.ones(1, np.float32),
        np.ones(1, np.int32),
        [np.zeros((3, 3), np.uint8)],
    )
    with pytest.raises(ValueError, match="cropped to its box"):
        save_predictions(tmp_path / "p.npz", {"x": bad})
    from pipeline.core.errors import CellpipeError

    with pytest.raises(CellpipeError, match="missing predictions file"):
        load_predictions(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(CellpipeError, match="not a cellpipe predictions file"):
        load_predictions(tmp_path / "junk.npz")
    assert quantise(np.array([0.0, 0.5, 1.2])).tolist() == [0, 128, 255]


def test_boxes_and_crops_paint_back_to_the_labels():
    labels = np.random.default_rng(0).integers(0, 6, (30, 40)) * 5  # scattered, ids 5..25
    ids, boxes, crops = instance_boxes_and_crops(labels)
    np.testing.assert_array_equal(ids, [5, 10, 15, 20, 25])
    for k, (x0, y0, x1, y1) in zip(ids, boxes):
        ys, xs = np.nonzero(labels == k)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    painted, _ = paint_instances(labels.shape, boxes, crops)
    np.testing.assert_array_equal(np.where(painted > 0, ids[painted - 1], 0), labels)


def test_boxes_of_huge_ids_and_empty_images():
    labels = np.zeros((4, 5), np.int64)
    labels[1, 2] = 2**40
    labels[3, :2] = 9
    ids, boxes = instance_boxes(labels)
    np.testing.assert_array_equal(ids, [9, 2**40])
    np.testing.assert_array_equal(boxes, [[0, 3, 2, 4], [2, 1, 3, 2]])
    for empty in (np.zeros((3, 3), np.int32), np.zeros((0, 0), np.int32)):
        ids, boxes, crops = instance_boxes_and_crops(empty)
        assert ids.shape == (0,) and boxes.shape == (0, 4) and crops == []
    with pytest.raises(ValueError, match=">= 0"):
        instance_boxes(-labels)
