"""The model interface every family implements, and the registry of families.

See the package docstring (`pipeline/models/__init__.py`) for what each method must do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from pipeline.config import FamilyConfig, ModelConfig
from pipeline.core.errors import CellpipeError
from pipeline.core.predictions import ImagePredictions


@dataclass
class SampleInstances:
    """An augmented training sample's instances, each mask cropped to its own box."""

    shape: tuple[int, int]  # (height, width) of the sample image
    boxes: np.ndarray  # (n, 4) int64 x0, y0, x1, y1 (end exclusive)
    labels: np.ndarray  # (n,) int64 model labels 1..C
    crops: list[np.ndarray]  # n bool masks, crops[i].shape == (y1 - y0, x1 - x0)

    def label_image(self) -> np.ndarray:
        """int32 label image (instance i + 1); where instances overlap, the later one wins."""
        labels = np.zeros(self.shape, np.int32)
        for k, (crop, (x0, y0, x1, y1)) in enumerate(zip(self.crops, self.boxes)):
            labels[y0:y1, x0:x1][crop] = k + 1
        return labels


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """An image as read (grey, RGB or RGBA; 8/16-bit or float) -> float (C, H, W) in [0, 1].

    Grey stays one channel (the models' normalisation broadcasts it as they need).
    """
    if image.ndim == 3:
        image = image[..., :3] if image.shape[2] >= 3 else image[..., :1]
    if np.issubdtype(image.dtype, np.integer):
        scaled = image.astype(np.float32) / np.iinfo(image.dtype).max
    else:
        scaled = np.clip(image.astype(np.float32), 0, 1)
    tensor = torch.from_numpy(np.ascontiguousarray(scaled))
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


TargetMaker = Callable[[SampleInstances], dict[str, torch.Tensor]]
# training images (C, H, W) in [0, 1] with their int32 label images; None: unreadable
TrainingImages = Sequence[tuple[torch.Tensor, np.ndarray] | None]


class CellModel(nn.Module):
    """A model family, built from its config block and class names (label k: classes[k - 1])."""

    family: ClassVar[str] = ""  # registry name = module name = config block `model.<family>`
    config_class: ClassVar[type[FamilyConfig]]  # the type of that block (which says `trainable`)
    class_heads: ClassVar[tuple[str, ...]] = ()  # state-dict prefixes shaped by the classes

    def __init__(self, cfg: Any, classes: Sequence[str], scale: float = 1.0):
        super().__init__()
        if not classes:
            raise CellpipeError("a model needs at least one class")
        self.cfg = cfg
        self.classes = list(classes)
        self.scale = scale  # images are resized by this before the network sees them

    @property
    def diameter(self) -> float | None:
        """px: the median cell diameter each training image is scaled to (None: `scale` only)."""
        return None

    def learn_training_set(self, diameter: float, samples: TrainingImages) -> None:
        """Told, once a run's weights are set, the median cell diameter of its training images
        and the images with their label images, read on demand (a family that sizes or inverts
        test images by them keeps what it needs in its state); by default ignored."""

    @staticmethod
    def target_maker(cfg: Any) -> TargetMaker:
        """A picklable function from a sample's `SampleInstances` to this family's targets."""
        raise NotImplementedError

    def forward(
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Train mode: the named losses of a batch (their sum is minimised)."""
        raise NotImplementedError

    def predict(self, images: Sequence[torch.Tensor]) -> list[ImagePredictions]:
        """Eval mode: box-cropped instances of images (C, H, W) in [0, 1], in their own pixels,
        labels 1..C (model classes), scores in [0, 1] (higher: more certain)."""
        raise NotImplementedError

    @classmethod
    def combine(cls, models: Sequence[CellModel]) -> list[CellModel]:
        """The models inference runs for several checkpoints of this family (the folds): by
        default each alone, their instances merged by mask voting; a family may return one model
        that averages their outputs instead."""
        return list(models)

    def import_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A foreign state dict (another framework's names) renamed to this model's keys."""
        return state


FAMILIES: dict[str, type[CellModel]] = {}


def register(cls: type[CellModel]) -> type[CellModel]:
    """Class decorator adding a family to the registry under `cls.family`, whose config block
    `model.<family>` must be of its `config_class`."""
    if not cls.family:
        raise ValueError(f"{cls.__name__} has no family name")
    field = ModelConfig.model_fields.get(cls.family)
    if field is None or field.annotation is not cls.config_class:
        raise ValueError(f"family {cls.family!r}: model.{cls.family} is no {cls.config_class}")
    if cls.family in FAMILIES:
        raise ValueError(f"family {cls.family!r} is registered twice")
    FAMILIES[cls.family] = cls
    return cls


class Registry(dict):
    """Name -> builder inside a family (backbones...); unknown names fail with the known ones."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[Callable], Callable]:
        def add(builder: Callable) -> Callable:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = builder
            return builder

        return add

    def lookup(self, name: str) -> Callable:
        """The builder registered as `name` (a one-line error naming the known ones if none)."""
        if name not in self:
            raise CellpipeError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}")
        return self[name]
