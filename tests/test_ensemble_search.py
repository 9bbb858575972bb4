"""Candidates of `tune` (each family alone, the best weighted mix) and their report, scored with
the real MAP-IoU scorer against RLE truth."""

import numpy as np
import pandas as pd
import pytest
from test_tuning import make_image

from pipeline.core import rle
from pipeline.core.ensemble_search import (
    SearchSpace,
    ThresholdSearch,
    heldout_scores,
    search_candidates,
    tuning_report,
    weight_mixes,
)
from pipeline.core.metrics import map_iou
from pipeline.core.postprocess import ClassThresholds, postprocess_image
from pipeline.core.predictions import ImagePredictions
from pipeline.core.truth_scorer import TruthScorer

CATEGORIES = {1: "astro", 2: "cort"}


def truth_frame(truths: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = [
        (i, text, *labels.shape, CATEGORIES[1 + k % 2])
        for k, (i, labels) in enumerate(truths.items())
        for text in rle.encode_labels(labels).values()
    ]
    return pd.DataFrame(rows, columns=["id", "annotation", "height", "width", "cell_type"])


def first_two(pred: ImagePredictions) -> ImagePredictions:
    """A weaker family: only the first two (true) objects of each image."""
    keep = [0, 1]
    return ImagePredictions(
        pred.shape, pred.boxes[keep], pred.scores[keep], pred.labels[keep], pred.masks[:2]
    )


def test_weight_mixes_are_distinct_and_mix_two_families_or_more():
    mixes = weight_mixes(["a", "b", "c"], [0.0, 0.5, 1.0])
    assert {"a": 1.0, "b": 0.5, "c": 0.0} in mixes and {"a": 1.0, "b": 1.0, "c": 1.0} in mixes
    assert all(sum(w > 0 for w in m.values()) >= 2 and max(m.values()) == 1.0 for m in mixes)
    # 20 assignments with two positive weights or more, less (.5, .5, 0) x 3 and (.5, .5, .5)
    assert len(mixes) == len({tuple(m.values()) for m in mixes}) == 16
    assert weight_mixes(["a"], [0.0, 1.0]) == []


def test_candidates_and_report():
    rng = np.random.default_rng(0)
    truths, full = {}, {}
    for i in range(6):
        truths[f"im{i}"], full[f"im{i}"] = make_image(rng, 1 + i % 2)
    oof = {"full": full, "two": {i: first_two(p) for i, p in full.items()}}
    scorer = TruthScorer.from_frame(truth_frame(truths), set(truths))
    search = ThresholdSearch(scorer, list(CATEGORIES), "image", "score", 1, 1)
    start = ClassThresholds(score=0.0, mask=0.3, min_area=0, min_keep=0.0)
    space = SearchSpace(start, {"score": [0.0, 0.5], "mask": [0.3, 0.5], "min_area": [0, 10]})
    mixes = []
    candidates = search_candidates(
        oof,
        search,
        {"full": space, "two": space},
        space,
        [0.0, 0.5, 1.0],
        0.5,
        1,
        on_mix=lambda weights, score: mixes.append(weights),
    )
    assert mixes == weight_mixes(["full", "two"], [0.0, 0.5, 1.0])
    assert list(candidates) == ["full", "two", "ensemble"]
    assert candidates["ensemble"].weights in mixes

    held = {i: truths[i] for i in ("im0", "im3", "im4")}
    held_scorer = TruthScorer.from_frame(truth_frame(held), set(held))
    heldout = heldout_scores(candidates, oof, held_scorer, 0.5, 1)
    thresholds = candidates["full"].result.thresholds
    recomputed = [map_iou(held[i], postprocess_image(full[i], thresholds)[0]) for i in held]
    assert heldout["full"]["tuned"] == pytest.approx(np.mean(recomputed))
    assert heldout["full"]["images"] == 3

    report = tuning_report(["full", "two"], candidates, scorer, CATEGORIES, heldout)
    scores = {name: c["cv"]["tuned"] for name, c in report["candidates"].items()}
    assert report["chosen"] == max(scores, key=scores.__getitem__)
    chosen = report["candidates"][report["chosen"]]
    assert report["weights"] == chosen["weights"] and report["thresholds"] == chosen["thresholds"]
    assert report["heldout"] == heldout[report["chosen"]]
    assert report["categories"] == {"1": "astro", "2": "cort"}
    for name, entry in report["candidates"].items():
        assert entry["cv"]["tuned"] >= entry["cv"]["default"]
        assert set(entry["cv"]["tuned_per_class"]) == {"astro", "cort"}
        assert entry["cv"]["images"] == 6 and entry["heldout"] == heldout[name]
