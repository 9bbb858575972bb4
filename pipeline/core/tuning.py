"""Search per-class thresholds that maximise the mean per-image score of out-of-fold predictions.

Coordinate ascent from a starting point: each (class group, threshold) in turn takes the grid
value that raises the mean score most, for a few rounds. A group is one class, or several classes
pooled (`class_groups`: classes with too few images to tune alone share one set of thresholds). A
change is kept only when it strictly improves, so the result never scores below the start. Only
images that the changed group can affect are re-scored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from pipeline.core.postprocess import Thresholds, image_class, postprocess_image
from pipeline.core.predictions import ImagePredictions

ScoreFn = Callable[[str, np.ndarray], float]  # (image id, predicted label image) -> score
FIELDS = ("score", "mask", "min_area", "min_keep", "max_error")


def _mean(scores: Mapping[str, float]) -> float:
    return float(np.mean(list(scores.values()))) if scores else 0.0


@dataclass(frozen=True)
class TuneResult:
    """The best thresholds and each image's score with them, the same at the start, and each
    accepted step."""

    thresholds: Thresholds
    image_scores: dict[str, float]
    start_thresholds: Thresholds
    start_image_scores: dict[str, float]
    steps: list[dict]

    @property
    def score(self) -> float:
        return _mean(self.image_scores)

    @property
    def start_score(self) -> float:
        return _mean(self.start_image_scores)


def score_images(
    preds: Mapping[str, ImagePredictions],
    score: ScoreFn,
    thresholds: Thresholds,
    ids: Sequence[str] | None = None,
) -> dict[str, float]:
    """The score of each image of `ids` (default: all) postprocessed with `thresholds`."""
    ids = list(preds) if ids is None else ids
    return {i: score(i, postprocess_image(preds[i], thresholds)[0]) for i in ids}


def _affected(preds: Mapping[str, ImagePredictions], mode: str, group: Sequence[int]) -> list[str]:
    if mode == "image":
        return [i for i, p in preds.items() if image_class(p.labels) in group]
    return [i for i, p in preds.items() if np.isin(p.labels, group).any()]


def class_groups(
    preds: Mapping[str, ImagePredictions], categories: Sequence[int], mode: str, min_images: int
) -> list[list[int]]:
    """Each category with at least `min_images` affected images alone, the others in one group."""
    alone = [c for c in categories if len(_affected(preds, mode, [c])) >= min_images]
    pooled = [c for c in categories if c not in alone]
    return [[c] for c in alone] + ([pooled] if pooled else [])


def _with(thresholds: Thresholds, group: Sequence[int], field: str, value: float) -> Thresholds:
    changed = {c: replace(thresholds.of(c), **{field: value}) for c in group}
    return replace(thresholds, per_class={**thresholds.per_class, **changed})


def tune_thresholds(
    preds: Mapping[str, ImagePredictions],
    score: ScoreFn,
    groups: Sequence[Sequence[int]],
    grid: Mapping[str, Sequence[float | None]],
    start: Thresholds,
    rounds: int = 2,
    progress: bool = True,
) -> TuneResult:
    """Coordinate ascent over `grid` (field -> values) for each group of categories, from
    `start`; the categories of a group always share their thresholds."""
    unknown = set(grid) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown threshold field(s) {sorted(unknown)}; known: {FIELDS}")
    thresholds = replace(start, per_class={c: start.of(c) for g in groups for c in g})
    untuned = thresholds

    start_scores = score_images(preds, score, thresholds)
    per_image = dict(start_scores)
    steps: list[dict] = []
    jobs = [(r, list(g), f) for r in range(rounds) for g in groups for f in grid]
    for _, group, field in tqdm(jobs, desc="tune", disable=not progress):
        ids = _affected(preds, thresholds.class_mode, group)
        if not ids:
            continue
        current = sum(per_image[i] for i in ids)
        best_value, best_scores, best_total = None, None, current
        for value in grid[field]:
            trial = score_images(preds, score, _with(thresholds, group, field, value), ids)
            total = sum(trial.values())
            if total > best_total + 1e-12:
                best_value, best_scores, best_total = value, trial, total
        if best_scores is not None:
            thresholds = _with(thresholds, group, field, best_value)
            per_image.update(best_scores)
            steps.append(
                {
                    "categories": group,
                    "field": field,
                    "value": best_value,
                    "score": _mean(per_image),
                }
            )
    return TuneResult(thresholds, per_image, untuned, start_scores, steps)
