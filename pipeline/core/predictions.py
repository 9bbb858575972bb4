"""Compact storage of instance predictions: box-cropped masks, never full-size stacks.

One image's predictions are boxes [x0, y0, x1, y1) in pixels, scores, category ids, errors (a
family's own per-instance quality measure, lower is better, e.g. a flow model's flow error; 0 when
the family has none), and each instance's mask probability cropped to its box, quantised to uint8
(0..255). A split's predictions
go into one `.npz`: per-image offsets into concatenated arrays, and all mask crops as one flat
byte array. 1000 detections of ~20x20 pixels take ~0.4 MB instead of 1.4 GB of float masks.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import CellpipeError, full_message
from pipeline.core.fileio import atomic_path


@dataclass
class ImagePredictions:
    """Predicted instances of one image; masks[i] has shape (y1 - y0, x1 - x0) of boxes[i]."""

    shape: tuple[int, int]
    boxes: np.ndarray  # (n, 4) int32 x0, y0, x1, y1 (end exclusive), inside the image
    scores: np.ndarray  # (n,) float32
    labels: np.ndarray  # (n,) int32 COCO category ids
    masks: list[np.ndarray]  # n uint8 probability crops, 0..255
    errors: np.ndarray = None  # type: ignore[assignment]  # (n,) float32; None: all 0

    def __post_init__(self) -> None:
        if self.errors is None:
            self.errors = np.zeros(len(self.scores), np.float32)
        elif len(self.errors) != len(self.scores):
            raise ValueError(f"{len(self.errors)} errors for {len(self.scores)} instances")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> ImagePredictions:
        return cls(
            shape, np.zeros((0, 4), np.int32), np.zeros(0, np.float32), np.zeros(0, np.int32), []
        )


def quantise(prob: np.ndarray) -> np.ndarray:
    """Float probabilities in [0, 1] -> uint8 0..255 (rounded)."""
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)


def save_predictions(path: Path | str, images: dict[str, ImagePredictions]) -> None:
    """Write a split's predictions (image id -> predictions) to one .npz, atomically."""
    ids = list(images)
    preds = [images[i] for i in ids]
    for image_id, p in zip(ids, preds):
        sizes = (p.boxes[:, 3] - p.boxes[:, 1]) * (p.boxes[:, 2] - p.boxes[:, 0])
        if len(p.masks) != len(p) or any(m.size != s for m, s in zip(p.masks, sizes)):
            raise ValueError(f"{image_id}: every mask must be cropped to its box")
    counts = np.array([len(p) for p in preds], np.int64)
    masks = [m.ravel() for p in preds for m in p.masks]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            ids=np.array(ids, dtype=str),
            shapes=np.array([p.shape for p in preds], np.int64).reshape(-1, 2),
            offsets=np.concatenate([[0], np.cumsum(counts)]),
            boxes=np.concatenate([p.boxes for p in preds]).astype(np.int32).reshape(-1, 4)
            if preds
            else np.zeros((0, 4), np.int32),
            scores=np.concatenate([p.scores for p in preds]).astype(np.float32)
            if preds
            else np.zeros(0, np.float32),
            labels=np.concatenate([p.labels for p in preds]).astype(np.int32)
            if preds
            else np.zeros(0, np.int32),
            errors=np.concatenate([p.errors for p in preds]).astype(np.float32)
            if preds
            else np.zeros(0, np.float32),
            masks=np.concatenate(masks).astype(np.uint8) if masks else np.zeros(0, np.uint8),
        )


def load_predictions(path: Path | str) -> dict[str, ImagePredictions]:
    """Read predictions written by `save_predictions`."""
    path = Path(path)
    if not path.is_file():
        raise CellpipeError(f"missing predictions file: {path}")
    try:
        data = np.load(path)
        ids, shapes, offsets = data["ids"], data["shapes"], data["offsets"]
        boxes, scores, labels, flat = data["boxes"], data["scores"], data["labels"], data["masks"]
        errors = data["errors"] if "errors" in data else np.zeros(len(scores), np.float32)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CellpipeError(f"{path}: not a cellpipe predictions file ({full_message(e)})") from e
    sizes = (boxes[:, 3] - boxes[:, 1]).astype(np.int64) * (boxes[:, 2] - boxes[:, 0])
    mask_offsets = np.concatenate([[0], np.cumsum(sizes)])
    out = {}
    for k, image_id in enumerate(ids.tolist()):
        lo, hi = offsets[k], offsets[k + 1]
        crops = [
            flat[mask_offsets[i] : mask_offsets[i + 1]].reshape(
                boxes[i, 3] - boxes[i, 1], boxes[i, 2] - boxes[i, 0]
            )
            for i in range(lo, hi)
        ]
        out[image_id] = ImagePredictions(
            (int(shapes[k, 0]), int(shapes[k, 1])),
            boxes[lo:hi],
            scores[lo:hi],
            labels[lo:hi],
            crops,
            errors[lo:hi],
        )
    return out
