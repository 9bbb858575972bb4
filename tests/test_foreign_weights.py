"""Weights from detectron2 into the torchvision `maskrcnn` family: the key map against detectron2's
own parameter list (a fixture generated once from detectron2), class order, input normalisation,
safe loading, and `cellpipe import-weights`."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.cli import main as cellpipe
from pipeline.config import MaskRCNNConfig, ModelConfig
from pipeline.core.errors import CellpipeError
from pipeline.models import build_model
from pipeline.models.checkpoints import load_weights
from pipeline.models.foreign_weights import (
    DETECTRON2_PIXEL_MEAN,
    DETECTRON2_PIXEL_STD,
    detectron2_settings,
    detectron2_to_torchvision,
    read_pickle_arrays,
)

FIXTURE = Path(__file__).parent / "fixtures" / "detectron2_mask_rcnn_R_50_FPN.json"
# detectron2's R50-FPN as torchvision's: one anchor size per level, three ratios, frozen BN
D2_LIKE = MaskRCNNConfig(
    anchor_sizes=[[32], [64], [128], [256], [512]],
    anchor_ratios=[0.5, 1.0, 2.0],
    **detectron2_settings(),
)


def detectron2_state(seed: int = 0) -> tuple[dict[str, torch.Tensor], int]:
    """Random tensors with every name and shape of detectron2's R50-FPN Mask R-CNN."""
    fixture = json.loads(FIXTURE.read_text())
    generator = torch.Generator().manual_seed(seed)
    state = {
        k: torch.randn(shape, generator=generator) for k, shape in fixture["parameters"].items()
    }
    return state, int(fixture["num_classes"])


def maskrcnn(cfg: MaskRCNNConfig, n_classes: int):
    classes = [f"c{k}" for k in range(n_classes)]
    return build_model(ModelConfig(family="maskrcnn", maskrcnn=cfg), classes, "maskrcnn")


def test_the_key_map_covers_detectron2s_r50_fpn_with_torchvisions_names_and_shapes():
    state, n_classes = detectron2_state()
    mapped, unused = detectron2_to_torchvision(state)
    assert unused == []
    own = maskrcnn(D2_LIKE, n_classes).state_dict()
    assert sorted(mapped) == sorted(own)
    wrong = {
        k: (tuple(v.shape), tuple(own[k].shape))
        for k, v in mapped.items()
        if v.shape != own[k].shape
    }
    assert wrong == {}
    unknown, _ = detectron2_to_torchvision({"pixel_mean": torch.zeros(3, 1, 1), **state})
    assert len(unknown) == len(mapped)


