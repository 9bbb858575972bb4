"""MAP-IoU of predicted label images against the truth of a train.csv-style table: the score
`tune` maximises, image by image."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping

import numpy as np
import pandas as pd

from pipeline.core.metrics import match_runs
from pipeline.core.rle import Runs, label_runs, parse_runs


@dataclasses.dataclass(frozen=True)
class TruthScorer:
    """MAP-IoU of predicted label images against the truth of a train.csv-style table."""

    runs: dict[str, Runs]  # each image's true instances
    cell_types: dict[str, str]  # each image's `cell_type` ('' without the column)

    @classmethod
    def from_frame(cls, truth: pd.DataFrame, image_ids: Collection[str]) -> TruthScorer:
        """The truth of `image_ids` (an id without rows has no instance)."""
        rows = truth[truth["id"].isin(list(image_ids))]
        runs, cell_types = {}, {}
        for image_id, image in rows.groupby("id"):
            texts = [t for t in image["annotation"].astype(str) if t.strip()]
            shape = (int(image["height"].iloc[0]), int(image["width"].iloc[0]))
            runs[image_id] = parse_runs(texts, shape)
            cell_types[image_id] = str(image["cell_type"].iloc[0]) if "cell_type" in image else ""
        return cls(runs, cell_types)

    def __call__(self, image_id: str, labels: np.ndarray) -> float:
        """One image's score: its predicted label image against its truth."""
        empty = Runs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(1, np.int64))
        return match_runs(self.runs.get(image_id, empty), label_runs(labels)).score

    def per_class(self, image_scores: Mapping[str, float]) -> dict[str, float]:
        """Mean image score per cell type."""
        scores: dict[str, list[float]] = {}
        for image_id, value in image_scores.items():
            scores.setdefault(self.cell_types.get(image_id) or "cell", []).append(value)
        return {k: float(np.mean(v)) for k, v in sorted(scores.items())}
