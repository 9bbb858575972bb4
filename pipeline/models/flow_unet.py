"""Family `flow_unet`: a small U-Net predicting a cell probability, cellpose-style flows and class
scores per pixel; masks come back by following the flows (pipeline.core.flows).

Trained from random weights it learns from a few dozen images (the cellpose / stardist lesson).
Masks are recovered permissively (a low foreground threshold, no flow-error cut) so that `tune`
can search this family's own postprocessing per class: `mask` (the cell probability inside an
instance), `max_error` (its flow error), `min_area`, and `score` (its mean probability).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import softmax
from torch import nn

from pipeline.config import FlowUNetConfig
from pipeline.core.ensemble import VIEWS
from pipeline.core.errors import CellpipeError
from pipeline.core.flows import FLOW_SCALE, flow_error, label_flows, masks_from_flows
from pipeline.core.instances import instance_boxes_and_crops
from pipeline.core.predictions import ImagePredictions, quantise
from pipeline.models.base import CellModel, Instances, register
from pipeline.models.inference import view_tensor


def normalise(images: torch.Tensor, low: float = 0.01, high: float = 0.99) -> torch.Tensor:
    """(B, C, H, W) -> grey (B, 1, H, W) scaled so its `low` / `high` quantiles map to 0 / 1
    (cellpose's normalisation: robust to each image's exposure and bit depth)."""
    grey = images.float().mean(dim=1, keepdim=True)
    flat = grey.flatten(1)
    lo = torch.quantile(flat, low, dim=1).view(-1, 1, 1, 1)
    hi = torch.quantile(flat, high, dim=1).view(-1, 1, 1, 1)
    return (grey - lo) / (hi - lo).clamp_min(1e-6)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    groups = math.gcd(8, c_out)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.GroupNorm(groups, c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.GroupNorm(groups, c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A plain U-Net: `channels` per level (each level halves the size), skip connections by
    concatenation, a 1x1 output convolution to `out_channels`."""

    def __init__(self, channels: Sequence[int], out_channels: int):
        super().__init__()
        self.down = nn.ModuleList()
        c_in = 1
        for c in channels:
            self.down.append(_block(c_in, c))
            c_in = c
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for c_skip in reversed(channels[:-1]):
            self.up.append(nn.ConvTranspose2d(c_in, c_skip, 2, stride=2))
            self.merge.append(_block(2 * c_skip, c_skip))
            c_in = c_skip
        self.head = nn.Conv2d(c_in, out_channels, 1)

    @property
    def stride(self) -> int:
        return 2 ** (len(self.down) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def flow_targets(instances: Instances) -> dict[str, torch.Tensor]:
    """Training targets of a sample: instance labels (int64: the class of the pixel's instance,
    0 background) and FLOW_SCALE x the unit flows toward each instance's centre."""
    cells = instances.label_image()
    classes = np.concatenate([[0], instances.labels]).astype(np.int64)[cells]
    return {
        "classes": torch.from_numpy(classes),
        "flows": torch.from_numpy(FLOW_SCALE * label_flows(cells)),
    }


def _pad_to(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.pad(tensor, (0, width - tensor.shape[-1], 0, height - tensor.shape[-2]))


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


@register
class FlowUNetModel(CellModel):
    """U-Net with outputs (cell logit, dy, dx, class logits...); masks by following the flows."""

    family = "flow_unet"
    class_heads = ("net.head.",)

    def __init__(self, cfg: FlowUNetConfig, classes: Sequence[str], scale: float = 1.0):
        super().__init__(cfg, classes, scale)
        self.net = UNet(cfg.channels, 3 + len(self.classes))

    @staticmethod
    def target_maker(cfg: FlowUNetConfig):
        return flow_targets

    @classmethod
    def combine(cls, models: Sequence[CellModel]) -> list[CellModel]:
        """Several fold models as one that averages their maps before masks are recovered."""
        return [FlowUNetEnsemble(models)] if len(models) > 1 else list(models)

    def forward(
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        batch, height, width = _normalised_batch(images, self.net.stride)
        out = self.net(batch).float()  # losses in float32 under autocast
        ones = [torch.ones(im.shape[-2:], device=batch.device) for im in images]
        valid = torch.stack([_pad_to(one, height, width) for one in ones])
        classes = torch.stack([_pad_to(t["classes"], height, width) for t in targets])
        flows = torch.stack([_pad_to(t["flows"], height, width) for t in targets])
        n_valid = valid.sum().clamp_min(1)
        cell = (classes > 0).float()
        cell_loss = F.binary_cross_entropy_with_logits(out[:, 0], cell, reduction="none")
        flow_loss = ((out[:, 1:3] - flows) ** 2).sum(dim=1) / 2
        losses = {
            "loss_cellprob": (cell_loss * valid).sum() / n_valid,
            "loss_flows": (flow_loss * valid).sum() / n_valid,
        }
        if len(self.classes) > 1:
            inside = (classes > 0) & (valid > 0)
            class_loss = F.cross_entropy(out[:, 3:], (classes - 1).clamp_min(0), reduction="none")
            losses["loss_classes"] = (class_loss * inside).sum() / inside.sum().clamp_min(1)
        return losses

    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor]) -> list[ImagePredictions]:
        """Per image: the network's maps at `scale` (averaged over the views of `map_tta`),
        resized back to the image's pixels, then masks from the flows, each cropped to its box
        with the cell probability inside it."""
        return predict_with([self.net], images, self.scale, self.cfg)


class FlowUNetEnsemble(CellModel):
    """Fold models of one configuration as one model: the mean of their maps (cell logits,
    flows, class logits), masks recovered once. Every image then gets as many predictions as
    out-of-fold images get from their single fold model, so thresholds tuned out-of-fold mean
    the same on the test images (merging each fold's instances would not: where folds disagree,
    scores split and spurious pieces add up)."""

    family = "flow_unet"

    def __init__(self, models: Sequence[CellModel]):
        first = models[0]
        super().__init__(first.cfg, first.classes, first.scale)
        for model in models[1:]:
            if model.classes != first.classes or model.cfg != first.cfg:
                raise CellpipeError("flow_unet models of one ensemble need one config and classes")
        self.nets = nn.ModuleList(model.net for model in models)

    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor]) -> list[ImagePredictions]:
        """Per image: the mean of every network's maps (and views), then masks as one model."""
        return predict_with(self.nets, images, self.scale, self.cfg)


