"""Threshold search on out-of-fold-like predictions, scored with the real MAP-IoU scorer."""

import numpy as np
import pytest

from pipeline.core.metrics import map_iou
from pipeline.core.postprocess import ClassThresholds, Thresholds, postprocess_image
from pipeline.core.predictions import ImagePredictions
from pipeline.core.tuning import class_groups, tune_thresholds


def make_image(rng, category, shape=(40, 50)):
    """Truth: a few squares. Predictions: each square (score 0.9) plus class-specific junk."""
    truth = np.zeros(shape, np.int32)
    boxes, masks, scores = [], [], []
    for k in range(1, 5):
        y, x = 10 * (k - 1) + 1, int(rng.integers(0, shape[1] - 9))
        truth[y : y + 8, x : x + 8] = k
        boxes.append([x, y - 1, x + 8, y + 8])
        prob = np.full((9, 8), 200, np.uint8)
        prob[0, :] = 90  # a faint row above the square: a mask threshold above 0.35 trims it
        masks.append(prob)
        scores.append(0.9)
    # category 1: confident tiny blobs (need min_area); category 2: faint big false positives
    for _ in range(4):
        x, y = int(rng.integers(0, shape[1] - 12)), int(rng.integers(0, shape[0] - 12))
        size, score = (2, 0.8) if category == 1 else (12, 0.3)
        boxes.append([x, y, x + size, y + size])
        masks.append(np.full((size, size), 255, np.uint8))
        scores.append(score)
    n = len(boxes)
    pred = ImagePredictions(
        shape,
        np.array(boxes, np.int32),
        np.array(scores, np.float32),
        np.full(n, category, np.int32),
        masks,
    )
    return truth, pred


def test_tuning_improves_and_never_loses():
    rng = np.random.default_rng(0)
    truths, preds = {}, {}
    for i in range(6):
        truths[f"im{i}"], preds[f"im{i}"] = make_image(rng, 1 + i % 2)
    start = Thresholds(default=ClassThresholds(score=0.0, mask=0.3, min_area=0, min_keep=0.0))

    def score(image_id, labels):
        return map_iou(truths[image_id], labels)

    grid = {"score": [0.0, 0.5], "mask": [0.3, 0.5], "min_area": [0, 10]}
    result = tune_thresholds(preds, score, [[1], [2]], grid, start, progress=False)
    assert result.score > result.start_score
    assert result.score == pytest.approx(1.0)  # every false positive removed, masks exact
    assert result.thresholds.of(1).min_area == 10  # tiny blobs need an area minimum
    assert result.thresholds.of(2).score == 0.5  # faint blobs need a score threshold
    assert result.thresholds.of(1).mask == 0.5 and result.thresholds.of(2).mask == 0.5
    recomputed = np.mean(
        [score(i, postprocess_image(p, result.thresholds)[0]) for i, p in preds.items()]
    )
    assert recomputed == pytest.approx(result.score)
    assert [s["score"] for s in result.steps] == sorted(s["score"] for s in result.steps)


def test_nothing_to_gain_keeps_the_start():
    rng = np.random.default_rng(1)
    truth, pred = make_image(rng, 1)
    best = Thresholds(default=ClassThresholds(score=0.5, mask=0.5, min_area=10, min_keep=0.0))
    result = tune_thresholds(
        {"a": pred},
        lambda i, labels: map_iou(truth, labels),
        [[1]],
        {"score": [0.0, 0.5, 0.95]},
        best,
        progress=False,
    )
    assert result.steps == [] and result.score == result.start_score == pytest.approx(1.0)


def test_unknown_field():
    with pytest.raises(ValueError, match="unknown threshold field"):
        start = Thresholds(default=ClassThresholds(0.5, 0.5, 10, 0.0))
        tune_thresholds({}, lambda i, labels: 0.0, [[1]], {"nms": [0.5]}, start)


def test_pooled_classes_share_thresholds():
    rng = np.random.default_rng(0)
    truths, preds = {}, {}
    for i in range(6):
        truths[f"im{i}"], preds[f"im{i}"] = make_image(rng, 1 if i < 5 else 2)
    groups = class_groups(preds, [1, 2, 3], "image", min_images=3)
    assert groups == [[1], [2, 3]]  # class 2 has one image, class 3 none: pooled
    start = Thresholds(default=ClassThresholds(score=0.0, mask=0.3, min_area=0, min_keep=0.0))
    grid = {"score": [0.0, 0.5], "min_area": [0, 10]}

    def score(image_id, labels):
        return map_iou(truths[image_id], labels)

    result = tune_thresholds(preds, score, groups, grid, start, progress=False)
    assert result.thresholds.of(2) == result.thresholds.of(3)
    assert result.thresholds.of(2).score == 0.5  # learnt from class 2's one image, shared
    assert result.thresholds.of(1).min_area == 10


def test_max_error_drops_instances_with_large_errors():
    rng = np.random.default_rng(3)
    truth, pred = make_image(rng, 2)
    faint = pred.scores < 0.5  # the false positives; give them large errors, scores like the rest
    pred.errors = np.where(faint, 0.9, 0.1).astype(np.float32)
    pred.scores = np.full(len(pred), 0.8, np.float32)
    start = Thresholds(default=ClassThresholds(score=0.0, mask=0.5, min_area=0, min_keep=0.0))
    result = tune_thresholds(
        {"a": pred},
        lambda i, labels: map_iou(truth, labels),
        [[2]],
        {"score": [0.0, 0.5], "max_error": [None, 0.5]},
        start,
        progress=False,
    )
    assert result.start_score < 1.0
    assert result.thresholds.of(2).max_error == 0.5 and result.score == pytest.approx(1.0)
