"""Search per-class thresholds that maximise the mean per-image score of out-of-fold predictions.

Coordinate ascent from a starting point: each (class, threshold) in turn takes the grid value that
raises the mean score most, for a few rounds. A change is kept only when it strictly improves, so
the result never scores below the start. Only images that the changed class can affect are
re-scored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from pipeline.core.postprocess import Thresholds, image_class, postprocess_image
from pipeline.core.predictions import ImagePredictions

ScoreFn = Callable[[str, np.ndarray], float]  # (image id, predicted label image) -> score
FIELDS = ("score", "mask", "min_area", "min_keep")


def _mean(scores: Mapping[str, float]) -> float:
    return float(np.mean(list(scores.values()))) if scores else 0.0


@dataclass(frozen=True)
class TuneResult:
    """The best thresholds, each image's score with them and at the start, each accepted step."""

    thresholds: Thresholds
    image_scores: dict[str, float]
    start_image_scores: dict[str, float]
    steps: list[dict]

    @property
    def score(self) -> float:
        return _mean(self.image_scores)

    @property
    def start_score(self) -> float:
        return _mean(self.start_image_scores)


def _affected(preds: Mapping[str, ImagePredictions], mode: str, category: int) -> list[str]:
    if mode == "image":
        return [i for i, p in preds.items() if image_class(p.labels) == category]
    return [i for i, p in preds.items() if (p.labels == category).any()]


def _with(thresholds: Thresholds, category: int, field: str, value: float) -> Thresholds:
    current = thresholds.of(category)
    per_class = {**thresholds.per_class, category: replace(current, **{field: value})}
    return replace(thresholds, per_class=per_class)


def tune_thresholds(
    preds: Mapping[str, ImagePredictions],
    score: ScoreFn,
    categories: Sequence[int],
    grid: Mapping[str, Sequence[float]],
    start: Thresholds,
    rounds: int = 2,
    progress: bool = True,
) -> TuneResult:
    """Coordinate ascent over `grid` (field -> values) for each category, from `start`."""
    unknown = set(grid) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown threshold field(s) {sorted(unknown)}; known: {FIELDS}")
    thresholds = replace(start, per_class={c: start.of(c) for c in categories})

    def scores_of(t: Thresholds, ids: Sequence[str]) -> dict[str, float]:
        return {i: score(i, postprocess_image(preds[i], t)[0]) for i in ids}

    start = scores_of(thresholds, list(preds))
    per_image = dict(start)
    steps: list[dict] = []
    jobs = [(r, c, f) for r in range(rounds) for c in categories for f in grid]
    for _, category, field in tqdm(jobs, desc="tune", disable=not progress):
        ids = _affected(preds, thresholds.class_mode, category)
        if not ids:
            continue
        current = sum(per_image[i] for i in ids)
        best_value, best_scores, best_total = None, None, current
        for value in grid[field]:
            trial = scores_of(_with(thresholds, category, field, value), ids)
            total = sum(trial.values())
            if total > best_total + 1e-12:
                best_value, best_scores, best_total = value, trial, total
        if best_scores is not None:
            thresholds = _with(thresholds, category, field, best_value)
            per_image.update(best_scores)
            steps.append(
                {
                    "category": category,
                    "field": field,
                    "value": best_value,
                    "score": _mean(per_image),
                }
            )
    return TuneResult(thresholds, per_image, start, steps)
