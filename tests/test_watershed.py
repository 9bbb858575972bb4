"""Family `watershed`: the classical floor on hand-built images with known cells."""

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.core.metrics import map_iou
from pipeline.core.postprocess import Thresholds, postprocess_image
from pipeline.models import build_model


def discs(shape, centres, radius):
    """Label image of discs (later discs win where they touch)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k
    return labels


def picture(labels, bright=True, noise=0.02, seed=0):
    rng = np.random.default_rng(seed)
    cells = (labels > 0).astype(np.float32)
    image = 0.1 + 0.7 * cells if bright else 0.9 - 0.7 * cells
    return np.clip(image + rng.normal(0, noise, labels.shape), 0, 1).astype(np.float32)


def segment(labels, image, scale=1.0, **settings):
    cfg = load_config(overrides=[f"model.watershed.{k}={v}" for k, v in settings.items()])
    cfg = cfg.model.model_copy(update={"scale": scale})
    model = build_model(cfg, ["cell"], "watershed")
    (pred,) = model.predict([torch.from_numpy(image)[None]])
    thresholds = Thresholds(default=cfg.watershed.thresholds)
    return pred, postprocess_image(pred, thresholds)[0]


def test_separate_and_touching_cells_are_found():
    centres = [(20, 20), (20, 60), (60, 20), (60, 47), (60, 73)]  # the last three touch in a row
    labels = discs((84, 96), centres, 13)
    pred, painted = segment(labels, picture(labels))
    assert len(np.unique(painted)) - 1 == len(centres)
    assert map_iou(labels, painted) > 0.8
    for box, mask in zip(pred.boxes, pred.masks):
        assert mask.shape == (box[3] - box[1], box[2] - box[0])
    assert (pred.labels == 1).all() and (pred.errors == 0).all()
    assert ((pred.scores > 0.5) & (pred.scores <= 1)).all()  # mean probability inside


@pytest.mark.parametrize("contrast", ["auto", "dark"])
def test_dark_cells(contrast):
    labels = discs((64, 64), [(20, 20), (44, 44)], 10)
    _, painted = segment(labels, picture(labels, bright=False), contrast=contrast)
    assert map_iou(labels, painted) > 0.8


def test_scale_maps_back_to_the_image_pixels():
    labels = discs((70, 90), [(20, 25), (45, 60)], 12)
    pred, painted = segment(labels, picture(labels), scale=0.5)
    assert pred.shape == (70, 90) and painted.shape == (70, 90)
    assert map_iou(labels, painted) > 0.6


def test_blank_image_has_no_cells():
    pred, painted = segment(np.zeros((30, 40), np.int32), np.full((30, 40), 0.5, np.float32))
    assert len(pred) == 0 and not painted.any()


def test_watershed_needs_no_training():
    """Beside a trained family it gets no fold models, no training run and no test checkpoint."""
    from pipeline.models.inference import inference_checkpoints

    cfg = load_config(overrides=["predict.models=[flow_unet,watershed]", "folds.n_folds=2"])
    assert cfg.trained_families == ["flow_unet"]
    assert [p.parts[-3] for p in cfg.fold_models()["flow_unet"]] == ["flow_unet", "flow_unet"]
    assert list(inference_checkpoints(cfg)) == ["flow_unet"]
    assert not list(build_model(cfg.model, ["cell"], "watershed").parameters())
