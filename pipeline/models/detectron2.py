"""Family `detectron2`: detectron2's own Mask R-CNN (`GeneralizedRCNN` from a model-zoo config),
with the dense-cell knobs of `model.detectron2` (the same names as `model.maskrcnn`).

State-dict keys are detectron2's, so its checkpoints (its model zoo's, or any trained with
detectron2, e.g. on LIVECell) load as they are with `init=<file>`. Images arrive as (C, H, W) in
[0, 1]; detectron2 sees them as BGR 0-255 normalised by `pixel_mean` / `pixel_std` (given, like
`maskrcnn`'s, for RGB in [0, 1]). detectron2 is optional: `make detectron2` builds it from
source; without it, building this family stops with one line saying so.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

import torch

from pipeline.config import Detectron2Config
from pipeline.core.errors import CellpipeError
from pipeline.core.predictions import ImagePredictions
from pipeline.models.base import CellModel, SampleInstances, register
from pipeline.models.rcnn import (
    detection_predictions,
    level_anchor_sizes,
    maskrcnn_targets,
    scaled_images,
)

NORMS = {"frozen_bn": "FrozenBN", "bn": "BN", "gn": "GN"}


def detectron2_available() -> bool:
    return importlib.util.find_spec("detectron2") is not None


def detectron2_config(cfg: Detectron2Config, num_classes: int) -> Any:
    """detectron2's CfgNode: the model-zoo config `cfg.zoo_config` with the block's knobs."""
    if not detectron2_available():
        raise CellpipeError(
            "model family detectron2 needs detectron2: `make detectron2` builds and installs it "
            "(DETECTRON2_SRC=<checkout or git URL>)"
        )
    from detectron2 import model_zoo

    try:
        c = model_zoo.get_config(cfg.zoo_config)
    except RuntimeError as e:
        raise CellpipeError(f"model.detectron2.zoo_config: {e}") from e
    c.MODEL.DEVICE = "cpu"
    c.MODEL.WEIGHTS = ""
    c.MODEL.RESNETS.NORM = NORMS[cfg.norm]
    c.MODEL.BACKBONE.FREEZE_AT = 5 - cfg.trainable_layers
    c.MODEL.ANCHOR_GENERATOR.SIZES = level_anchor_sizes(cfg, 5, "detectron2")  # P2-P6
    c.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [list(cfg.anchor_ratios)]
    c.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.rpn_pre_nms_top_n_train
    c.MODEL.RPN.POST_NMS_TOPK_TRAIN = cfg.rpn_post_nms_top_n_train
    c.MODEL.RPN.PRE_NMS_TOPK_TEST = cfg.rpn_pre_nms_top_n_test
    c.MODEL.RPN.POST_NMS_TOPK_TEST = cfg.rpn_post_nms_top_n_test
    c.MODEL.RPN.BATCH_SIZE_PER_IMAGE = cfg.rpn_batch_size_per_image
    c.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = cfg.roi_batch_size_per_image
    c.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    c.MODEL.ROI_HEADS.SCORE_THRESH_TEST = cfg.score_thresh
    c.MODEL.ROI_HEADS.NMS_THRESH_TEST = cfg.nms_thresh
    c.TEST.DETECTIONS_PER_IMAGE = cfg.detections_per_image
    c.INPUT.FORMAT = "BGR"
    c.MODEL.PIXEL_MEAN = [255 * m for m in reversed(cfg.pixel_mean)]
    c.MODEL.PIXEL_STD = [255 * s for s in reversed(cfg.pixel_std)]
    return c


def bgr_255(image: torch.Tensor) -> torch.Tensor:
    """An image (C, H, W) in [0, 1], grey or RGB, as detectron2's BGR 0-255 (3, H, W)."""
    image = image.float() * 255
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image.flip(0)


@register
class Detectron2Model(CellModel):
    """detectron2's Mask R-CNN for dense cells: detections with box-cropped mask probabilities."""

    family = "detectron2"
    config_class = Detectron2Config
    class_heads = ("roi_heads.box_predictor.", "roi_heads.mask_head.predictor.")

    def __init__(self, cfg: Detectron2Config, classes: Sequence[str], scale: float = 1.0):
        super().__init__(cfg, classes, scale)
        config = detectron2_config(cfg, len(self.classes))  # one line if detectron2 is missing
        from detectron2.modeling import build_model

        net = build_model(config)
        # detectron2's parts as this module's own: state-dict keys stay detectron2's
        self.backbone, self.proposal_generator = net.backbone, net.proposal_generator
        self.roi_heads = net.roi_heads
        self.register_buffer("pixel_mean", net.pixel_mean, persistent=False)
        self.register_buffer("pixel_std", net.pixel_std, persistent=False)
        object.__setattr__(self, "_net", net)  # its forward and inference, not a second module

    @staticmethod
    def target_maker(cfg: Detectron2Config) -> Callable[[SampleInstances], dict[str, torch.Tensor]]:
        return maskrcnn_targets

    def _inputs(self, images: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
        """detectron2's inputs, its network in this module's mode and on its device."""
        self._net.training = self.training
        self._net.pixel_mean, self._net.pixel_std = self.pixel_mean, self.pixel_std
        return [{"image": bgr_255(im)} for im in images]

    def forward(
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        from detectron2.structures import BitMasks, Boxes
        from detectron2.structures import Instances as Detections
        from detectron2.utils.events import EventStorage

        inputs = self._inputs(images)
        for item, image, target in zip(inputs, images, targets):
            truth = Detections(tuple(image.shape[-2:]))
            truth.gt_boxes = Boxes(target["boxes"])
            truth.gt_classes = target["labels"] - 1
            truth.gt_masks = BitMasks(target["masks"].bool())
            item["instances"] = truth
        with EventStorage(0):  # detectron2's losses log to an event storage
            return self._net(inputs)

    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor]) -> list[ImagePredictions]:
        """Detections on images (C, H, W) in [0, 1] at `scale`, in the images' pixels, each mask
        its 28x28 probability resized into its own box (uint8, 0..255)."""
        shapes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        scaled = scaled_images(images, self.scale)
        detections = self._net.inference(self._inputs(scaled), do_postprocess=False)
        return [
            detection_predictions(
                det.pred_masks[:, 0],
                det.pred_boxes.tensor,
                det.scores,
                det.pred_classes + 1,  # detectron2's classes count from 0
                image.shape[-2:],
                shape,
            )
            for det, shape, image in zip(detections, shapes, scaled)
        ]
