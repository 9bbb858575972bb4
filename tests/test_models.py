"""The model interface: family registry, the Mask R-CNN family (builder, box-cropped inference
against torchvision), checkpoints (weight loading, old checkpoints)."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection.roi_heads import paste_masks_in_image

from pipeline.cli import main as cellpipe
from pipeline.config import MaskRCNNConfig, ModelConfig, WatershedConfig, load_config
from pipeline.core.errors import CellpipeError
from pipeline.models import CellModel, build_model, families, family_class, register
from pipeline.models.checkpoints import checkpoint_meta, load_model, load_weights, read_checkpoint
from pipeline.models.maskrcnn import BACKBONES, torchvision_maskrcnn
from pipeline.models.rcnn import crop_mask_probs

TINY = MaskRCNNConfig(
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


def models(block: MaskRCNNConfig = TINY, scale: float = 1.0) -> ModelConfig:
    return ModelConfig(maskrcnn=block, scale=scale)


def maskrcnn(block: MaskRCNNConfig = TINY, classes=("a", "b"), scale: float = 1.0) -> CellModel:
    return build_model(models(block, scale), list(classes))


def test_families_are_registered_with_their_config_blocks():
    listed = families()
    assert set(listed) == set(ModelConfig.families()) and "maskrcnn" in listed
    assert all(issubclass(cls, CellModel) and cls.family == name for name, cls in listed.items())
    blocks = ModelConfig()
    assert all(cls.config_class is type(blocks.block(name)) for name, cls in listed.items())
    assert [name for name, cls in listed.items() if not cls.config_class.trainable] == ["watershed"]
    with pytest.raises(ValueError, match="model.maskrcnn is no"):
        register(
            type("Other", (CellModel,), {"family": "maskrcnn", "config_class": WatershedConfig})
        )
    with pytest.raises(CellpipeError, match="unknown model family 'yolo'; known: maskrcnn"):
        family_class("yolo")
    with pytest.raises(CellpipeError, match="config model: unknown family 'yolo'"):
        load_config(overrides=["model.family=yolo"])
    with pytest.raises(CellpipeError, match="grid.score has 0.01, below the score floor 0.05"):
        load_config(overrides=["model.maskrcnn.grid.score=[0.01,0.5]"])


def test_registry_errors_name_the_known_entries():
    with pytest.raises(CellpipeError, match="unknown backbone 'vgg16'.*resnet18_fpn"):
        maskrcnn(TINY.model_copy(update={"backbone": "vgg16"}))
    with pytest.raises(ValueError, match="registered twice"):
        BACKBONES.register("resnet18_fpn")(lambda cfg: None)
    with pytest.raises(CellpipeError, match="5 levels"):
        maskrcnn(TINY.model_copy(update={"anchor_sizes": [[8], [16]]}))
    with pytest.raises(CellpipeError, match="same number of sizes"):
        maskrcnn(TINY.model_copy(update={"anchor_sizes": [[8, 9], [16], [32], [64], [128]]}))
    with pytest.raises(CellpipeError, match="at least one class"):
        maskrcnn(classes=())


def test_dense_cell_settings_and_native_resolution():
    cfg = TINY.model_copy(update={"anchor_sizes": [[4, 9, 17]], "trainable_layers": 2})
    model = maskrcnn(cfg, classes="abc").eval()
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


def test_predict_maps_back_to_input_pixels():
    torch.manual_seed(0)
    model = maskrcnn().eval()
    image = torch.rand(1, 80, 100)
    (native,) = model.predict([image])
    assert native.shape == (80, 100) and len(native) > 0
    assert native.labels.min() >= 1 and native.labels.max() <= 2
    for box, mask in zip(native.boxes, native.masks):
        assert mask.shape == (box[3] - box[1], box[2] - box[0]) and mask.dtype == np.uint8
    halved = maskrcnn(scale=0.5).eval()
    halved.load_state_dict(model.state_dict())
    (half,) = halved.predict([image])
    small = torch.nn.functional.interpolate(
        image[None], scale_factor=0.5, mode="bilinear", antialias=True
    )[0]
    reference_model = torchvision_maskrcnn(TINY, 3).eval()  # the same keys: torchvision's
    reference_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        (reference,) = reference_model([small])  # torchvision's own path at the small size
    keep = reference["scores"] > 0.0
    assert len(half) == int(keep.sum())
    top = np.argsort(-half.scores)[:10]
    expected = (
        reference["boxes"][keep][torch.argsort(-reference["scores"][keep])][:10] * 2
    ).numpy()
    centres = (half.boxes[top, :2] + half.boxes[top, 2:]) / 2
    assert np.abs(centres - (expected[:, :2] + expected[:, 2:]) / 2).max() < 4  # mask padding


def _save_checkpoint(path, model, classes):
    meta = checkpoint_meta(models(model.cfg), "maskrcnn", classes)
    torch.save({"model": model.state_dict(), **meta, "iteration": 7}, path)


def test_load_weights_from_a_cellpipe_checkpoint(tmp_path):
    torch.manual_seed(1)
    source = maskrcnn(classes=["cell"])
    _save_checkpoint(tmp_path / "one.pth", source, ["cell"])
    target = maskrcnn(classes="abc")
    message = load_weights(target, tmp_path / "one.pth")
    assert "class heads new" in message and "iteration 7" in message
    for key, value in source.state_dict().items():
        if "box_predictor" in key or "mask_fcn_logits" in key:
            assert not torch.equal(value, target.state_dict()[key]) or value.numel() == 0
        else:
            assert torch.equal(value, target.state_dict()[key]), key
    same = maskrcnn(classes=["cell"])
    assert "class heads kept" in load_weights(same, tmp_path / "one.pth")
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in source.state_dict().items())
    model = load_model(tmp_path / "one.pth")
    assert model.classes == ["cell"] and not model.training and model.family == "maskrcnn"
    serving = TINY.model_copy(update={"detections_per_image": 50, "score_thresh": 0.3})
    model = load_model(tmp_path / "one.pth", expected=models(serving))  # inference settings
    assert (model.roi_heads.detections_per_img, model.roi_heads.score_thresh) == (50, 0.3)
    with pytest.raises(
        CellpipeError, match="maskrcnn.backbone: 'resnet18_fpn' there, 'resnet34_fpn' here"
    ):
        load_model(
            tmp_path / "one.pth",
            expected=models(TINY.model_copy(update={"backbone": "resnet34_fpn"})),
        )
    other = maskrcnn(TINY.model_copy(update={"fpn_channels": 48}), classes=["cell"])
    with pytest.raises(CellpipeError, match="fpn_channels: 32 there, 48 here"):
        load_weights(other, tmp_path / "one.pth")


def test_load_weights_from_torchvision_state_dicts(tmp_path):
    r50 = MaskRCNNConfig(norm="frozen_bn", trainable_layers=3)
    coco_like = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91
    )
    torch.save(coco_like.state_dict(), tmp_path / "coco.pth")
    model = maskrcnn(r50, classes="abc")
    message = load_weights(model, tmp_path / "coco.pth")
    loaded, total = (int(v) for v in message.split(": ")[1].split(" tensors")[0].split(" of "))
    assert total - loaded == 10  # box and mask class heads (4 + 2), RPN anchor-count layers (4)
    body = model.state_dict()["backbone.body.layer2.0.conv1.weight"]
    assert torch.equal(body, coco_like.state_dict()["backbone.body.layer2.0.conv1.weight"])

    imagenet = torchvision.models.resnet18(weights=None)
    torch.save(imagenet.state_dict(), tmp_path / "resnet18.pth")
    light = maskrcnn(TINY.model_copy(update={"norm": "frozen_bn"}), classes=["cell"])
    load_weights(light, tmp_path / "resnet18.pth")
    assert torch.equal(light.backbone.body.conv1.weight, imagenet.conv1.weight)

    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CellpipeError, match="no tensor in .* matches"):
        load_weights(light, tmp_path / "other.pth")
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CellpipeError, match="cannot read weights"):
        load_weights(light, tmp_path / "broken.pth")
    with pytest.raises(CellpipeError, match="missing weights file"):
        load_weights(light, tmp_path / "absent.pth")


def torch_file(path: Path, legacy: bool = False) -> bytes:
    """A real torch.save file (the zip archive, or the pickle stream of torch < 1.6)."""
    state = {"model": {"w": torch.arange(4096.0)}, "iteration": 3}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path.read_bytes()


def newer_torch_file(folder: Path) -> Path:
    """A torch.save file that says it was written by a torch newer than this one: torch.load
    fails with its own RuntimeError, no fault of the file."""
    good, newer = folder / "good.pth", folder / "newer.pth"
    torch_file(good)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(newer, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, b"99\n" if info.filename.endswith("/version") else data)
    return newer


def blank_header(archive: bytes, member: str) -> bytes:
    """A zip archive with the local header of its member named `...member` zeroed."""
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        start = next(i.header_offset for i in zf.infolist() if i.filename.endswith(member))
    return archive[:start] + bytes(30) + archive[start + 30 :]


# the first pickle of a torch < 1.6 file: its magic number, followed by nothing in a truncated one
LEGACY_MAGIC = len(pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2))
# a damaged or foreign file: what torch.load raises for it (None: refused by its first bytes, as
# torch.load of a text file raises KeyError, IndexError or UnpicklingError by its first letter),
# and what of that message the one line keeps (past the first line of a multi-line one)
DAMAGED = {
    "truncated": (
        lambda good, tmp: good[: len(good) // 2],
        zipfile.BadZipFile,
        "truncated or damaged (File is not a zip file)",
    ),
    "truncated in its pickle, torch < 1.6": (
        lambda good, tmp: torch_file(tmp / "legacy.pth", legacy=True)[:LEGACY_MAGIC],
        EOFError,
        ": EOFError",
    ),
    "truncated in its tensors, torch < 1.6": (
        lambda good, tmp: torch_file(tmp / "legacy.pth", legacy=True)[:-100],
        RuntimeError,
        "unexpected EOF, expected 100 more bytes. The file might be corrupted.",
    ),
    "pickle of no tensors": (
        lambda good, tmp: b"\x80\x04" + bytes(range(256)),
        pickle.UnpicklingError,
        "Weights only load failed. In PyTorch 2.6, we changed the default value of the "
        "`weights_only` argument in `torch.load` from `False` to `True`. Re-running",  # line 1
    ),
    "damaged": (
        lambda good, tmp: blank_header(good, "/data/0"),
        RuntimeError,
        "failed reading file data/0: invalid header or archive is corrupted",
    ),
    "another zip": (
        lambda good, tmp: (tmp / "other.zip").read_bytes(),
        RuntimeError,
        "file in archive is not in a subdirectory: notes.txt",
    ),
    "text": (lambda good, tmp: b"hello: weights\n", None, "neither a zip archive nor a pickle"),
    "empty": (lambda good, tmp: b"", None, "an empty file, not a torch.save file"),
}


@pytest.mark.parametrize("kind", DAMAGED)
def test_a_damaged_weights_file_is_one_line_with_its_cause(tmp_path, capsys, kind):
    make, raised, said = DAMAGED[kind]
    good = torch_file(tmp_path / "good.pth")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("notes.txt", "not weights")
    path = tmp_path / "bad.pth"
    path.write_bytes(make(good, tmp_path))
    assert cellpipe(["import-weights", str(path), str(tmp_path / "init.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: cannot read weights {path}: " in err, err
    assert said in err, err
    with pytest.raises(CellpipeError) as caught:
        read_checkpoint(path)
    if raised is None:
        assert caught.value.__cause__ is None
    else:
        assert type(caught.value.__cause__) is raised
    assert not (tmp_path / "init.pth").exists()


def test_the_weights_file_of_a_newer_torch_is_not_called_unreadable(tmp_path, capsys, monkeypatch):
    """torch's own incompatibility is no fault of the file: its error goes on as it is (exit 1),
    as does running out of memory (tests/test_errors.py)."""
    newer = newer_torch_file(tmp_path)
    with pytest.raises(RuntimeError, match="Attempted to read a PyTorch file with version 99"):
        read_checkpoint(newer)
    monkeypatch.delenv("CELLPIPE_DEBUG", raising=False)
    assert cellpipe(["import-weights", str(newer), str(tmp_path / "init.pth")]) == 1
    err = capsys.readouterr().err
    assert "cannot read weights" not in err and "error: RuntimeError: " in err, err
    assert "version 99, but the maximum supported version for reading is" in err
    assert read_checkpoint(tmp_path / "good.pth")["iteration"] == 3  # the copy is what changed
