"""Training records from a COCO file: class mapping, checked annotations, packing, mask decoding.

Every image's annotations are checked once and packed into one byte buffer (as detectron2 does: no
per-record Python objects for data-loader workers to copy-on-touch); a mask is decoded only when
its image is drawn, straight into its own box (a numba COCO-RLE decoder).

Degenerate input: empty annotations and images left without instances are dropped with a count
(`notes_line`); a missing image file is an error up front.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
from pycocotools import mask as mask_utils

from pipeline.core.errors import CellpipeError
from pipeline.core.instances import median_diameter


@dataclass(frozen=True)
class ClassMapping:
    """Model classes (label k is classes[k - 1]) and the COCO category ids behind each label."""

    classes: list[str]
    label_of: dict[int, int]  # COCO category id -> model label; absent ids are not trained on

    @classmethod
    def from_categories(
        cls,
        categories: Sequence[dict[str, Any]],
        keep: Sequence[str] = (),
        class_map: dict[str, str] | None = None,
        default_class: str | None = None,
    ) -> ClassMapping:
        """Categories (optionally only `keep`) renamed by `class_map`, others to `default_class`.

        Classes are sorted by name; with no renaming they follow the categories' names.
        """
        names = {int(c["id"]): str(c["name"]) for c in categories}
        unknown = sorted(set(keep) - set(names.values()))
        if unknown:
            raise CellpipeError(
                f"categories {unknown} are not in the COCO file (it has {sorted(names.values())})"
            )
        class_map = class_map or {}
        target = {
            cid: class_map.get(name, default_class or name)
            for cid, name in names.items()
            if not keep or name in keep
        }
        classes = sorted(set(target.values()))
        if not classes:
            raise CellpipeError("no category to train on")
        return cls(classes, {cid: classes.index(t) + 1 for cid, t in target.items()})


@dataclass(frozen=True)
class Record:
    """One image and its usable annotations (segmentations as stored in the COCO file)."""

    path: Path
    height: int
    width: int
    segmentations: list[Any]
    labels: np.ndarray  # (n,) int64 model labels
    boxes: np.ndarray  # (n, 4) float x0, y0, x1, y1 from the COCO bbox
    diameter: float  # px: the median instance diameter, 2 sqrt(area / pi) (cellpose's measure)


def _compressed(segmentation: Any, height: int, width: int) -> dict:
    """A compressed COCO RLE of a polygon, uncompressed-RLE or compressed-RLE segmentation."""
    if isinstance(segmentation, list):  # polygons of one instance
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


@numba.njit(cache=True, nogil=True)
def _decode_into(text, height, x0, y0, out):  # pragma: no cover - compiled
    """Paint the foreground runs of a compressed COCO RLE string that fall inside `out`."""
    h, w = out.shape
    counts = np.empty(len(text), np.int64)
    m, p, pos = 0, 0, 0
    while p < len(text):  # pycocotools' rleFrString: 5-bit groups, deltas from counts[m - 2]
        x, k, more = 0, 0, True
        while more:
            c = np.int64(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = (c & 0x20) != 0
            p += 1
            k += 1
            if not more and (c & 0x10) != 0:
                x |= np.int64(-1) << (5 * k)
        if m > 2:
            x += counts[m - 2]
        counts[m] = x
        if m % 2 == 1:  # a foreground run, column-major
            for q in range(pos, pos + x):
                col = q // height
                if col >= x0 + w:
                    return
                row = q - col * height
                if col >= x0 and y0 <= row < y0 + h:
                    out[row - y0, col - x0] = True
        pos += x
        m += 1


def decode_crop(segmentation: Any, height: int, width: int, box: Sequence[int]) -> np.ndarray:
    """The part of one instance's mask inside box [x0, y0, x1, y1) as a bool array."""
    rle = _compressed(segmentation, height, width)
    counts = rle["counts"]
    text = np.frombuffer(counts.encode() if isinstance(counts, str) else counts, np.uint8)
    x0, y0, x1, y1 = (int(v) for v in box)
    out = np.zeros((y1 - y0, x1 - x0), np.bool_)
    _decode_into(text, height, x0, y0, out)
    return out


