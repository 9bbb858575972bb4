"""Training and validation datasets over packed COCO records, the sample stream, collation.

Each training sample is drawn as (record index, seed entropy) and augmented from its own random
stream, keyed by (seed, position in the sample stream): the same run on any number of workers,
resumed or not, sees the same data. The augmented instances (box crops, `training/augment.py`)
become the model family's targets at the end (full-size masks for Mask R-CNN, flow fields for a
flow U-Net). An unreadable image file is skipped during training with a warning naming it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from pipeline.config import AugmentConfig
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import read_image
from pipeline.models.base import SampleInstances, TargetMaker, image_to_tensor
from pipeline.training.augment import (
    dihedral_ops,
    instance_crops,
    photometric,
    plan_geometry,
    sample_image,
)
from pipeline.training.records import PackedRecords, Record, label_image


class CocoInstances(Dataset):
    """Training samples: (image (C, H, W) float, the family's targets) or None if unreadable.

    Indexed by (record index, seed entropy) pairs from `TrainSampler`; `augment=None` gives the
    image at `scale` without randomness. With a `diameter`, each image is first scaled so its
    median instance diameter becomes that many pixels (cellpose's size normalisation). The
    augmented instances (`SampleInstances`, box crops) become targets through the family's
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
        ops = dihedral_ops(self.augment, rng) if self.augment is not None else []
        tensor = sample_image(image_to_tensor(image), g, ops)
        crops, boxes, labels = instance_crops(record, g, ops)
        height, width = tensor.shape[1:]
        if self.augment is not None:
            tensor = photometric(tensor, self.augment, rng)
        instances = SampleInstances(
            (int(height), int(width)),
            np.array(boxes, np.int64).reshape(-1, 4),
            np.array(labels, np.int64),
            crops,
        )
        return tensor.contiguous(), self.make_targets(instances)


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
