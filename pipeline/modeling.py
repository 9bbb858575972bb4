"""Model registry, the Mask R-CNN builder for dense cells, weight loading, box-cropped inference.

`build_model(cfg.model, num_classes)` looks the architecture up in `MODELS` and its backbone in
`BACKBONES`; both registries fail on an unknown or duplicate name with the list of known names.
Models never resize their input (`NativeTransform`): the data pipeline applies `model.scale`, so
nothing silently upsamples a 520x704 image to COCO's 800 pixels.

`predict_instances` runs backbone, RPN and ROI heads itself and keeps each mask as the head's
28x28 probability resized into its own box only: 1000 detections never become a (1000, H, W)
stack of full-size masks as torchvision's postprocessing would paste.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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

from pipeline.config import ModelConfig
from pipeline.core.errors import CellpipeError
from pipeline.core.predictions import ImagePredictions

# parameters whose shape depends on the number of classes: re-initialised when classes differ
CLASS_HEADS = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


class Registry(dict):
    """Name -> builder; a duplicate or unknown name fails with the list of known names."""

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

    def get(self, name: str) -> Callable:  # type: ignore[override]
        if name not in self:
            raise CellpipeError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}")
        return self[name]


BACKBONES = Registry("backbone")  # (ModelConfig) -> (module with out_channels, feature names)
MODELS = Registry("model")  # (ModelConfig, num_classes) -> nn.Module


def _norm_layer(kind: str) -> Callable[[int], nn.Module]:
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "bn":
        return nn.BatchNorm2d
    return lambda channels: nn.GroupNorm(math.gcd(32, channels), channels)


def _resnet_fpn(depth: int, cfg: ModelConfig) -> tuple[nn.Module, list[str]]:
    """ResNet with an FPN over its four stages plus a max-pooled level (P2-P6, strides 4-64)."""
    body = getattr(resnet, f"resnet{depth}")(weights=None, norm_layer=_norm_layer(cfg.norm))
    if not 0 <= cfg.trainable_layers <= 5:
        raise CellpipeError(f"model.trainable_layers must be 0-5, got {cfg.trainable_layers}")
    trained = ["layer4", "layer3", "layer2", "layer1", "conv1"][: cfg.trainable_layers]
    if cfg.trainable_layers == 5:
        trained.append("bn1")
    for name, parameter in body.named_parameters():
        parameter.requires_grad_(any(name.startswith(layer) for layer in trained))
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


def anchor_generator(cfg: ModelConfig, n_levels: int) -> AnchorGenerator:
    """Anchors from the config: one size list per level (or one for all), shared ratios."""
    sizes = cfg.anchor_sizes * n_levels if len(cfg.anchor_sizes) == 1 else cfg.anchor_sizes
    if len(sizes) != n_levels:
        raise CellpipeError(
            f"model.anchor_sizes has {len(sizes)} lists; the backbone has {n_levels} levels "
            "(give one list per level, or one list for all)"
        )
    if len({len(s) for s in sizes}) != 1 or not sizes[0]:
        raise CellpipeError("model.anchor_sizes: every level needs the same number of sizes")
    ratios = tuple(float(r) for r in cfg.anchor_ratios)
    return AnchorGenerator(tuple(tuple(s) for s in sizes), (ratios,) * n_levels)


@MODELS.register("maskrcnn")
def build_maskrcnn(cfg: ModelConfig, num_classes: int) -> nn.Module:
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


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """The registered architecture `cfg.arch` for `num_classes` (background included)."""
    if num_classes < 2:
        raise CellpipeError(f"a model needs at least one class besides background ({num_classes})")
    return MODELS.get(cfg.arch)(cfg, num_classes)


# --- weights ------------------------------------------------------------------------------------


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """A .pth file as a dict, with a one-line error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CellpipeError(f"missing weights file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CellpipeError(f"cannot read weights {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise CellpipeError(f"{path}: expected a state dict or a cellpipe checkpoint")
    return obj


def _is_class_head(key: str) -> bool:
    return key.startswith(CLASS_HEADS)


def _check_architecture(
    model: nn.Module, checkpoint: dict[str, Any], cfg: ModelConfig, path: Path | str
) -> None:
    """One-line error unless the checkpoint's layers (class heads aside) fit `model`."""
    own, state = model.state_dict(), checkpoint["model"]
    body = {k for k in own if not _is_class_head(k)}
    if body == {k for k in state if not _is_class_head(k)} and all(
        state[k].shape == own[k].shape for k in body
    ):
        return
    saved, now = checkpoint["model_config"], cfg.model_dump(mode="json")
    diffs = [
        f"{k}: {saved.get(k)!r} there, {v!r} here" for k, v in now.items() if saved.get(k) != v
    ]
    raise CellpipeError(f"{path} holds another model ({'; '.join(diffs) or 'other layers'})")


def load_weights(
    model: nn.Module, path: Path | str, cfg: ModelConfig, classes: Sequence[str]
) -> str:
    """Initialise `model` from a cellpipe checkpoint or a foreign state dict; return a summary.

    A cellpipe checkpoint must come from the same architecture (else a one-line error naming the
    differing model config keys); its class heads are kept when its classes are the same. A
    torchvision Mask R-CNN or ResNet (ImageNet) state dict loads every tensor whose name and
    shape match.
    """
    obj = read_checkpoint(path)
    own = model.state_dict()
    if "model" in obj and "model_config" in obj:
        _check_architecture(model, obj, cfg, path)
        same_classes = list(obj.get("classes", [])) == list(classes)
        state = obj["model"]
        if not same_classes:
            state = {k: v for k, v in state.items() if not _is_class_head(k)}
        model.load_state_dict(state, strict=False)
        heads = "kept" if same_classes else f"new (classes {obj.get('classes')} -> {list(classes)})"
        return f"weights from {path} (iteration {obj.get('iteration', '?')}), class heads {heads}"
    state = obj.get("state_dict", obj)
    if "fc.weight" in state and "layer1.0.conv1.weight" in state:  # a bare ResNet classifier
        state = {f"backbone.body.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    for key in [k for k, v in state.items() if k in own and v.shape != own[k].shape]:
        del state[key]  # in place: the file's version metadata lets torchvision rename old keys
    missing = model.load_state_dict(state, strict=False).missing_keys
    if len(missing) == len(own):
        raise CellpipeError(f"no tensor in {path} matches the model ({cfg.backbone})")
    return f"weights from {path}: {len(own) - len(missing)} of {len(own)} tensors"


def load_model(
    path: Path | str, device: str | torch.device = "cpu", expected: ModelConfig | None = None
) -> tuple[nn.Module, list[str]]:
    """A trained model in eval mode and its class names (label k is classes[k - 1]).

    expected: build the model from this config, so its inference settings (detections per
    image, thresholds, RPN top-k) apply, after checking that the checkpoint holds the same
    architecture (else a one-line error); None: the checkpoint's own config.
    """
    obj = read_checkpoint(path)
    if "model_config" not in obj or "model" not in obj:
        raise CellpipeError(f"{path} is not a cellpipe checkpoint (no model_config)")
    cfg = expected or ModelConfig.model_validate(obj["model_config"])
    classes = list(obj["classes"])
    model = build_model(cfg, len(classes) + 1)
    _check_architecture(model, obj, cfg, path)
    model.load_state_dict(obj["model"])
    return model.to(device).eval(), classes


# --- inference ----------------------------------------------------------------------------------


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


@torch.no_grad()
def predict_instances(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    scale: float = 1.0,
    score_thresh: float | None = None,
) -> list[ImagePredictions]:
    """Detections of a Mask R-CNN (eval mode) on images (C, H, W) in [0, 1], in input pixels.

    Images are resized by `scale` on their device; boxes come back in original pixels and
    every mask is its 28x28 probability resized into its own box (uint8, 0..255). Labels are
    model classes 1..C (with classes from a COCO file's categories: its category ids).
    `score_thresh` overrides the model's for this call (the mask head then skips the rest).
    """
    shapes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    if scale != 1.0:
        images = [
            F.interpolate(
                im[None].float(), scale_factor=scale, mode="bilinear", antialias=scale < 1
            )[0]
            for im in images
        ]
    batch, _ = model.transform(list(images))
    features = model.backbone(batch.tensors)
    proposals, _ = model.rpn(batch, features)
    default_thresh = model.roi_heads.score_thresh
    if score_thresh is not None:
        model.roi_heads.score_thresh = score_thresh
    try:
        detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
    finally:
        model.roi_heads.score_thresh = default_thresh
    out = []
    for det, (height, width), (sh, sw) in zip(detections, shapes, batch.image_sizes):
        ratio = torch.tensor([width / sw, height / sh] * 2, device=det["boxes"].device)
        boxes, masks = crop_mask_probs(det["masks"][:, 0], det["boxes"] * ratio, (height, width))
        out.append(
            ImagePredictions(
                shape=(height, width),
                boxes=boxes,
                scores=det["scores"].float().cpu().numpy(),
                labels=det["labels"].cpu().numpy().astype(np.int32),
                masks=masks,
            )
        )
    return out
