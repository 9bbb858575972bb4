"""From raw predictions to final instances: per-class thresholds and overlap elimination.

Each class has a score threshold, a mask binarisation threshold, a minimum area in pixels, a
minimum kept fraction (an instance that loses more of its area to better instances is dropped) and
a maximum error (the family's own per-instance error, e.g. a flow model's flow error; None: no
limit).
The thresholds applied to an instance are those of the image's class (the mode of its predicted
classes, as the popular Sartorius notebooks do) or of the instance's own class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from pipeline.core import rle
from pipeline.core.coco import labels_to_annotations
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import read_json
from pipeline.core.instances import order_by_area, order_by_score, paint_instances
from pipeline.core.predictions import ImagePredictions
from pipeline.core.thresholds import ClassThresholds

ClassMode = Literal["image", "instance"]
OverlapOrder = Literal["score", "area"]


@dataclass(frozen=True)
class Thresholds:
    """Thresholds per category id, a default for the rest, and how to apply them."""

    default: ClassThresholds
    per_class: dict[int, ClassThresholds] = field(default_factory=dict)
    class_mode: ClassMode = "image"
    order: OverlapOrder = "score"

    def of(self, category: int) -> ClassThresholds:
        return self.per_class.get(int(category), self.default)

    def to_json(self) -> dict:
        return {
            "class_mode": self.class_mode,
            "order": self.order,
            "default": asdict(self.default),
            "per_class": {str(k): asdict(v) for k, v in sorted(self.per_class.items())},
        }

    @classmethod
    def from_json(cls, data: dict) -> Thresholds:
        try:
            return cls(
                per_class={int(k): ClassThresholds(**v) for k, v in data["per_class"].items()},
                default=ClassThresholds(**data["default"]),
                class_mode=data["class_mode"],
                order=data["order"],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CellpipeError(f"thresholds: malformed ({e})") from e


@dataclass(frozen=True)
class TunedChoice:
    """What `tune` chose (thresholds.json): family weights and the thresholds of their merged
    predictions, plus each family's own tuned thresholds (its predictions alone)."""

    weights: dict[str, float]
    thresholds: Thresholds
    family_thresholds: dict[str, Thresholds]


def load_tuned(path: Path | str) -> TunedChoice:
    """The choice written by `tune` (thresholds.json); its CV scores are ignored here."""
    path = Path(path)
    if not path.is_file():
        raise CellpipeError(f"missing thresholds file: {path} (run `cellpipe tune` first)")
    data = read_json(path)
    try:
        weights = {str(k): float(v) for k, v in data["weights"].items()}
        families = {f: data["candidates"][f]["thresholds"] for f in data["families"]}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CellpipeError(f"{path}: malformed ({e}); rerun `cellpipe tune`") from e
    return TunedChoice(
        weights,
        Thresholds.from_json(data["thresholds"]),
        {f: Thresholds.from_json(t) for f, t in families.items()},
    )


def image_class(labels: np.ndarray) -> int:
    """The most frequent predicted category (smallest id on ties); 0 for no predictions."""
    if len(labels) == 0:
        return 0
    values, counts = np.unique(labels, return_counts=True)
    return int(values[np.argmax(counts)])


def postprocess_image(
    pred: ImagePredictions, thresholds: Thresholds
) -> tuple[np.ndarray, np.ndarray]:
    """Label image (int32, no shared pixels) and the kept prediction indices, in label order."""
    if thresholds.class_mode == "image":
        chosen = thresholds.of(image_class(pred.labels))
        per_instance = [chosen] * len(pred)
    else:
        per_instance = [thresholds.of(c) for c in pred.labels]
    candidates = [
        i
        for i, t in enumerate(per_instance)
        if pred.scores[i] >= t.score and (t.max_error is None or pred.errors[i] <= t.max_error)
    ]
    masks = [pred.masks[i] >= round(per_instance[i].mask * 255) for i in candidates]
    boxes = pred.boxes[candidates] if candidates else np.zeros((0, 4), np.int64)
    if thresholds.order == "score":
        order = order_by_score(pred.scores[candidates])
    else:
        order = order_by_area(masks)
    limits = [per_instance[i] for i in candidates]
    labels, kept = paint_instances(
        pred.shape,
        boxes,
        masks,
        order,
        np.array([t.min_area for t in limits], np.int64),
        np.array([t.min_keep for t in limits], np.float64),
    )
    return labels, np.asarray(candidates, np.int64)[kept]


def final_instances(
    preds: Mapping[str, ImagePredictions], thresholds: Thresholds, desc: str = "postprocess"
) -> dict[str, list[str]]:
    """Each image's final instances as RLE texts (the submission's `predicted`), in label order."""
    return {
        image_id: list(rle.encode_labels(postprocess_image(pred, thresholds)[0]).values())
        for image_id, pred in tqdm(preds.items(), desc=desc, unit="img")
    }


def pseudo_coco(coco: dict, preds: Mapping[str, ImagePredictions], thresholds: Thresholds) -> dict:
    """`coco` (unlabelled images) with each image's final instances as annotations of their
    predicted classes; an image left without any is dropped (it would only teach background)."""
    annotations: list[dict] = []
    kept_images = []
    for image in tqdm(coco["images"], desc="pseudo labels", unit="img"):
        pred = preds[Path(image["file_name"]).stem]
        labels, kept = postprocess_image(pred, thresholds)
        if not len(kept):
            continue
        classes = pred.labels[kept]
        annotations += labels_to_annotations(labels, image["id"], len(annotations) + 1, classes)
        kept_images.append(image)
    return {**coco, "images": kept_images, "annotations": annotations}
