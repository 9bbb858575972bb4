"""Family `maskrcnn`: torchvision's Mask R-CNN built for dense cells, with box-cropped inference.

The backbone comes from `BACKBONES` (ResNet-18/34/50 with an FPN); anchors, RPN / ROI sampling and
detections per image from the config block `model.maskrcnn`. The model never resizes its input
(`NativeTransform`): training data arrive at `model.scale`, and `predict` resizes by it, so nothing
silently upsamples a 520x704 image to COCO's 800 pixels.

`predict` runs backbone, RPN and ROI heads itself and keeps each mask as the head's 28x28
probability resized into its own box only: 1000 detections never become a (1000, H, W) stack of
full-size masks as torchvision's postprocessing would paste.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import expand_boxes
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from pipeline.config import MaskRCNNConfig, RCNNConfig
from pipeline.core.errors import CellpipeError
from pipeline.core.predictions import ImagePredictions
from pipeline.models.base import CellModel, Instances, Registry, register
from pipeline.models.foreign_weights import (
    detectron2_settings,
    is_detectron2,
    needed_overrides,
    torchvision_from_detectron2,
)

BACKBONES = Registry("backbone")  # (MaskRCNNConfig) -> (module with out_channels, levels)


def _norm_layer(kind: str) -> Callable[[int], nn.Module]:
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "bn":
        return nn.BatchNorm2d
    return lambda channels: nn.GroupNorm(math.gcd(32, channels), channels)


def _resnet_fpn(depth: int, cfg: MaskRCNNConfig) -> tuple[nn.Module, list[str]]:
    """ResNet with an FPN over its four stages plus a max-pooled level (P2-P6, strides 4-64)."""
    body = getattr(resnet, f"resnet{depth}")(weights=None, norm_layer=_norm_layer(cfg.norm))
    if not 0 <= cfg.trainable_layers <= 5:
        raise CellpipeError(
            f"model.maskrcnn.trainable_layers must be 0-5, got {cfg.trainable_layers}"
        )
    trained = ["layer4", "layer3", "layer2", "layer1", "conv1"][: cfg.trainable_layers]
    if cfg.trainable_layers == 5:
        trained.append("bn1")
    for name, parameter in body.named_parameters():
        parameter.requires_grad_(any(name.startswith(layer) for layer in trained))
    if cfg.stride_in_1x1:  # only bottleneck stages have a 1x1 first; their first block strides
        for layer in (body.layer2, body.layer3, body.layer4):
            first = layer[0]
            if isinstance(first, resnet.Bottleneck):
                first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)
    stage2 = body.inplanes // 8  # 64 for resnet18/34, 256 for resnet50
    backbone = BackboneWithFPN(
        body,
        return_layers={f"layer{k}": str(k - 1) for k in range(1, 5)},
        in_channels_list=[stage2 * 2 ** (k - 1) for k in range(1, 5)],
        out_channels=cfg.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    return backbone, ["0", "1", "2", "3", "pool"]


for _depth in (18, 34, 50):
    BACKBONES.register(f"resnet{_depth}_fpn")(
        lambda cfg, depth=_depth: _resnet_fpn(depth, cfg)  # type: ignore[misc]
    )


class NativeTransform(GeneralizedRCNNTransform):
    """Normalise and batch, never resize: images arrive at the scale the config asked for.

    A grey (1, H, W) image broadcasts against the 3-channel mean and std into (3, H, W).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__(min_size=1, max_size=1, image_mean=list(mean), image_std=list(std))

    def resize(self, image, target=None):
        return image, target


