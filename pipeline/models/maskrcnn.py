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

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from pipeline.config import MaskRCNNConfig
from pipeline.core.errors import CellpipeError
from pipeline.core.predictions import ImagePredictions
from pipeline.models.base import CellModel, Registry, SampleInstances, register
from pipeline.models.foreign_weights import (
    detectron2_settings,
    is_detectron2,
    needed_overrides,
    torchvision_from_detectron2,
)
from pipeline.models.rcnn import (
    detection_predictions,
    level_anchor_sizes,
    maskrcnn_targets,
    scaled_images,
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


def anchor_generator(cfg: MaskRCNNConfig, n_levels: int) -> AnchorGenerator:
    """Anchors from the config: one size list per level (or one for all), shared ratios."""
    sizes = level_anchor_sizes(cfg, n_levels, "maskrcnn")
    ratios = tuple(float(r) for r in cfg.anchor_ratios)
    return AnchorGenerator(tuple(tuple(s) for s in sizes), (ratios,) * n_levels)


def torchvision_maskrcnn(cfg: MaskRCNNConfig, num_classes: int) -> MaskRCNN:
    """torchvision's Mask R-CNN with config-sized heads, dense-cell limits and no resizing."""
    backbone, levels = BACKBONES.lookup(cfg.backbone)(cfg)
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
    def target_maker(cfg: MaskRCNNConfig) -> Callable[[SampleInstances], dict[str, torch.Tensor]]:
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
