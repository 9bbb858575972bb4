"""Training and validation data from a COCO file: lazy masks, augmentation, sampling, collation.

Every image's annotations are checked once, packed into one byte buffer (as detectron2 does: no
per-record Python objects for data-loader workers to copy-on-touch), and decoded only when the
image is drawn: each mask straight into its own box (a numba COCO-RLE decoder), then scaled,
cropped, flipped and rotated as a box-sized crop; the model family turns these crops into its
targets at the end (full-size masks for Mask R-CNN, flow fields for a flow U-Net). Boxes are
recomputed from the transformed masks, so they always agree. Each sample is augmented from its own
random stream, keyed by (seed, position in the sample stream): the same run on any number of
workers, resumed or not, sees the same data.

Degenerate input: empty annotations and images left without instances are dropped with a count
(`CocoInstances.notes`); a missing image file is an error up front; an unreadable image file is
skipped during training with a warning naming it.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset, Sampler

from pipeline.config import AugmentConfig
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import read_image
from pipeline.core.instances import median_diameter
from pipeline.models.base import Instances, TargetMaker, image_to_tensor


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


@dataclass(frozen=True)
class Geometry:
    """One sample's crop of the source image and its output size."""

    y0: int
    x0: int
    y1: int
    x1: int
    out_h: int
    out_w: int


def window_start(length: int, size: int, rng: np.random.Generator, point: float | None) -> int:
    """A random start of a window of `size` px inside `length` px, containing `point` if given."""
    if point is None:
        return int(rng.integers(0, length - size + 1))
    inside = min(max(math.floor(point), 0), length - 1)
    low = min(max(0, inside - size + 1), length - size)
    return int(rng.integers(low, max(low, min(inside, length - size)) + 1))


def plan_geometry(
    height: int,
    width: int,
    scale: float,
    augment: AugmentConfig | None,
    rng: np.random.Generator,
    focus: tuple[float, float] | None = None,
) -> Geometry:
    """Scale (with jitter) then random crop, expressed as a source window and an output size; the
    crop contains the source point `focus` (y, x) if given."""
    if augment is not None:
        lo, hi = augment.scale_range
        scale *= math.exp(rng.uniform(math.log(lo), math.log(hi)))
    out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
    crop_h, crop_w = (out_h, out_w) if augment is None or augment.crop is None else augment.crop
    crop_h, crop_w = min(crop_h, out_h), min(crop_w, out_w)
    sy, sx = height / out_h, width / out_w
    oy = window_start(out_h, crop_h, rng, None if focus is None else focus[0] / sy)
    ox = window_start(out_w, crop_w, rng, None if focus is None else focus[1] / sx)
    y0, x0 = math.floor(oy * sy), math.floor(ox * sx)
    y1 = min(height, max(y0 + 1, round((oy + crop_h) * sy)))
    x1 = min(width, max(x0 + 1, round((ox + crop_w) * sx)))
    return Geometry(y0, x0, y1, x1, crop_h, crop_w)


def sample_positions(start: int, stop: int, size: int) -> np.ndarray:
    """Source pixel of each of `size` output pixels resampling [start, stop) (centre-aligned)."""
    step = (stop - start) / size
    return start + np.minimum(((np.arange(size) + 0.5) * step).astype(np.int64), stop - start - 1)


def dihedral_ops(augment: AugmentConfig, rng: np.random.Generator) -> list[str]:
    """Random flips and 90-degree rotation as a list of t(ranspose), h(flip), v(flip) steps."""
    ops = [op for op, p in (("h", augment.hflip), ("v", augment.vflip)) if rng.random() < p]
    if rng.random() < augment.rot90:
        k = int(rng.integers(1, 4))  # np.rot90 by k: 1 = t then v, 2 = h then v, 3 = t then h
        ops += {1: ["t", "v"], 2: ["h", "v"], 3: ["t", "h"]}[k]
    return ops