def test_background_moves_from_last_to_first_and_gets_empty_rows():
    state, n_classes = detectron2_state()
    mapped, _ = detectron2_to_torchvision(state)
    cls = state["roi_heads.box_predictor.cls_score.weight"]
    got = mapped["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(got[0], cls[n_classes]) and torch.equal(got[1:], cls[:n_classes])
    deltas = mapped["roi_heads.box_predictor.bbox_pred.weight"]
    assert not deltas[:4].any()
    assert torch.equal(deltas[4:], state["roi_heads.box_predictor.bbox_pred.weight"])
    logits = mapped["roi_heads.mask_predictor.mask_fcn_logits.bias"]
    assert logits[0] == 0 and torch.equal(logits[1:], state["roi_heads.mask_head.predictor.bias"])
    assert torch.equal(
        mapped["backbone.body.layer3.5.bn2.running_var"],
        state["backbone.bottom_up.res4.5.conv2.norm.running_var"],
    )


def test_the_stem_sees_what_detectron2s_stem_saw():
    """detectron2 convolves BGR 0-255 pixels normalised by its mean / std; the imported conv1 on
    RGB 0-1 pixels normalised by the imported settings gives the same features."""
    state, _ = detectron2_state()
    mapped, _ = detectron2_to_torchvision(state)
    rgb = torch.rand(1, 3, 20, 24)
    mean, std = torch.tensor(DETECTRON2_PIXEL_MEAN), torch.tensor(DETECTRON2_PIXEL_STD) * 40
    bgr = (255 * rgb.flip(1) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    expected = F.conv2d(bgr, state["backbone.bottom_up.stem.conv1.weight"], padding=3)
    settings = detectron2_settings(DETECTRON2_PIXEL_MEAN, tuple(std.tolist()))
    ours = (rgb - torch.tensor(settings["pixel_mean"]).view(1, 3, 1, 1)) / torch.tensor(
        settings["pixel_std"]
    ).view(1, 3, 1, 1)
    got = F.conv2d(ours, mapped["backbone.body.conv1.weight"], padding=3)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_stride_in_1x1_moves_the_stride_and_keeps_the_feature_sizes():
    body = maskrcnn(D2_LIKE, 1).backbone.body
    default = maskrcnn(MaskRCNNConfig(), 1).backbone.body
    for name in ("layer2", "layer3", "layer4"):
        first, plain = getattr(body, name)[0], getattr(default, name)[0]
        assert (first.conv1.stride, first.conv2.stride) == ((2, 2), (1, 1))
        assert (plain.conv1.stride, plain.conv2.stride) == ((1, 1), (2, 2))
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        shapes = [tuple(v.shape) for v in body.eval()(image).values()]
        assert shapes == [tuple(v.shape) for v in default.eval()(image).values()]


def test_detectron2_weights_load_as_they_are_with_their_settings(tmp_path):
    state, n_classes = detectron2_state()
    torch.save({"model": state, "iteration": 90000}, tmp_path / "model_final.pth")
    with open(tmp_path / "model_final.pkl", "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "x"}, f)
    for name in ("model_final.pth", "model_final.pkl"):
        model = maskrcnn(D2_LIKE, n_classes)
        assert load_weights(model, tmp_path / name).endswith("307 of 307 tensors")
        assert torch.equal(
            model.state_dict()["backbone.fpn.layer_blocks.2.0.weight"],
            state["backbone.fpn_output4.weight"],
        )
    plain = maskrcnn(
        MaskRCNNConfig(anchor_sizes=D2_LIKE.anchor_sizes, anchor_ratios=[0.5, 1, 2]), 3
    )
    with pytest.raises(
        CellpipeError,
        match=r"model_final\.pth: detectron2 weights need model\.maskrcnn\.pixel_std=\[0\.0039"
        r".*stride_in_1x1=true",
    ):
        load_weights(plain, tmp_path / "model_final.pth")
    resnest = {**state, "backbone.bottom_up.res5.0.conv2.radix": torch.zeros(2)}
    torch.save({"model": resnest}, tmp_path / "resnest.pth")
    with pytest.raises(CellpipeError, match=r"1 detectron2 tensors .*res5\.0\.conv2\.radix"):
        load_weights(maskrcnn(D2_LIKE, n_classes), tmp_path / "resnest.pth")


class RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_that_carries_code_is_refused_and_not_run(tmp_path):
    payload = RunsCode()
    payload.marker = str(tmp_path / "ran")
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": {"conv.weight": np.zeros(3, np.float32)}, "x": payload}, f)
    model = maskrcnn(D2_LIKE, 3)
    with pytest.raises(CellpipeError, match=r"evil\.pkl: refusing pathlib\.Path\.touch"):
        load_weights(model, tmp_path / "evil.pkl")
    assert not (tmp_path / "ran").exists()
    torch.save({"model": {"w": torch.zeros(1)}, "x": payload}, tmp_path / "evil.pth")
    with pytest.raises(CellpipeError, match="cannot read weights"):
        load_weights(model, tmp_path / "evil.pth")
    assert not (tmp_path / "ran").exists()


def test_import_weights_writes_an_init_file_and_says_what_to_train_with(tmp_path, capsys):
    state, n_classes = detectron2_state()
    torch.save({"model": state}, tmp_path / "livecell.pth")
    dest = tmp_path / "init.pth"
    assert cellpipe(["import-weights", str(tmp_path / "livecell.pth"), str(dest)]) == 0
    out = capsys.readouterr().out
    assert "303 of 307 tensors; new, as shapes differ: rpn.head.cls_logits.weight" in out
    assert "model.maskrcnn.stride_in_1x1=true" in out
    model = maskrcnn(D2_LIKE, n_classes)
    assert load_weights(model, dest).endswith("307 of 307 tensors")
    with pytest.raises(CellpipeError, match="needs model.maskrcnn.pixel_std"):
        load_weights(maskrcnn(MaskRCNNConfig(), n_classes), dest)
    assert cellpipe(["import-weights", str(tmp_path / "absent.pth"), str(dest)]) == 2
    assert "missing weights file" in capsys.readouterr().err


# a damaged model-zoo pickle: what the unpickler raises, and what the one line keeps of it
DAMAGED_PICKLES = {
    "truncated": (
        lambda good: good[: len(good) // 2],
        pickle.UnpicklingError,
        "pickle data was truncated",
    ),
    "empty": (lambda good: b"", EOFError, "Ran out of input"),
    "text": (lambda good: b"weights: none\n", pickle.UnpicklingError, "invalid load key, 'w'."),
    "text read as an int opcode": (
        lambda good: b"Iris weights\n",
        ValueError,
        "could not convert string to int",
    ),
}


@pytest.mark.parametrize("kind", DAMAGED_PICKLES)
def test_a_damaged_pickle_is_one_line_with_its_cause(tmp_path, capsys, kind):
    make, raised, said = DAMAGED_PICKLES[kind]
    good = pickle.dumps({"model": {"conv.weight": np.arange(4096, dtype=np.float32)}})
    path = tmp_path / "model_final.pkl"
    path.write_bytes(make(good))
    assert cellpipe(["import-weights", str(path), str(tmp_path / "init.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: cannot read weights {path}: {said}" in err, err
    with pytest.raises(CellpipeError) as caught:
        read_pickle_arrays(path)
    assert type(caught.value.__cause__) is raised
