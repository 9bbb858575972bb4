"""Per-class thresholds and overlap elimination against a plain full-mask reference."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.errors import CellpipeError
from pipeline.core.postprocess import (
    ClassThresholds,
    Thresholds,
    image_class,
    load_tuned,
    postprocess_image,
)
from pipeline.core.predictions import ImagePredictions, quantise


def random_predictions(rng, shape=(30, 40), n=40):
    h, w = shape
    x0, y0 = rng.integers(0, w, n), rng.integers(0, h, n)
    x1, y1 = np.minimum(w, x0 + rng.integers(1, 14, n)), np.minimum(h, y0 + rng.integers(1, 14, n))
    boxes = np.stack([x0, y0, x1, y1], 1).astype(np.int32)
    masks = [quantise(rng.random((b[3] - b[1], b[2] - b[0]))) for b in boxes]
    return ImagePredictions(
        shape,
        boxes,
        rng.random(n).astype(np.float32),
        rng.integers(1, 4, n).astype(np.int32),
        masks,
        rng.random(n).astype(np.float32),  # errors
    )


def reference(pred, thresholds):
    """Full-size masks, visited by score, each class's limits, `mask & ~used`."""
    if thresholds.class_mode == "image":
        values, counts = np.unique(pred.labels, return_counts=True)
        chosen = int(values[np.argmax(counts)]) if len(values) else 0
        per = [thresholds.of(chosen)] * len(pred)
    else:
        per = [thresholds.of(c) for c in pred.labels]
    used = np.zeros(pred.shape, bool)
    labels = np.zeros(pred.shape, np.int32)
    kept = []
    for i in np.argsort(-pred.scores, kind="stable"):
        t = per[i]
        if pred.scores[i] < t.score or (t.max_error is not None and pred.errors[i] > t.max_error):
            continue
        full = np.zeros(pred.shape, bool)
        x0, y0, x1, y1 = pred.boxes[i]
        full[y0:y1, x0:x1] = pred.masks[i] >= round(t.mask * 255)
        free = full & ~used
        if full.sum() == 0 or free.sum() < t.min_area or free.sum() < t.min_keep * full.sum():
            continue
        kept.append(i)
        labels[free] = len(kept)
        used |= free
    return labels, kept


CLASS_THRESHOLDS = st.builds(
    ClassThresholds,
    score=st.sampled_from([0.0, 0.3, 0.6]),
    mask=st.sampled_from([0.3, 0.5, 0.8]),
    min_area=st.integers(0, 30),
    min_keep=st.sampled_from([0.0, 0.5]),
    max_error=st.sampled_from([None, 0.5]),
)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    mode=st.sampled_from(["image", "instance"]),
    per_class=st.dictionaries(st.integers(1, 3), CLASS_THRESHOLDS),
    default=CLASS_THRESHOLDS,
)
def test_matches_reference(seed, mode, per_class, default):
    pred = random_predictions(np.random.default_rng(seed))
    thresholds = Thresholds(default, per_class, mode, "score")
    labels, kept = postprocess_image(pred, thresholds)
    ref_labels, ref_kept = reference(pred, thresholds)
    np.testing.assert_array_equal(labels, ref_labels)
    assert kept.tolist() == ref_kept


def test_image_class_is_the_mode():
    assert image_class(np.array([2, 3, 3, 2, 1])) == 2  # tie: smallest id
    assert image_class(np.array([3, 3, 1])) == 3
    assert image_class(np.array([], np.int32)) == 0


def test_area_order_keeps_the_biggest():
    pred = ImagePredictions(
        (8, 8),
        np.array([[0, 0, 3, 3], [0, 0, 8, 8]], np.int32),
        np.array([0.9, 0.4], np.float32),
        np.array([1, 1], np.int32),
        [np.full((3, 3), 255, np.uint8), np.full((8, 8), 255, np.uint8)],
    )
    by_area = Thresholds(default=ClassThresholds(0.0, 0.5, 1, 0.0), order="area")
    labels, kept = postprocess_image(pred, by_area)
    assert kept.tolist() == [1] and (labels == 1).all()  # the small one lost all its pixels
    labels, kept = postprocess_image(pred, Thresholds(default=by_area.default, order="score"))
    assert kept.tolist() == [0, 1] and (labels == 1).sum() == 9


def test_empty_predictions():
    thresholds = Thresholds(default=ClassThresholds(0.5, 0.5, 10, 0.0))
    labels, kept = postprocess_image(ImagePredictions.empty((5, 6)), thresholds)
    assert labels.shape == (5, 6) and not labels.any() and kept.size == 0


def test_thresholds_json(tmp_path):
    thresholds = Thresholds(
        ClassThresholds(0.5, 0.5, 10, 0.0),
        {1: ClassThresholds(0.15, 0.5, 75, 0.2, max_error=0.4)},
        "instance",
        "area",
    )
    alone = Thresholds(ClassThresholds(0.3, 0.5, 0, 0.0))
    path = tmp_path / "thresholds.json"
    path.write_text(
        json.dumps(
            {
                "families": ["a", "b"],
                "weights": {"a": 1.0, "b": 0.5},
                "thresholds": thresholds.to_json(),
                "candidates": {
                    "a": {"thresholds": alone.to_json()},
                    "b": {"thresholds": alone.to_json()},
                },
                "cv": {},
            }
        )
    )
    tuned = load_tuned(path)
    assert tuned.thresholds == thresholds and tuned.weights == {"a": 1.0, "b": 0.5}
    assert tuned.family_thresholds == {"a": alone, "b": alone}
    with pytest.raises(CellpipeError, match="missing thresholds file"):
        load_tuned(tmp_path / "none.json")
    path.write_text(json.dumps({"weights": {}}))
    with pytest.raises(CellpipeError, match="malformed"):
        load_tuned(path)
    path.write_text(
        json.dumps(
            {"families": [], "weights": {}, "thresholds": {"per_class": {}}, "candidates": {}}
        )
    )
    with pytest.raises(CellpipeError, match="thresholds: malformed"):
        load_tuned(path)