def label_image(record: Record) -> np.ndarray:
    """int32 ground-truth label image; overlapping pixels go to the later annotation."""
    labels = np.zeros((record.height, record.width), np.int32)
    for k, box in enumerate(pixel_boxes(record.boxes, record.height, record.width)):
        crop = decode_crop(record.segmentations[k], record.height, record.width, box)
        labels[box[1] : box[3], box[0] : box[2]][crop] = k + 1
    return labels


def pixel_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Float COCO-derived boxes -> int pixel boxes [x0, y0, x1, y1) covering them, in the image."""
    out = np.empty((len(boxes), 4), np.int64)
    out[:, :2] = np.floor(boxes[:, :2])
    out[:, 2:] = np.ceil(boxes[:, 2:])
    np.clip(out[:, 0::2], 0, width, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, height, out=out[:, 1::2])
    return out


def load_records(
    coco: dict[str, Any],
    root: Path,
    mapping: ClassMapping,
    image_ids: Sequence[int] | None = None,
    keep_empty: bool = False,
) -> tuple[list[Record], dict[str, int]]:
    """Usable records of a COCO file and counts of what was dropped (for one warning line).

    Annotations of unmapped categories or with an empty mask are dropped; images then left
    without instances are dropped unless they never had any and `keep_empty` (validation).
    """
    by_image: dict[int, list[dict]] = {}
    for ann in coco.get("annotations", []):
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    wanted = None if image_ids is None else set(image_ids)
    records, notes = [], {"empty annotations": 0, "images without instances": 0}
    missing = []
    for image in coco["images"]:
        if wanted is not None and int(image["id"]) not in wanted:
            continue
        anns = [
            a for a in by_image.get(int(image["id"]), []) if a["category_id"] in mapping.label_of
        ]
        usable = [a for a in anns if _nonempty(a)]
        notes["empty annotations"] += len(anns) - len(usable)
        if not usable and (by_image.get(int(image["id"])) or not keep_empty):
            notes["images without instances"] += 1
            continue
        path = root / image["file_name"]
        if not path.is_file():
            missing.append(path)
            continue
        height, width = int(image["height"]), int(image["width"])
        boxes = np.array([a["bbox"] for a in usable], np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        areas = [a.get("area") or float(np.prod(a["bbox"][2:])) for a in usable]
        records.append(
            Record(
                path,
                height,
                width,
                [a["segmentation"] for a in usable],
                np.array([mapping.label_of[a["category_id"]] for a in usable], np.int64),
                boxes,
                median_diameter(np.asarray(areas, np.float64)),
            )
        )
    if missing:
        raise CellpipeError(f"{len(missing)} image files are missing, e.g. {missing[0]}")
    if not records:
        raise CellpipeError(f"no image with instances of {mapping.classes} to use")
    return records, notes


def _nonempty(ann: dict[str, Any]) -> bool:
    seg = ann.get("segmentation")
    if not seg or "bbox" not in ann:
        return False
    if "area" in ann:
        return float(ann["area"]) > 0
    return ann["bbox"][2] > 0 and ann["bbox"][3] > 0


class PackedRecords:
    """Records pickled into one numpy byte buffer: workers share it without copying objects."""

    def __init__(self, records: Sequence[Record]):
        blobs = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in records]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> Record:
        start = int(self._ends[index - 1]) if index > 0 else 0
        return pickle.loads(self._buffer[start : int(self._ends[index])].tobytes())


def notes_line(notes: dict[str, int]) -> str:
    """`dropped 3 empty annotations, 1 images without instances` (or an empty string)."""
    parts = [f"{n} {what}" for what, n in notes.items() if n]
    return f"dropped {', '.join(parts)}" if parts else ""
