"""Model families behind one interface: what training, validation, prediction, TTA, ensembling,
tuning and the Kaggle kernels call, and nothing else.

A family is a subclass of `CellModel` (an `nn.Module`) in its module `pipeline/models/<name>.py`,
registered with `@register`, configured by the block `model.<name>` of `pipeline/config/schema.py`
(which also holds its postprocessing defaults, `model.<name>.thresholds`):

- `Family(block, classes, scale)`: build from the config block and the class names.
- `Family.target_maker(block)`: a picklable function turning an augmented training sample
  (`SampleInstances`: the image's instances as box crops) into the family's training targets; it
  runs in the data-loader workers (Mask R-CNN: boxes and full masks; a flow U-Net: flow fields).
- `model(images, targets)` in train mode: a dict of named losses.
- `model.predict(images)` in eval mode: one `ImagePredictions` per image (box-cropped instances
  with scores and model labels, in the image's own pixels); a family whose natural output is a
  label image converts to that. TTA, fold and family ensembles, tuning and overlap removal all
  work on these.
- `Family.combine(models)`: the models inference runs for several checkpoints of the family (the
  folds); by default each alone, their instances merged by mask voting (the flow families,
  `flow_unet` and `cellpose`, return one model averaging their maps: models/flow_maps.py).
- `diameter`: px, the median cell diameter each training image is scaled to (None: none, the
  default); `learn_training_set(d, samples)`: told the training images' median cell diameter,
  and the images with their labels, once a run's weights are set (cellpose keeps the diameter to
  size test images, and a few images with their cells' polarity to invert them; ignored by
  default).
- `class_heads`: state-dict key prefixes whose shapes follow the number of classes (re-initialised
  when weights come from other classes); `import_state`: renames a foreign state dict (detectron2's
  for `maskrcnn`, cellpose's and scellseg's for `cellpose`).
- `config_class`: the type of its config block (a `FamilyConfig`, whose `trainable = False` marks
  a family without weights, a classical method: it is built from its config and predicts, and
  every training stage skips it).

`cellpipe models` lists the registered families. Adding one: a module here and a config block.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from pipeline.config import ModelConfig
from pipeline.core.errors import CellpipeError
from pipeline.models.base import (
    FAMILIES,
    CellModel,
    Registry,
    SampleInstances,
    image_to_tensor,
    register,
)

__all__ = [
    "FAMILIES",
    "CellModel",
    "SampleInstances",
    "Registry",
    "build_model",
    "families",
    "family_class",
    "image_to_tensor",
    "register",
]


def family_class(name: str) -> type[CellModel]:
    """The registered class of family `name` (its module is imported on first use)."""
    if name not in FAMILIES:
        if name not in ModelConfig.families():
            known = ", ".join(ModelConfig.families())
            raise CellpipeError(f"unknown model family {name!r}; known: {known}")
        importlib.import_module(f"pipeline.models.{name}")
    return FAMILIES[name]


def families() -> dict[str, type[CellModel]]:
    """Every family with a config block, by name."""
    return {name: family_class(name) for name in ModelConfig.families()}


def build_model(cfg: ModelConfig, classes: Sequence[str], family: str | None = None) -> CellModel:
    """Family `family` (default `cfg.family`) built from its block for `classes`."""
    name = family or cfg.family
    return family_class(name)(cfg.block(name), classes, cfg.scale)
