"""Family `flow_unet`: targets from hand-built cells, masks back from ideal maps, and a tiny
U-Net that learns one image."""

import numpy as np
import pytest
import torch
from test_watershed import discs

from pipeline.config import FlowUNetConfig, load_config
from pipeline.core.ensemble import VIEWS
from pipeline.core.errors import CellpipeError
from pipeline.core.flows import FLOW_SCALE, label_flows
from pipeline.core.instances import instance_boxes_and_crops
from pipeline.core.metrics import map_iou
from pipeline.core.postprocess import ClassThresholds, Thresholds, postprocess_image
from pipeline.models import build_model
from pipeline.models.base import SampleInstances
from pipeline.models.flow_maps import flow_targets, maps_to_predictions, unview_maps
from pipeline.models.flow_unet import FlowUNetModel
from pipeline.models.inference import view_tensor


def instances(labels, classes):
    _, boxes, crops = instance_boxes_and_crops(labels)
    return SampleInstances(labels.shape, np.asarray(boxes, np.int64), np.asarray(classes), crops)


CENTRES = [(14, 14), (14, 40), (38, 20), (38, 45)]  # the last two touch


def fit_one_image(model, image, targets, steps: int) -> tuple[float, float, dict]:
    """Adam steps (lr 1e-2) on one image: the first and last total losses, the last named ones."""
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    model.train()
    first = None
    for _ in range(steps):
        losses = model([image], [targets])
        loss = sum(losses.values())
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return first, loss.item(), losses


def test_targets_are_scaled_heat_flows_and_pixel_classes():
    labels = discs((52, 60), CENTRES, 10)
    targets = flow_targets(instances(labels, [1, 2, 2, 1]))
    np.testing.assert_allclose(targets["flows"].numpy(), FLOW_SCALE * label_flows(labels))
    lookup = np.array([0, 1, 2, 2, 1])
    assert (targets["classes"].numpy() == lookup[labels]).all()


def ideal_maps(labels, classes):
    """What a perfect network outputs: sure cell logits, scaled true flows, one-hot classes."""
    maps = np.zeros((3 + 2, *labels.shape), np.float32)
    maps[0] = np.where(labels > 0, 8.0, -8.0)
    maps[1:3] = FLOW_SCALE * label_flows(labels)
    for k, c in enumerate(classes, start=1):
        maps[2 + c][labels == k] = 5.0
    return maps


def test_ideal_maps_give_back_every_cell_with_its_class():
    labels = discs((52, 60), CENTRES, 10)
    classes = [1, 2, 2, 1]
    pred = maps_to_predictions(ideal_maps(labels, classes), FlowUNetConfig())
    assert len(pred) == len(CENTRES)
    for box, mask in zip(pred.boxes, pred.masks):
        assert mask.shape == (box[3] - box[1], box[2] - box[0])
    assert (pred.scores > 0.99).all() and (pred.errors < 0.1).all()
    painted, kept = postprocess_image(pred, Thresholds(default=ClassThresholds(0.0, 0.5, 0, 0.0)))
    assert map_iou(labels, painted) > 0.95
    # each predicted cell carries the class of the true cell it covers
    for index, label in zip(kept, range(1, len(kept) + 1)):
        true = np.bincount(labels[painted == label]).argmax()
        assert pred.labels[index] == classes[true - 1]


def test_flows_that_disagree_with_the_mask_have_large_errors():
    """Flows turned by 50 degrees still lead each cell's pixels to its centre, so the masks are
    the cells, but disagree with those masks' own flows: 2 - 2 cos 50 = 0.71 a pixel, which
    `max_error` can then filter."""
    labels = discs((52, 60), CENTRES, 10)
    maps = ideal_maps(labels, [1, 1, 2, 2])
    turn = np.radians(50)
    dy, dx = maps[1:3]
    maps[1:3] = np.cos(turn) * dy - np.sin(turn) * dx, np.sin(turn) * dy + np.cos(turn) * dx
    pred = maps_to_predictions(maps, FlowUNetConfig())
    assert len(pred) == len(CENTRES)
    np.testing.assert_allclose(pred.errors, 2 - 2 * np.cos(turn), atol=0.02)
    kept = ClassThresholds(0.0, 0.5, 0, 0.0, max_error=0.8)
    painted, _ = postprocess_image(pred, Thresholds(default=kept))
    assert map_iou(labels, painted) == 1.0
    strict = Thresholds(default=ClassThresholds(0.0, 0.5, 0, 0.0, max_error=0.6))
    assert not postprocess_image(pred, strict)[0].any()


def test_a_tiny_unet_learns_an_image_and_predicts_in_its_pixels():
    torch.manual_seed(0)
    labels = discs((48, 56), CENTRES[:3], 9)
    image = torch.from_numpy(np.where(labels > 0, 0.8, 0.1).astype(np.float32))[None]
    cfg = load_config(overrides=["model.flow_unet.channels=[8,16,32]"]).model
    model = build_model(cfg, ["cell"], "flow_unet")
    targets = flow_targets(instances(labels, [1, 1, 1]))
    first, last, losses = fit_one_image(model, image, targets, 80)
    assert set(losses) == {"loss_cellprob", "loss_flows"}  # one class: no class loss
    assert last < first / 4
    model.eval()
    (pred,) = model.predict([image])
    painted, _ = postprocess_image(pred, Thresholds(default=cfg.flow_unet.thresholds))
    assert map_iou(labels, painted) > 0.5
    model.scale = 0.5
    (half,) = model.predict([image])
    assert half.shape == (48, 56) and (half.boxes[:, 2:] <= (56, 48)).all()
    _, true_boxes, _ = instance_boxes_and_crops(labels)  # each cell found at half scale, in
    for box in true_boxes:  # the image's pixels (to a pixel or two)
        assert (np.abs(half.boxes - box).max(axis=1) <= 2).any(), box


def test_fold_models_combine_into_one_that_averages_their_maps():
    cfg = load_config(overrides=["model.flow_unet.channels=[8,16]"]).model
    folds = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folds.append(build_model(cfg, ["a", "b"], "flow_unet").eval())
    assert FlowUNetModel.combine(folds[:1]) == folds[:1]
    (ensemble,) = FlowUNetModel.combine(folds)
    image = torch.rand(1, 30, 44)
    maps = [model.image_maps(image, 1.0) for model in folds]
    assert not torch.allclose(maps[0], maps[1])
    mean = ((maps[0] + maps[1]) / 2).numpy()
    (got,) = ensemble.predict([image])
    want = maps_to_predictions(mean, cfg.flow_unet)
    assert len(got) == len(want) > 0
    np.testing.assert_array_equal(got.boxes, want.boxes)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    other = build_model(cfg, ["a"], "flow_unet")
    with pytest.raises(CellpipeError, match="one config and classes"):
        FlowUNetModel.combine([folds[0], other])


@pytest.mark.parametrize("view", list(VIEWS))
def test_maps_of_a_view_turn_back_into_the_maps_of_the_image(view):
    centres = [(12, 13), (27, 33), (30, 12)]
    labels = discs((40, 52), centres, 8)
    seen = view_tensor(torch.from_numpy(labels)[None], view)[0].numpy()
    back = unview_maps(torch.from_numpy(ideal_maps(seen, [1, 2, 1])), view).numpy()
    off_centre = np.ones(labels.shape, bool)  # a centre's flow has no direction (any will do)
    off_centre[tuple(np.transpose(centres))] = False
    want = ideal_maps(labels, [1, 2, 1])
    np.testing.assert_allclose(back[:, off_centre], want[:, off_centre], atol=1e-5)
