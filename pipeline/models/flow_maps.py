"""What the flow families (`flow_unet`, `cellpose`) share: per-pixel maps, their training targets
and losses, map-level TTA, fold models averaged into one, and instances recovered from the maps.

Maps are float32 (3 + C, H, W): a cell-probability logit, FLOW_SCALE x the flow (dy, dx) toward
the instance's centre (pipeline.core.flows), one logit per class. A family subclasses
`FlowFamily` and says how its network makes them: `batch_maps` (a training batch) and
`image_maps` (one image seen at a scale, in its own pixels). Masks are recovered permissively (a
low foreground threshold, no flow-error cut) so that `tune` can search each family's own
postprocessing per class: `mask` (the cell probability inside an instance), `max_error` (its flow
error), `min_area`, and `score` (its mean probability).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import softmax
from torch import nn

from pipeline.config import FlowConfig
from pipeline.core.ensemble import VIEWS
from pipeline.core.errors import CellpipeError
from pipeline.core.flows import FLOW_SCALE, flow_error, label_flows, masks_from_flows
from pipeline.core.instances import instance_boxes_and_crops
from pipeline.core.predictions import ImagePredictions, quantise
from pipeline.models.base import CellModel, SampleInstances
from pipeline.models.inference import view_tensor


def normalise(images: torch.Tensor, low: float = 0.01, high: float = 0.99) -> torch.Tensor:
    """(B, C, H, W) -> grey (B, 1, H, W) scaled so its `low` / `high` quantiles map to 0 / 1
    (cellpose's normalisation: robust to each image's exposure and bit depth)."""
    grey = images.float().mean(dim=1, keepdim=True)
    flat = grey.flatten(1)
    lo = torch.quantile(flat, low, dim=1).view(-1, 1, 1, 1)
    hi = torch.quantile(flat, high, dim=1).view(-1, 1, 1, 1)
    return (grey - lo) / (hi - lo).clamp_min(1e-6)


def pad_to(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`tensor` (..., h, w) padded with zeros at the bottom and right to (..., height, width)."""
    return F.pad(tensor, (0, width - tensor.shape[-1], 0, height - tensor.shape[-2]))


