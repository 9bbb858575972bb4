"""Which families to use and how to weight them: the candidates of `cellpipe tune` and its report.

Each family is a candidate alone, its thresholds searched from its own start over its own grid.
With several families, every mix of weights (`weight_mixes`) is merged per image
(`ensemble.merge_families`) and scored after a quick search of the score threshold; the best mix
gets the full search and is one more candidate. The candidate with the best out-of-fold score is
chosen. Held-out scores (test images with their truth), when given, are reported beside the
out-of-fold ones and never choose anything. `tuning_report` is the content of thresholds.json.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.ensemble import merge_families
from pipeline.core.postprocess import ClassMode, ClassThresholds, OverlapOrder, Thresholds
from pipeline.core.predictions import ImagePredictions
from pipeline.core.truth_scorer import TruthScorer
from pipeline.core.tuning import TuneResult, class_groups, score_images, tune_thresholds

Predictions = Mapping[str, ImagePredictions]  # image id -> one image's predictions


@dataclass(frozen=True)
class SearchSpace:
    """Where a candidate's threshold search starts (every class) and the values it tries."""

    start: ClassThresholds
    grid: Mapping[str, Sequence[float | None]]  # threshold name -> values; absent: not tuned


@dataclass(frozen=True)
class ThresholdSearch:
    """How every candidate's thresholds are searched: against the out-of-fold truth, over these
    categories, applied per image or per instance, for some rounds of `tune_thresholds`."""

    scorer: TruthScorer
    categories: Sequence[int]
    class_mode: ClassMode
    order: OverlapOrder
    min_class_images: int  # categories with fewer images share their thresholds
    rounds: int

    def start(self, space: SearchSpace) -> Thresholds:
        """Untuned thresholds: the space's start for every class."""
        return Thresholds(default=space.start, class_mode=self.class_mode, order=self.order)

    def __call__(self, preds: Predictions, space: SearchSpace, rounds: int) -> TuneResult:
        groups = class_groups(
            preds, sorted(self.categories), self.class_mode, self.min_class_images
        )
        return tune_thresholds(preds, self.scorer, groups, space.grid, self.start(space), rounds)


@dataclass(frozen=True)
class Candidate:
    """A family alone (its weight 1) or a mix of families, with its tuned thresholds."""

    weights: dict[str, float]
    result: TuneResult


def weight_mixes(families: Sequence[str], values: Sequence[float]) -> list[dict[str, float]]:
    """Every assignment of `values` to the families with two or more positive weights, each
    proportional mix once (scaled so that the largest weight is 1)."""
    mixes: dict[tuple[float, ...], dict[str, float]] = {}
    for combo in itertools.product(sorted(set(values)), repeat=len(families)):
        if sum(w > 0 for w in combo) < 2:
            continue
        top = max(combo)
        key = tuple(round(w / top, 6) for w in combo)
        mixes.setdefault(key, dict(zip(families, key)))
    return list(mixes.values())


def search_candidates(
    oof: Mapping[str, Predictions],
    search: ThresholdSearch,
    spaces: Mapping[str, SearchSpace],
    ensemble: SearchSpace,
    weight_values: Sequence[float],
    merge_iou: float,
    min_votes: int,
    on_mix: Callable[[dict[str, float], float], None] = lambda weights, score: None,
) -> dict[str, Candidate]:
    """Each family of `oof` alone over its space, then (several families) the best mix of
    `weight_values` over `ensemble`; `on_mix` sees each mix's quick score."""
    families = list(oof)
    candidates = {
        family: Candidate({family: 1.0}, search(oof[family], spaces[family], search.rounds))
        for family in families
    }
    if len(families) > 1:
        score_only = {k: v for k, v in ensemble.grid.items() if k == "score"}
        quick = SearchSpace(ensemble.start, score_only)
        best_mix, best_score = None, -1.0
        for weights in weight_mixes(families, weight_values):
            score = search(merge_families(oof, weights, merge_iou, min_votes), quick, 1).score
            on_mix(weights, score)
            if score > best_score:
                best_mix, best_score = weights, score
        if best_mix is not None:
            merged = merge_families(oof, best_mix, merge_iou, min_votes)
            candidates["ensemble"] = Candidate(best_mix, search(merged, ensemble, search.rounds))
    return candidates


def heldout_scores(
    candidates: Mapping[str, Candidate],
    test: Mapping[str, Predictions],
    truth: TruthScorer,
    merge_iou: float,
    min_votes: int,
) -> dict[str, dict[str, float]]:
    """Each candidate's mean score, tuned and untuned, on the test images that have a truth."""
    scores = {}
    for name, candidate in candidates.items():
        preds = merge_families(test, candidate.weights, merge_iou, min_votes)
        preds = {i: p for i, p in preds.items() if i in truth.runs}
        result = candidate.result
        scores[name] = {
            "tuned": float(np.mean(list(score_images(preds, truth, result.thresholds).values()))),
            "default": float(
                np.mean(list(score_images(preds, truth, result.start_thresholds).values()))
            ),
            "images": len(preds),
        }
    return scores


def tuning_report(
    families: Sequence[str],
    candidates: Mapping[str, Candidate],
    scorer: TruthScorer,
    categories: Mapping[int, str],
    heldout: Mapping[str, dict[str, float]],
) -> dict[str, Any]:
    """thresholds.json: the chosen candidate (best out-of-fold score) and every candidate's
    thresholds, scores (out-of-fold, held-out when given) and accepted steps."""

    def entry(candidate: Candidate, name: str) -> dict[str, Any]:
        result = candidate.result
        out = {
            "weights": candidate.weights,
            "thresholds": result.thresholds.to_json(),
            "cv": {
                "tuned": result.score,
                "default": result.start_score,
                "tuned_per_class": scorer.per_class(result.image_scores),
                "default_per_class": scorer.per_class(result.start_image_scores),
                "images": len(result.image_scores),
            },
            "steps": result.steps,
        }
        return {**out, "heldout": heldout[name]} if name in heldout else out

    chosen = max(candidates, key=lambda name: candidates[name].result.score)
    reports = {name: entry(candidate, name) for name, candidate in candidates.items()}
    final = reports[chosen]
    return {
        "families": list(families),
        "chosen": chosen,
        "weights": final["weights"],
        "thresholds": final["thresholds"],
        "categories": {str(k): v for k, v in categories.items()},
        "cv": final["cv"],
        **({"heldout": final["heldout"]} if "heldout" in final else {}),
        "candidates": reports,
    }