def _normalised_batch(images: Sequence[torch.Tensor], stride: int) -> tuple[torch.Tensor, int, int]:
    """Normalised images padded to one size divisible by `stride`, and that size."""
    height = max(int(im.shape[-2]) for im in images)
    width = max(int(im.shape[-1]) for im in images)
    padded_h, padded_w = -(-height // stride) * stride, -(-width // stride) * stride
    batch = [_pad_to(normalise(im[None]), padded_h, padded_w) for im in images]
    return torch.cat(batch), padded_h, padded_w


@torch.no_grad()
def image_maps(net: UNet, image: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """float32 maps (3 + C, H, W) of one image (C, H, W) seen at `scale`, in its own pixels."""
    height, width = (int(s) for s in image.shape[-2:])
    x = image[None].float()
    if scale != 1.0:
        x = F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True)
    batch, _, _ = _normalised_batch([x[0]], net.stride)
    maps = net(batch)[..., : x.shape[-2], : x.shape[-1]]
    if maps.shape[-2:] != (height, width):
        maps = F.interpolate(maps, (height, width), mode="bilinear")
        maps[:, 1:3] /= scale  # flows in the image's own pixels
    return maps[0].float()


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


def mean_maps(
    nets: Sequence[UNet], image: torch.Tensor, scale: float, views: Sequence[str]
) -> np.ndarray:
    """float32 mean maps (3 + C, H, W) of every network under every view of one image, summed
    as they come (one map set in memory besides the sum, however many folds and views)."""
    maps = (
        unview_maps(image_maps(net, view_tensor(image, view), scale), view)
        for net in nets
        for view in views
    )
    return (sum(maps) / (len(nets) * len(views))).cpu().numpy()


def predict_with(
    nets: Sequence[UNet], images: Sequence[torch.Tensor], scale: float, cfg: FlowUNetConfig
) -> list[ImagePredictions]:
    """Per image: masks from the mean maps of `nets` under the views of `cfg.map_tta`."""
    return [maps_to_predictions(mean_maps(nets, im, scale, cfg.map_tta), cfg) for im in images]


def maps_to_predictions(maps: np.ndarray, cfg: FlowUNetConfig) -> ImagePredictions:
    """Box-cropped instances of the network's maps (cell logit, FLOW_SCALE x (dy, dx), one logit
    per class; (3 + C, H, W)): masks by following the flows from every pixel above
    `cfg.foreground`, crops holding the cell probability inside each mask, scores its mean,
    errors its flow error, labels the class with the most probability inside it."""
    logits, flows = maps[0], np.ascontiguousarray(maps[1:3])
    labels = masks_from_flows(
        logits,
        flows,
        cellprob_threshold=_logit(cfg.foreground),
        flow_threshold=0.0,
        min_size=cfg.min_size,
        n_iter=cfg.n_iter,
    )
    prob = 1 / (1 + np.exp(-logits))
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