def padded_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """The smallest size at least (height, width) that `stride` divides."""
    return -(-height // stride) * stride, -(-width // stride) * stride


def logit(p: float) -> float:
    """log(p / (1 - p)), p kept inside (0, 1)."""
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def flow_targets(instances: SampleInstances) -> dict[str, torch.Tensor]:
    """Training targets of a sample: instance labels (int64: the class of the pixel's instance,
    0 background) and FLOW_SCALE x the unit flows toward each instance's centre."""
    cells = instances.label_image()
    classes = np.concatenate([[0], instances.labels]).astype(np.int64)[cells]
    return {
        "classes": torch.from_numpy(classes),
        "flows": torch.from_numpy(FLOW_SCALE * label_flows(cells)),
    }


def flow_losses(
    maps: torch.Tensor, images: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Losses of float32 maps (B, 3 + C, H, W) of a batch whose image k fills the top left of
    map k: cell-probability cross-entropy, flow squared error (halved, as cellpose's), and with
    several classes their cross-entropy inside cells; each a mean over the images' pixels."""
    height, width = maps.shape[-2:]
    ones = [torch.ones(im.shape[-2:], device=maps.device) for im in images]
    valid = torch.stack([pad_to(one, height, width) for one in ones])
    classes = torch.stack([pad_to(t["classes"], height, width) for t in targets])
    flows = torch.stack([pad_to(t["flows"], height, width) for t in targets])
    n_valid = valid.sum().clamp_min(1)
    cell = (classes > 0).float()
    cell_loss = F.binary_cross_entropy_with_logits(maps[:, 0], cell, reduction="none")
    flow_loss = ((maps[:, 1:3] - flows) ** 2).sum(dim=1) / 2
    losses = {
        "loss_cellprob": (cell_loss * valid).sum() / n_valid,
        "loss_flows": (flow_loss * valid).sum() / n_valid,
    }
    if maps.shape[1] > 4:  # several classes
        inside = (classes > 0) & (valid > 0)
        class_loss = F.cross_entropy(maps[:, 3:], (classes - 1).clamp_min(0), reduction="none")
        losses["loss_classes"] = (class_loss * inside).sum() / inside.sum().clamp_min(1)
    return losses


def unview_maps(maps: torch.Tensor, view: str) -> torch.Tensor:
    """Maps (3 + C, H, W) made on `view` of an image, in the image's pixels and directions: a
    flip negates the flow component along its axis, a transpose swaps dy and dx."""
    transpose, horizontal, vertical = VIEWS[view]
    dims = [d for d, flip in ((-1, horizontal), (-2, vertical)) if flip]
    maps = maps.flip(dims) if dims else maps.clone()
    if horizontal:
        maps[2] = -maps[2]
    if vertical:
        maps[1] = -maps[1]
    if transpose:
        maps = maps.transpose(-1, -2)[[0, 2, 1, *range(3, maps.shape[0])]]
    return maps


def maps_labels(maps: np.ndarray, cfg: FlowConfig) -> np.ndarray:
    """int32 instance labels of maps (3 + C, H, W): the flows followed from every pixel above
    `cfg.foreground`, no flow-error cut."""
    return masks_from_flows(
        maps[0],
        np.ascontiguousarray(maps[1:3]),
        cellprob_threshold=logit(cfg.foreground),
        flow_threshold=0.0,
        min_size=cfg.min_size,
        n_iter=cfg.n_iter,
    )


def maps_to_predictions(maps: np.ndarray, cfg: FlowConfig) -> ImagePredictions:
    """Box-cropped instances of maps (3 + C, H, W): masks by `maps_labels`, crops holding the cell
    probability inside each mask, scores its mean, errors its flow error, labels the class with
    the most probability inside it."""
    labels = maps_labels(maps, cfg)
    flows = np.ascontiguousarray(maps[1:3])
    prob = 1 / (1 + np.exp(-maps[0]))
    class_prob = softmax(maps[3:], axis=0)
    ids, boxes, crops = instance_boxes_and_crops(labels)
    errors = flow_error(labels, flows)[ids - 1] if len(ids) else np.zeros(0)
    masks, scores, classes = [], [], []
    for (x0, y0, x1, y1), crop in zip(boxes, crops):
        inside = prob[y0:y1, x0:x1] * crop
        masks.append(quantise(inside))
        scores.append(float(inside.sum() / max(crop.sum(), 1)))
        votes = (class_prob[:, y0:y1, x0:x1] * crop).sum(axis=(1, 2))
        classes.append(int(np.argmax(votes)) + 1)
    return ImagePredictions(
        labels.shape,
        np.asarray(boxes, np.int32).reshape(-1, 4),
        np.array(scores, np.float32),
        np.array(classes, np.int32),
        masks,
        errors=np.nan_to_num(np.asarray(errors, np.float32), nan=4.0),  # 4: the worst
    )


def mean_maps(
    models: Sequence[FlowFamily], image: torch.Tensor, scale: float, views: Sequence[str]
) -> np.ndarray:
    """float32 mean maps (3 + C, H, W) of every model under every view of one image, summed as
    they come (one map set in memory besides the sum, however many folds and views)."""
    maps = (
        unview_maps(model.image_maps(view_tensor(image, view), scale), view)
        for model in models
        for view in views
    )
    return (sum(maps) / (len(models) * len(views))).cpu().numpy()


def predict_maps(
    models: Sequence[FlowFamily], images: Sequence[torch.Tensor], scale: float, cfg: FlowConfig
) -> list[ImagePredictions]:
    """Per image: masks from the mean maps of `models` under the views of `cfg.map_tta`, at the
    scale the family chooses for the image, shown as it chooses (`image_input`)."""
    family = type(models[0])
    out = []
    for image in images:
        image, sized = family.image_input(models, image, scale)
        out.append(maps_to_predictions(mean_maps(models, image, sized, cfg.map_tta), cfg))
    return out


class FlowFamily(CellModel):
    """A family whose network gives flow maps; masks by following the flows."""

    def batch_maps(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Train mode: maps (B, 3 + C, H, W) of a batch of images (C, h, w) in [0, 1], image k
        at the top left of map k (H, W at least every image's size)."""
        raise NotImplementedError

    def image_maps(self, image: torch.Tensor, scale: float) -> torch.Tensor:
        """Eval mode: float32 maps (3 + C, H, W) of one image (C, H, W) seen at `scale`, in its
        own pixels (flows too)."""
        raise NotImplementedError

    @classmethod
    def image_input(
        cls, models: Sequence[FlowFamily], image: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, float]:
        """The image (C, H, W) as `models` are shown it and the scale they see it at (default:
        as it is, at `scale`, the model's)."""
        return image, scale

    @staticmethod
    def target_maker(cfg: FlowConfig):
        return flow_targets

    @classmethod
    def combine(cls, models: Sequence[CellModel]) -> list[CellModel]:
        """Several fold models as one that averages their maps before masks are recovered;
        models with the same weights (folds never trained: zero-shot) count once."""
        distinct: list[CellModel] = []
        for model in models:
            if not any(same_weights(model, kept) for kept in distinct):
                distinct.append(model)
        return [FlowEnsemble(distinct)] if len(distinct) > 1 else distinct

    def forward(
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        return flow_losses(self.batch_maps(images).float(), images, targets)  # float32 losses

    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor]) -> list[ImagePredictions]:
        """Per image: the maps at the family's scale (averaged over the views of `map_tta`), then
        masks from the flows, each cropped to its box with the cell probability inside it."""
        return predict_maps([self], images, self.scale, self.cfg)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models hold equal tensors under the same names."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa
    )


class FlowEnsemble(CellModel):
    """Fold models of one configuration as one model: the mean of their maps (cell logits,
    flows, class logits), masks recovered once. Every image then gets as many predictions as
    out-of-fold images get from their single fold model, so thresholds tuned out-of-fold mean
    the same on the test images (merging each fold's instances would not: where folds disagree,
    scores split and spurious pieces add up)."""

    def __init__(self, models: Sequence[CellModel]):
        first = models[0]
        super().__init__(first.cfg, first.classes, first.scale)
        self.family = first.family
        for model in models[1:]:
            if type(model) is not type(first) or (model.classes, model.cfg) != (
                first.classes,
                first.cfg,
            ):
                raise CellpipeError(
                    f"{first.family} models of one ensemble need one config and classes"
                )
        self.members = nn.ModuleList(models)

    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor]) -> list[ImagePredictions]:
        """Per image: the mean of every member's maps (and views), then masks as one model."""
        return predict_maps(list(self.members), images, self.scale, self.cfg)
