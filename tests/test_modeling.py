"""Model registry and builder, weight loading, box-cropped inference against torchvision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection.roi_heads import paste_masks_in_image

from pipeline.config import ModelConfig
from pipeline.core.errors import CellpipeError
from pipeline.modeling import (
    BACKBONES,
    build_model,
    crop_mask_probs,
    load_model,
    load_weights,
    predict_instances,
)

TINY = ModelConfig(
    backbone="resnet18_fpn",
    norm="gn",
    fpn_channels=32,
    box_head_dim=64,
    mask_head_channels=32,
    anchor_sizes=[[8], [16], [32], [64], [128]],
    anchor_ratios=[0.5, 1.0, 2.0],
    rpn_pre_nms_top_n_train=300,
    rpn_post_nms_top_n_train=300,
    rpn_pre_nms_top_n_test=300,
    rpn_post_nms_top_n_test=300,
    roi_batch_size_per_image=64,
    detections_per_image=1000,
    score_thresh=0.0,
)


def test_registry_errors_name_the_known_entries():
    with pytest.raises(CellpipeError, match="unknown backbone 'vgg16'.*resnet18_fpn"):
        build_model(TINY.model_copy(update={"backbone": "vgg16"}), 3)
    with pytest.raises(CellpipeError, match="unknown model 'yolo'; known: maskrcnn"):
        build_model(TINY.model_copy(update={"arch": "yolo"}), 3)
    with pytest.raises(ValueError, match="registered twice"):
        BACKBONES.register("resnet18_fpn")(lambda cfg: None)
    with pytest.raises(CellpipeError, match="5 levels"):
        build_model(TINY.model_copy(update={"anchor_sizes": [[8], [16]]}), 3)
    with pytest.raises(CellpipeError, match="same number of sizes"):
        build_model(TINY.model_copy(update={"anchor_sizes": [[8, 9], [16], [32], [64], [128]]}), 3)
    with pytest.raises(CellpipeError, match="at least one class"):
        build_model(TINY, 1)


def test_dense_cell_settings_and_native_resolution():
    cfg = TINY.model_copy(update={"anchor_sizes": [[4, 9, 17]], "trainable_layers": 2})
    model = build_model(cfg, 4).eval()
    assert model.roi_heads.detections_per_img == 1000
    assert model.rpn.anchor_generator.num_anchors_per_location() == [9] * 5
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    trained = {
        n.split(".")[0] for n, p in model.backbone.body.named_parameters() if p.requires_grad
    }
    assert trained == {"layer3", "layer4"}
    grey = torch.rand(1, 70, 90)  # one channel, odd size: normalised and padded, never resized
    batch, _ = model.transform([grey])
    assert batch.image_sizes == [(70, 90)] and batch.tensors.shape == (1, 3, 96, 96)


def test_crop_mask_probs_equals_torchvision_paste():
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(40, 28, 28, generator=gen)
    xy = torch.rand(40, 2, generator=gen) * torch.tensor([78.0, 62.0]) - 8
    wh = torch.rand(40, 2, generator=gen) * torch.tensor([30.0, 20.0]) + 10
    boxes = torch.cat([xy, xy + wh], 1)  # some cross the border
    shape = (64, 80)
    crops_boxes, crops = crop_mask_probs(probs, boxes, shape)
    full = paste_masks_in_image(probs[:, None], boxes, shape)[:, 0]
    for (x0, y0, x1, y1), crop, reference in zip(crops_boxes, crops, full):
        expected = np.rint(reference.numpy() * 255).astype(np.uint8)
        pasted = np.zeros(shape, np.uint8)
        pasted[y0:y1, x0:x1] = crop
        assert np.abs(pasted.astype(int) - expected).max() <= 1  # rounding of 255 * p
        assert (expected[:, :x0] == 0).all() and (expected[:y0] == 0).all()
    outside = torch.tensor([[-30.0, 5.0, -12.0, 20.0], [10.0, 70.0, 30.0, 90.0]])
    boxes_out, crops_out = crop_mask_probs(probs[:2], outside, shape)
    assert [c.size for c in crops_out] == [0, 0]
    assert (boxes_out[:, 2:] >= boxes_out[:, :2]).all()


def test_predict_instances_maps_back_to_input_pixels():
    torch.manual_seed(0)
    model = build_model(TINY, 3).eval()
    image = torch.rand(1, 80, 100)
    (native,) = predict_instances(model, [image])
    assert native.shape == (80, 100) and len(native) > 0
    assert native.labels.min() >= 1 and native.labels.max() <= 2
    for box, mask in zip(native.boxes, native.masks):
        assert mask.shape == (box[3] - box[1], box[2] - box[0]) and mask.dtype == np.uint8
    (half,) = predict_instances(model, [image], scale=0.5)
    small = torch.nn.functional.interpolate(
        image[None], scale_factor=0.5, mode="bilinear", antialias=True
    )[0]
    with torch.no_grad():
        (reference,) = model([small])  # torchvision's own path at the small size
    keep = reference["scores"] > 0.0
    assert len(half) == int(keep.sum())
    top = np.argsort(-half.scores)[:10]
    expected = (
        reference["boxes"][keep][torch.argsort(-reference["scores"][keep])][:10] * 2
    ).numpy()
    centres = (half.boxes[top, :2] + half.boxes[top, 2:]) / 2
    assert np.abs(centres - (expected[:, :2] + expected[:, 2:]) / 2).max() < 4  # mask padding
    (few,) = predict_instances(model, [image], score_thresh=float(np.median(native.scores)))
    assert 0 < len(few) < len(native)
    assert model.roi_heads.score_thresh == 0.0  # restored


def _save_checkpoint(path, model, cfg, classes):
    state = {"model": model.state_dict(), "model_config": cfg.model_dump(mode="json")}
    torch.save({**state, "classes": classes, "iteration": 7}, path)


def test_load_weights_from_a_cellpipe_checkpoint(tmp_path):
    torch.manual_seed(1)
    source = build_model(TINY, 2)
    _save_checkpoint(tmp_path / "one.pth", source, TINY, ["cell"])
    target = build_model(TINY, 4)
    message = load_weights(target, tmp_path / "one.pth", TINY, ["a", "b", "c"])
    assert "class heads new" in message and "iteration 7" in message
    for key, value in source.state_dict().items():
        if "box_predictor" in key or "mask_fcn_logits" in key:
            assert not torch.equal(value, target.state_dict()[key]) or value.numel() == 0
        else:
            assert torch.equal(value, target.state_dict()[key]), key
    same = build_model(TINY, 2)
    assert "class heads kept" in load_weights(same, tmp_path / "one.pth", TINY, ["cell"])
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in source.state_dict().items())
    model, classes = load_model(tmp_path / "one.pth")
    assert classes == ["cell"] and not model.training
    serving = TINY.model_copy(update={"detections_per_image": 50, "score_thresh": 0.3})
    model, _ = load_model(tmp_path / "one.pth", expected=serving)  # inference settings apply
    assert (model.roi_heads.detections_per_img, model.roi_heads.score_thresh) == (50, 0.3)
    with pytest.raises(CellpipeError, match="backbone: 'resnet18_fpn' there, 'resnet34_fpn' here"):
        load_model(
            tmp_path / "one.pth", expected=TINY.model_copy(update={"backbone": "resnet34_fpn"})
        )

    other = TINY.model_copy(update={"fpn_channels": 48})
    with pytest.raises(CellpipeError, match="fpn_channels: 32 there, 48 here"):
        load_weights(build_model(other, 2), tmp_path / "one.pth", other, ["cell"])


def test_load_weights_from_torchvision_state_dicts(tmp_path):
    r50 = ModelConfig(norm="frozen_bn", trainable_layers=3)
    coco_like = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91
    )
    torch.save(coco_like.state_dict(), tmp_path / "coco.pth")
    model = build_model(r50, 4)
    message = load_weights(model, tmp_path / "coco.pth", r50, ["a", "b", "c"])
    loaded, total = (int(v) for v in message.split(": ")[1].split(" tensors")[0].split(" of "))
    assert total - loaded == 10  # box and mask class heads (4 + 2), RPN anchor-count layers (4)
    body = model.state_dict()["backbone.body.layer2.0.conv1.weight"]
    assert torch.equal(body, coco_like.state_dict()["backbone.body.layer2.0.conv1.weight"])

    imagenet = torchvision.models.resnet18(weights=None)
    torch.save(imagenet.state_dict(), tmp_path / "resnet18.pth")
    light = build_model(TINY.model_copy(update={"norm": "frozen_bn"}), 2)
    load_weights(light, tmp_path / "resnet18.pth", TINY, ["cell"])
    assert torch.equal(light.backbone.body.conv1.weight, imagenet.conv1.weight)

    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CellpipeError, match="no tensor in .* matches"):
        load_weights(light, tmp_path / "other.pth", TINY, ["cell"])
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CellpipeError, match="cannot read weights"):
        load_weights(light, tmp_path / "broken.pth", TINY, ["cell"])
    with pytest.raises(CellpipeError, match="missing weights file"):
        load_weights(light, tmp_path / "absent.pth", TINY, ["cell"])
