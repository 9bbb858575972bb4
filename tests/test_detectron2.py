"""The `detectron2` family where detectron2 is installed (`make detectron2`); skipped, with the
reason printed by `-ra`, elsewhere. The key map is also checked against detectron2 itself: a
randomly initialised detectron2 R50-FPN Mask R-CNN and the torchvision `maskrcnn` family it maps
to give the same detections on the same image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from chain import REPO, SHORT_TRAINING, TINY_DATA, make_config, run_chain

from pipeline.config import Detectron2Config, MaskRCNNConfig, ModelConfig
from pipeline.core.errors import CellpipeError
from pipeline.core.predictions import load_predictions
from pipeline.core.submission import read_submission
from pipeline.models import build_model
from pipeline.models.detectron2 import detectron2_available
from pipeline.models.foreign_weights import detectron2_settings, detectron2_to_torchvision

needs_detectron2 = pytest.mark.skipif(
    not detectron2_available(), reason="detectron2 is not installed (`make detectron2`)"
)


def test_without_detectron2_the_family_says_how_to_install_it():
    if detectron2_available():
        pytest.skip("detectron2 is installed here")
    with pytest.raises(CellpipeError, match="make detectron2"):
        build_model(ModelConfig(family="detectron2"), ["cell"], "detectron2")


# exact anchors in both libraries (torchvision rounds its base anchors): even sizes, ratios 1/4,
# 1, 4; detectron2's non-aligned ROIAlign with torchvision's sampling ratio
# group norm keeps a randomly initialised ResNet-50's activations in range (frozen batch norm with
# untrained statistics lets them grow through 50 layers until every score saturates)
ANCHORS = {"anchor_sizes": [[32], [64], [128], [256], [512]], "anchor_ratios": [0.25, 1.0, 4.0]}
ANCHORS["norm"] = "gn"
LIMITS = {"detections_per_image": 50, "score_thresh": 0.1, "rpn_post_nms_top_n_test": 300}


@needs_detectron2
def test_the_key_map_gives_torchvision_the_same_detections_as_detectron2():
    from detectron2.modeling import build_model as build_detectron2

    from pipeline.models.detectron2 import Detectron2Model, detectron2_config

    torch.manual_seed(0)
    block = Detectron2Config(**ANCHORS, **LIMITS)
    c = detectron2_config(block, 3)
    for head in (c.MODEL.ROI_BOX_HEAD, c.MODEL.ROI_MASK_HEAD):
        head.POOLER_TYPE, head.POOLER_SAMPLING_RATIO = "ROIAlign", 2
    d2 = build_detectron2(c).eval()
    torch.nn.init.normal_(d2.roi_heads.box_predictor.cls_score.weight, std=0.02)  # spread scores
    mapped, unused = detectron2_to_torchvision(d2.state_dict())
    assert unused == []

    settings = detectron2_settings(c.MODEL.PIXEL_MEAN, c.MODEL.PIXEL_STD)
    tv_block = MaskRCNNConfig(**ANCHORS, **LIMITS, **settings)
    tv = build_model(ModelConfig(maskrcnn=tv_block), ["a", "b", "c"], "maskrcnn").eval()
    tv.load_state_dict(mapped)

    ours = Detectron2Model(block, ["a", "b", "c"]).eval()
    ours.load_state_dict(d2.state_dict())
    object.__setattr__(ours, "_net", d2)  # the non-aligned pooler configured above

    image = torch.rand(3, 128, 160)  # RGB: conv1's channel order matters
    (expected,), (got,) = ours.predict([image]), tv.predict([image])
    assert len(expected.boxes) == len(got.boxes) == LIMITS["detections_per_image"]
    assert np.array_equal(expected.labels, got.labels)
    assert np.allclose(expected.scores, got.scores, atol=1e-4)
    assert np.array_equal(expected.boxes, got.boxes)
    assert all(np.array_equal(a, b) for a, b in zip(expected.masks, got.masks))


@needs_detectron2
def test_model_zoo_pickles_load_into_the_family_with_new_class_heads(tmp_path):
    import pickle

    from pipeline.config import load_config
    from pipeline.models.checkpoints import load_weights

    block = load_config(REPO / "configs" / "kaggle_gpu_d2.yaml").model.detectron2
    coco = build_model(
        ModelConfig(family="detectron2", detectron2=block), list("x" * 80), "detectron2"
    )
    coco = {k: v.numpy() for k, v in coco.state_dict().items()}
    with open(tmp_path / "model_final_f10217.pkl", "wb") as f:
        pickle.dump({"model": coco, "__author__": "Detectron2 Model Zoo"}, f)
    model = build_model(
        ModelConfig(family="detectron2", detectron2=block), ["a", "b", "c"], "detectron2"
    )
    summary = load_weights(model, tmp_path / "model_final_f10217.pkl")
    assert "new, as shapes differ: roi_heads.box_predictor.cls_score.weight" in summary
    kept = "backbone.bottom_up.res3.1.conv2.weight"
    assert np.array_equal(model.state_dict()[kept].numpy(), coco[kept])


CHAIN = [  # random weights, no pretraining: the family through fine-tuning and the later stages
    *TINY_DATA,
    *SHORT_TRAINING,
    "convert.livecell=false",
    "finetune.init=random",
    "model.family=detectron2",
    "model.detectron2.norm=gn",
    "model.detectron2.detections_per_image=50",
    "predict.models=[detectron2]",
    "predict.tta=[none,hflip]",
    "tune.rounds=1",
]


@needs_detectron2
@pytest.mark.slow
def test_the_family_trains_predicts_tunes_and_submits_on_the_embedded_data(tmp_path):
    chain = run_chain(tmp_path, make_config(), CHAIN)
    checkpoint = torch.load(
        tmp_path / "finetune" / "detectron2" / "fold0" / "model_final.pth", weights_only=True
    )
    assert checkpoint["family"] == "detectron2"
    assert "roi_heads.mask_head.predictor.weight" in checkpoint["model"]  # detectron2's names
    predictions = load_predictions(tmp_path / "predictions" / "detectron2" / "test.npz")
    assert sum(len(pred) for pred in predictions.values()) > 0
    assert set(read_submission(tmp_path / "submission.csv")["id"]) == set(predictions)
    report = json.loads(chain.report("test", "detectron2").read_text())
    assert 0.0 <= report["map_iou"]["score"] <= 1.0


@needs_detectron2
@pytest.mark.slow
def test_the_family_trains_under_ddp_with_two_cpu_processes(tmp_path):
    import os
    import subprocess
    import sys

    from test_engine import workspace

    config, base = workspace(tmp_path)
    family = ["model.family=detectron2", "predict.models=[detectron2]", "model.detectron2.norm=gn"]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "pipeline", "finetune", "-c", str(config), *base, *family,
        "finetune.init=random", "finetune.folds=[1]", "finetune.solver.max_iter=2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = torch.load(
        tmp_path / "work" / "finetune" / "detectron2" / "fold1" / "checkpoint.pth",
        weights_only=True,
    )
    assert checkpoint["iteration"] == 2 and len(checkpoint["rng"]) == 2  # both processes