def level_anchor_sizes(cfg: RCNNConfig, n_levels: int, family: str) -> list[list[int]]:
    """`anchor_sizes` of a Mask R-CNN block, one list per level (a single list serves all)."""
    sizes = cfg.anchor_sizes * n_levels if len(cfg.anchor_sizes) == 1 else cfg.anchor_sizes
    if len(sizes) != n_levels:
        raise CellpipeError(
            f"model.{family}.anchor_sizes has {len(sizes)} lists; the backbone has {n_levels} "
            "levels (give one list per level, or one list for all)"
        )
    if len({len(s) for s in sizes}) != 1 or not sizes[0]:
        raise CellpipeError(
            f"model.{family}.anchor_sizes: every level needs the same number of sizes"
        )
    return [list(s) for s in sizes]


def anchor_generator(cfg: MaskRCNNConfig, n_levels: int) -> AnchorGenerator:
    """Anchors from the config: one size list per level (or one for all), shared ratios."""
    sizes = level_anchor_sizes(cfg, n_levels, "maskrcnn")
    ratios = tuple(float(r) for r in cfg.anchor_ratios)
    return AnchorGenerator(tuple(tuple(s) for s in sizes), (ratios,) * n_levels)


def torchvision_maskrcnn(cfg: MaskRCNNConfig, num_classes: int) -> MaskRCNN:
    """torchvision's Mask R-CNN with config-sized heads, dense-cell limits and no resizing."""
    backbone, levels = BACKBONES.get(cfg.backbone)(cfg)
    anchors = anchor_generator(cfg, len(levels))
    channels = backbone.out_channels
    pooled = [name for name in levels if name != "pool"]
    model = MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_roi_pool=MultiScaleRoIAlign(pooled, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(channels * 7 * 7, cfg.box_head_dim),
        box_predictor=FastRCNNPredictor(cfg.box_head_dim, num_classes),
        box_batch_size_per_image=cfg.roi_batch_size_per_image,
        box_detections_per_img=cfg.detections_per_image,
        box_score_thresh=cfg.score_thresh,
        box_nms_thresh=cfg.nms_thresh,
        mask_roi_pool=MultiScaleRoIAlign(pooled, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(channels, [cfg.mask_head_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(
            cfg.mask_head_channels, cfg.mask_head_channels, num_classes
        ),
    )
    model.transform = NativeTransform(cfg.pixel_mean, cfg.pixel_std)
    return model


def maskrcnn_targets(instances: Instances) -> dict[str, torch.Tensor]:
    """torchvision's detection targets: float boxes, labels and full-size uint8 masks."""
    height, width = instances.shape
    masks = np.zeros((len(instances.crops), height, width), np.uint8)  # calloc: untouched pages
    for k, (crop, (x0, y0, x1, y1)) in enumerate(zip(instances.crops, instances.boxes)):
        masks[k, y0:y1, x0:x1] = crop
    return {
        "boxes": torch.as_tensor(instances.boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(instances.labels, dtype=torch.int64),
        "masks": torch.from_numpy(masks),
    }


@register
class MaskRCNNModel(CellModel):
    """Mask R-CNN (torchvision) for dense cells: detections with box-cropped mask probabilities."""

    family = "maskrcnn"
    config_class = MaskRCNNConfig
    class_heads = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")

    def __init__(self, cfg: MaskRCNNConfig, classes: Sequence[str], scale: float = 1.0):
        super().__init__(cfg, classes, scale)
        net = torchvision_maskrcnn(cfg, len(self.classes) + 1)
        # torchvision's parts as this module's own: state-dict keys stay torchvision's
        self.transform, self.backbone = net.transform, net.backbone
        self.rpn, self.roi_heads = net.rpn, net.roi_heads

    @staticmethod
    def target_maker(cfg: MaskRCNNConfig) -> Callable[[Instances], dict[str, torch.Tensor]]:
        return maskrcnn_targets

    def forward(
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        batch, targets = self.transform(images, targets)
        features = self.backbone(batch.tensors)
        proposals, rpn_losses = self.rpn(batch, features, targets)
        _, head_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        return {**rpn_losses, **head_losses}

    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor]) -> list[ImagePredictions]:
        """Detections on images (C, H, W) in [0, 1], resized by `scale` on their device; boxes
        come back in the images' pixels, each mask its 28x28 probability resized into its own
        box (uint8, 0..255)."""
        shapes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        batch, _ = self.transform(scaled_images(images, self.scale))
        features = self.backbone(batch.tensors)
        proposals, _ = self.rpn(batch, features)
        detections, _ = self.roi_heads(features, proposals, batch.image_sizes)
        return [
            detection_predictions(
                det["masks"][:, 0], det["boxes"], det["scores"], det["labels"], scaled, shape
            )
            for det, shape, scaled in zip(detections, shapes, batch.image_sizes)
        ]

    def import_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """torchvision Mask R-CNN weights as they are; detectron2's renamed to them (with the
        settings they need, see pipeline.models.foreign_weights); a bare ResNet (ImageNet) as
        the backbone."""
        if is_detectron2(state):
            needed = needed_overrides(self.cfg, self.family, detectron2_settings())
            if needed:
                raise CellpipeError(f"detectron2 weights need {needed}")
            return torchvision_from_detectron2(state)
        if "fc.weight" in state and "layer1.0.conv1.weight" in state:
            return {f"backbone.body.{k}": v for k, v in state.items() if not k.startswith("fc.")}
        return state


def scaled_images(images: Sequence[torch.Tensor], scale: float) -> list[torch.Tensor]:
    """Images (C, H, W) resized by `scale` (bilinear, antialiased when shrinking)."""
    if scale == 1.0:
        return list(images)
    return [
        F.interpolate(im[None].float(), scale_factor=scale, mode="bilinear", antialias=scale < 1)[0]
        for im in images
    ]


def detection_predictions(
    mask_probs: torch.Tensor,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    scaled_shape: Sequence[int],
    shape: tuple[int, int],
) -> ImagePredictions:
    """One image's detections (28x28 mask probabilities, boxes in the pixels of the image seen
    at `scaled_shape`, scores, model labels) as box-cropped predictions in its own pixels."""
    (height, width), (sh, sw) = shape, scaled_shape
    ratio = torch.tensor([width / sw, height / sh] * 2, device=boxes.device)
    kept_boxes, masks = crop_mask_probs(mask_probs, boxes * ratio, (height, width))
    return ImagePredictions(
        shape=(height, width),
        boxes=kept_boxes,
        scores=scores.float().cpu().numpy(),
        labels=labels.cpu().numpy().astype(np.int32),
        masks=masks,
    )


def crop_mask_probs(
    probs: torch.Tensor, boxes: torch.Tensor, shape: tuple[int, int]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each (M, M) mask probability resized into its own box, as torchvision pastes it.

    probs: (n, M, M); boxes: (n, 4) float x0, y0, x1, y1 in image pixels. Returns int32 boxes
    [x0, y0, x1, y1) clipped to the image and uint8 (0..255) crops of matching shapes.
    """
    height, width = shape
    n, size = probs.shape[0], probs.shape[-1]
    padded = F.pad(probs.float(), (1, 1, 1, 1))  # like torchvision's expand_masks(padding=1)
    boxes = expand_boxes(boxes.float(), (size + 2) / size).to(torch.int64).tolist()
    clipped = np.zeros((n, 4), np.int32)
    crops = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1 + 1, width), min(y1 + 1, height)
        cx1, cy1 = max(cx1, cx0), max(cy1, cy0)
        resized = F.interpolate(padded[i][None, None], size=(h, w), mode="bilinear")[0, 0]
        crops.append(resized[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0])
        clipped[i] = (cx0, cy0, cx1, cy1)
    if not crops:
        return clipped, []
    flat = torch.cat([c.reshape(-1) for c in crops])
    flat = (flat * 255.0).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
    ends = np.cumsum([c.numel() for c in crops])
    masks = [
        part.reshape(c.shape[0], c.shape[1]) for part, c in zip(np.split(flat, ends[:-1]), crops)
    ]
    return clipped, masks