def _apply_op(op: str, crop: np.ndarray, box: list[int], height: int, width: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    if op == "t":
        box[:] = [y0, x0, y1, x1]
        return crop.T
    if op == "h":
        box[0], box[2] = width - x1, width - x0
        return crop[:, ::-1]
    box[1], box[3] = height - y1, height - y0
    return crop[::-1]


class CocoInstances(Dataset):
    """Training samples: (image (C, H, W) float, the family's targets) or None if unreadable.

    Indexed by (record index, seed entropy) pairs from `TrainSampler`; `augment=None` gives the
    image at `scale` without randomness. With a `diameter`, each image is first scaled so its
    median instance diameter becomes that many pixels (cellpose's size normalisation). The
    augmented instances (`Instances`, box crops) become targets through the family's
    `make_targets`.
    """

    def __init__(
        self,
        records: Sequence[Record],
        make_targets: TargetMaker,
        scale: float = 1.0,
        augment: AugmentConfig | None = None,
        diameter: float | None = None,
    ):
        self.records = PackedRecords(records)
        self.make_targets = make_targets
        self.scale = scale
        self.augment = augment
        self.diameter = diameter

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, Sequence[int]]) -> tuple[torch.Tensor, dict] | None:
        index, entropy = key
        record = self.records[index]
        rng = np.random.default_rng(list(entropy))
        try:
            image = read_image(record.path)
        except CellpipeError as e:
            warnings.warn(f"skipping an unreadable image: {e}", stacklevel=1)
            return None
        if image.shape[:2] != (record.height, record.width):
            warnings.warn(
                f"skipping {record.path}: {image.shape[:2]} pixels, the COCO file says "
                f"{(record.height, record.width)}",
                stacklevel=1,
            )
            return None
        scale = self.scale
        if self.diameter and record.diameter > 0:
            scale *= self.diameter / record.diameter
        g = plan_geometry(
            record.height, record.width, scale, self.augment, rng, self._focus(record, rng)
        )
        tensor = image_to_tensor(image)[:, g.y0 : g.y1, g.x0 : g.x1]
        if (g.out_h, g.out_w) != tuple(tensor.shape[1:]):
            shrink = g.out_h < tensor.shape[1]
            tensor = F.interpolate(
                tensor[None], (g.out_h, g.out_w), mode="bilinear", antialias=shrink
            )[0]
        ops = dihedral_ops(self.augment, rng) if self.augment is not None else []
        crops, boxes, labels = self._instances(record, g, ops)
        for op in ops:
            tensor = tensor.transpose(1, 2) if op == "t" else tensor.flip(2 if op == "h" else 1)
        height, width = tensor.shape[1:]
        if self.augment is not None:
            tensor = self._photometric(tensor, rng)
        instances = Instances(
            (int(height), int(width)),
            np.array(boxes, np.int64).reshape(-1, 4),
            np.array(labels, np.int64),
            crops,
        )
        return tensor.contiguous(), self.make_targets(instances)

    def _focus(self, record: Record, rng: np.random.Generator) -> tuple[float, float] | None:
        """The centre (y, x) of a random instance the crop must contain, with probability
        `augment.crop_on_instance` (foreground oversampling); None: the crop goes anywhere."""
        a = self.augment
        if a is None or a.crop is None or not a.crop_on_instance or not len(record.boxes):
            return None
        if rng.random() >= a.crop_on_instance:
            return None
        x0, y0, x1, y1 = record.boxes[rng.integers(len(record.boxes))]
        return (y0 + y1) / 2, (x0 + x1) / 2

    def _instances(
        self, record: Record, g: Geometry, ops: list[str]
    ) -> tuple[list[np.ndarray], list[list[int]], list[int]]:
        """Each instance's mask in the sample: a tight crop, its box [x0, y0, x1, y1), its label."""
        rows = sample_positions(g.y0, g.y1, g.out_h)
        cols = sample_positions(g.x0, g.x1, g.out_w)
        src = pixel_boxes(record.boxes, record.height, record.width)
        src[:, 0::2] = np.clip(src[:, 0::2], g.x0, g.x1)
        src[:, 1::2] = np.clip(src[:, 1::2], g.y0, g.y1)
        crops, boxes, labels = [], [], []
        for i in np.flatnonzero((src[:, 2] > src[:, 0]) & (src[:, 3] > src[:, 1])):
            x0, y0, x1, y1 = src[i]
            r0, r1 = np.searchsorted(rows, [y0, y1])
            c0, c1 = np.searchsorted(cols, [x0, x1])
            if r1 <= r0 or c1 <= c0:
                continue
            crop = decode_crop(record.segmentations[i], record.height, record.width, src[i])
            crop = crop[np.ix_(rows[r0:r1] - y0, cols[c0:c1] - x0)]
            box = [int(c0), int(r0), int(c1), int(r1)]
            height, width = g.out_h, g.out_w
            for op in ops:
                crop = _apply_op(op, crop, box, height, width)
                if op == "t":
                    height, width = width, height
            filled_rows, filled_cols = np.flatnonzero(crop.any(1)), np.flatnonzero(crop.any(0))
            if not len(filled_rows):
                continue  # resampling missed a sliver at the crop edge
            ra, rb, ca, cb = (
                filled_rows[0],
                filled_rows[-1] + 1,
                filled_cols[0],
                filled_cols[-1] + 1,
            )
            crops.append(crop[ra:rb, ca:cb])
            boxes.append([box[0] + int(ca), box[1] + int(ra), box[0] + int(cb), box[1] + int(rb)])
            labels.append(int(record.labels[i]))
        return crops, boxes, labels

    def _photometric(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        a = self.augment
        assert a is not None
        contrast = rng.uniform(1 - a.contrast, 1 + a.contrast)
        brightness = rng.uniform(-a.brightness, a.brightness)
        mean = image.mean()
        return ((image - mean) * contrast + mean + brightness).clamp_(0, 1)


class TrainSampler(Sampler):
    """An endless stream of (record index, seed entropy) for one process of `world_size`.

    Position p of the global stream (all processes) is image `perm(epoch)[p % n]` with
    epoch = p // n, permutations seeded by (seed, epoch); process `rank` takes every
    `world_size`-th position from `start + rank`. Resuming at iteration i starts at
    i x batch x world_size: the stream continues exactly where it stopped.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        self.size, self.seed = size, seed
        self.rank, self.world_size, self.start = rank, world_size, start

    def __iter__(self) -> Iterator[tuple[int, tuple[int, int]]]:
        position = self.start + self.rank
        epoch, order = -1, np.arange(0)
        while True:
            if position // self.size != epoch:
                epoch = position // self.size
                order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            yield int(order[position % self.size]), (self.seed, position)
            position += self.world_size


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict], int]:
    """Images, targets and the number of unreadable images skipped from this batch."""
    samples = [b for b in batch if b is not None]
    return [s[0] for s in samples], [s[1] for s in samples], len(batch) - len(samples)


class CocoImages(Dataset):
    """Validation images: (image (C, H, W) float at full size, int32 label image) or None."""

    def __init__(self, records: Sequence[Record]):
        self.records = PackedRecords(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, np.ndarray] | None:
        record = self.records[index]
        try:
            image = read_image(record.path)
        except CellpipeError as e:
            warnings.warn(f"skipping an unreadable image: {e}", stacklevel=1)
            return None
        return image_to_tensor(image), label_image(record)
