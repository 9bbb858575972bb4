"""Family `cellpose`: pretrained weights fetched from a stub package index by real pip, the CPnet
against a cellpose-style reference written here, the scellseg key map, preprocessing, training,
prediction and zero-shot use."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from test_flow_unet import fit_one_image, instances
from test_watershed import discs
from torch import nn

from pipeline.cli import main as cellpipe
from pipeline.config import load_config
from pipeline.core import pretrained
from pipeline.core.errors import CellpipeError
from pipeline.core.flows import FLOW_SCALE, label_flows
from pipeline.core.instances import instance_boxes_and_crops, median_diameter
from pipeline.core.metrics import map_iou
from pipeline.core.packages import Package
from pipeline.core.postprocess import Thresholds, postprocess_image
from pipeline.core.predictions import load_predictions
from pipeline.models import build_model
from pipeline.models.base import SampleInstances
from pipeline.models.cellpose import (
    EXEMPLARS,
    CellposeModel,
    cellpose_input,
    edge_taper,
    skewness,
    tile_starts,
    tiled_maps,
)
from pipeline.models.checkpoints import load_weights, read_checkpoint
from pipeline.models.flow_maps import FlowEnsemble, flow_targets, maps_to_predictions, mean_maps

SDIST_ROOT = "scellseg-0.1.8"
WEIGHTS_MEMBER = "scellseg/assets/pretrained_models/cellpose"


def write_sdist(folder: Path, weights: bytes) -> Path:
    """A find-links folder with a tiny scellseg 0.1.8 sdist holding `weights` where the real one
    holds cellpose's, and a file beside it that must not be extracted."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        f"{SDIST_ROOT}/setup.py": b"from setuptools import setup\n"
        b"setup(name='scellseg', version='0.1.8', packages=[])\n",
        f"{SDIST_ROOT}/PKG-INFO": b"Metadata-Version: 2.1\nName: scellseg\nVersion: 0.1.8\n",
        f"{SDIST_ROOT}/{WEIGHTS_MEMBER}": weights,
        f"{SDIST_ROOT}/scellseg/assets/pretrained_models/hover": b"another network",
    }
    with tarfile.open(folder / f"{SDIST_ROOT}.tar.gz", "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return folder


def state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.fixture
def stub_source(monkeypatch) -> bytes:
    """The known source `cellpose` pointed at the stub's weights (their digest and size)."""
    weights = state_bytes({"extractor.w": torch.arange(6.0)})
    source = pretrained.PretrainedSource(
        Package("scellseg", "0.1.8"),
        sdist=True,
        member=WEIGHTS_MEMBER,
        sha256=hashlib.sha256(weights).hexdigest(),
        size=len(weights),
        about="stub",
    )
    monkeypatch.setitem(pretrained.PRETRAINED, "cellpose", source)
    return weights


def test_fetch_extracts_the_weights_once(tmp_path, stub_source, capsys):
    index = write_sdist(tmp_path / "index", stub_source)
    cache = tmp_path / "cache"
    setting = f"weights.cache={cache}"
    assert cellpipe(["fetch-weights", "cellpose", "--find-links", str(index), setting]) == 0
    assert "cellpose fetched" in capsys.readouterr().out
    assert [p.name for p in cache.iterdir()] == ["cellpose.pth"]  # no archive, no temporary
    assert (cache / "cellpose.pth").read_bytes() == stub_source
    stamp = (cache / "cellpose.pth").stat().st_mtime_ns
    index.joinpath(f"{SDIST_ROOT}.tar.gz").unlink()
    index.rmdir()  # no package anywhere: a second fetch must not need one
    assert cellpipe(["fetch-weights", "cellpose", "--find-links", str(index), setting]) == 0
    assert "cellpose cached" in capsys.readouterr().out
    assert (cache / "cellpose.pth").stat().st_mtime_ns == stamp


def test_fetch_replaces_a_damaged_cached_file(tmp_path, stub_source):
    index = write_sdist(tmp_path / "index", stub_source)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "cellpose.pth").write_bytes(stub_source[:-1] + b"x")
    path, downloaded = pretrained.fetch_weights(
        "cellpose", cache, ["--no-index", "--find-links", str(index)]
    )
    assert downloaded and path.read_bytes() == stub_source


def one_line(err: str, text: str) -> None:
    assert err.count("\n") == 1 and text in err and "Traceback" not in err, err


def test_wrong_digest_is_one_line_and_keeps_nothing(tmp_path):
    index = write_sdist(tmp_path / "index", b"not the weights")
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "pipeline", "fetch-weights", "cellpose"]
    result = subprocess.run(
        [*command, "--find-links", str(index), f"weights.cache={cache}"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    one_line(
        result.stderr,
        f"{WEIGHTS_MEMBER} has sha256 {hashlib.sha256(b'not the weights').hexdigest()}",
    )
    assert not list(cache.iterdir())


def test_fetch_errors_are_one_line(tmp_path, capsys):
    setting = f"weights.cache={tmp_path / 'cache'}"
    assert cellpipe(["fetch-weights", "resnet", setting]) == 2
    one_line(capsys.readouterr().err, "unknown weights 'resnet'; known: cellpose")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cellpipe(["fetch-weights", "cellpose", "--find-links", str(empty), setting]) == 2
    one_line(
        capsys.readouterr().err, "pip download scellseg==0.1.8 failed: No matching distribution"
    )


# --- the network against cellpose's, written here from its description ----------------------


def cellpose_state(nbase: list[int], seed: int = 0, diam_mean: float = 30.0) -> dict:
    """Random tensors under every name and shape of cellpose 3.x's CPnet(nbase, nout=3, sz=3):
    `batchconv` = BN (.0), ReLU, conv (.2); `batchconv0` = BN (.0), 1x1 conv (.1)."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def norm(prefix: str, c: int) -> None:
        state[f"{prefix}.weight"] = 1 + 0.2 * torch.randn(c, generator=g)
        state[f"{prefix}.bias"] = 0.2 * torch.randn(c, generator=g)
        state[f"{prefix}.running_mean"] = 0.2 * torch.randn(c, generator=g)
        state[f"{prefix}.running_var"] = 0.5 + torch.rand(c, generator=g)
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    def conv(prefix: str, c_in: int, c_out: int, size: int) -> None:
        scale = (c_in * size * size) ** -0.5
        state[f"{prefix}.weight"] = scale * torch.randn(c_out, c_in, size, size, generator=g)
        state[f"{prefix}.bias"] = 0.1 * torch.randn(c_out, generator=g)

    def batchconv(prefix: str, c_in: int, c_out: int, size: int = 3) -> None:
        norm(f"{prefix}.0", c_in)
        conv(f"{prefix}.2", c_in, c_out, size)

    def batchconv0(prefix: str, c_in: int, c_out: int) -> None:
        norm(f"{prefix}.0", c_in)
        conv(f"{prefix}.1", c_in, c_out, 1)

    for n in range(len(nbase) - 1):
        p = f"downsample.down.res_down_{n}"
        batchconv0(f"{p}.proj", nbase[n], nbase[n + 1])
        for t in range(4):
            batchconv(f"{p}.conv.conv_{t}", nbase[n] if t == 0 else nbase[n + 1], nbase[n + 1])
    up = [*nbase[1:], nbase[-1]]
    for n in range(1, len(up)):
        p = f"upsample.up.res_up_{n - 1}"
        batchconv(f"{p}.conv.conv_0", up[n], up[n - 1])
        for t in (1, 2, 3):
            batchconv(f"{p}.conv.conv_{t}.conv", up[n - 1], up[n - 1])
            state[f"{p}.conv.conv_{t}.full.weight"] = 0.3 * torch.randn(
                up[n - 1], nbase[-1], generator=g
            )
            state[f"{p}.conv.conv_{t}.full.bias"] = 0.1 * torch.randn(up[n - 1], generator=g)
        batchconv0(f"{p}.proj", up[n], up[n - 1])
    batchconv("output", up[0], 3, 1)
    state["diam_mean"] = torch.tensor([diam_mean])
    state["diam_labels"] = torch.tensor([diam_mean])
    return state


def cellpose_forward(state: dict, x: torch.Tensor) -> torch.Tensor:
    """cellpose's CPnet forward (eval mode) computed from its state dict alone."""

    def bn(prefix: str, x: torch.Tensor) -> torch.Tensor:
        s = {k: state[f"{prefix}.{k}"] for k in ("running_mean", "running_var", "weight", "bias")}
        return F.batch_norm(
            x, s["running_mean"], s["running_var"], s["weight"], s["bias"], eps=1e-5
        )

    def batchconv(prefix: str, x: torch.Tensor) -> torch.Tensor:
        w = state[f"{prefix}.2.weight"]
        return F.conv2d(
            F.relu(bn(f"{prefix}.0", x)), w, state[f"{prefix}.2.bias"], padding=w.shape[-1] // 2
        )

    def batchconv0(prefix: str, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            bn(f"{prefix}.0", x), state[f"{prefix}.1.weight"], state[f"{prefix}.1.bias"]
        )

    def batchconvstyle(prefix: str, style, x, y=None):
        if y is not None:
            x = x + y
        feat = F.linear(style, state[f"{prefix}.full.weight"], state[f"{prefix}.full.bias"])
        return batchconv(f"{prefix}.conv", x + feat[:, :, None, None])

    def resup(prefix: str, x, y, style):
        c = f"{prefix}.conv.conv_"
        x = batchconv0(f"{prefix}.proj", x) + batchconvstyle(
            f"{c}1", style, batchconv(f"{c}0", x), y
        )
        return x + batchconvstyle(f"{c}3", style, batchconvstyle(f"{c}2", style, x))

    n_down = len({k.split(".")[2] for k in state if k.startswith("downsample.")})
    xd = []
    for n in range(n_down):
        p = f"downsample.down.res_down_{n}"
        y = x if n == 0 else F.max_pool2d(xd[-1], 2, 2)
        y = batchconv0(f"{p}.proj", y) + batchconv(
            f"{p}.conv.conv_1", batchconv(f"{p}.conv.conv_0", y)
        )
        xd.append(y + batchconv(f"{p}.conv.conv_3", batchconv(f"{p}.conv.conv_2", y)))
    style = F.avg_pool2d(xd[-1], kernel_size=xd[-1].shape[-2:]).flatten(1)
    style = style / torch.sum(style**2, dim=1, keepdim=True) ** 0.5
    x = resup(f"upsample.up.res_up_{n_down - 1}", xd[-1], xd[-1], style)
    for n in range(n_down - 2, -1, -1):
        x = resup(
            f"upsample.up.res_up_{n}",
            F.interpolate(x, scale_factor=2, mode="nearest"),
            xd[n],
            style,
        )
    return batchconv("output", x)


def scellseg_state(state: dict) -> dict:
    """cellpose's state dict as scellseg 0.1.8 stores it."""
    out = {}
    for name, tensor in state.items():
        if name.startswith("output.0."):
            out[f"tasker.base_bn.{name[len('output.0.') :]}"] = tensor
        elif name.startswith("output.2."):
            out[f"tasker.base_conv.{name[len('output.2.') :]}"] = tensor
        elif not name.startswith("diam_"):
            out[f"extractor.{name}"] = tensor
    return out


TINY_NET = ["model.family=cellpose", "model.cellpose.channels=[4,8,16]"]


def tiny_model(classes=("cell",), *overrides: str) -> CellposeModel:
    cfg = load_config(overrides=[*TINY_NET, *overrides]).model
    return build_model(cfg, list(classes)).eval()


@pytest.mark.parametrize("layout", ["cellpose", "scellseg"])
def test_cellpose_files_load_and_compute_cellpose_outputs(tmp_path, layout):
    state = cellpose_state([2, 4, 8, 16])
    stored = state if layout == "cellpose" else scellseg_state(state)
    torch.save(stored, tmp_path / "weights")
    model = tiny_model(("a", "b"))
    summary = load_weights(model, tmp_path / "weights")
    own = len(model.state_dict())
    loaded = len(stored)  # every tensor of the file; new: the class head, the 4 exemplar tensors
    assert summary.endswith(f"{loaded} of {own} tensors")  # (and scellseg's diameters)
    assert own - loaded == (6 if layout == "cellpose" else 8)
    x = torch.randn(2, 2, 24, 40)
    with torch.no_grad():
        ours = model.net(x)
    want = cellpose_forward(state, x)
    assert ours.shape == (2, 3 + 2, 24, 40)
    torch.testing.assert_close(ours[:, :3], want, atol=1e-4, rtol=1e-4)


def test_weights_made_at_another_diameter_name_the_override(tmp_path):
    torch.save(cellpose_state([2, 4, 8, 16], diam_mean=17.0), tmp_path / "nuclei")
    with pytest.raises(CellpipeError, match=r"need model\.cellpose\.diam_mean=17"):
        load_weights(tiny_model(), tmp_path / "nuclei")
    model = tiny_model(("cell",), "model.cellpose.diam_mean=17")
    assert "of" in load_weights(model, tmp_path / "nuclei")
    assert model.net.diam_mean.item() == 17


def test_import_weights_knows_cellpose_files(tmp_path, capsys):
    state = cellpose_state([2, 4, 8, 16], diam_mean=17.0)
    torch.save(scellseg_state(state) | {"diam_mean": state["diam_mean"]}, tmp_path / "nuclei")
    dest = tmp_path / "init.pth"
    assert cellpipe(["import-weights", str(tmp_path / "nuclei"), str(dest), *TINY_NET]) == 0
    out = capsys.readouterr().out
    assert "weights from" in out and "model.cellpose.diam_mean=17" in out
    with pytest.raises(CellpipeError, match=r"needs model\.cellpose\.diam_mean=17"):
        load_weights(tiny_model(), dest)
    model = tiny_model(("cell",), "model.cellpose.diam_mean=17")
    load_weights(model, dest)
    x = torch.randn(1, 2, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(
            model.net(x)[:, :3], cellpose_forward(state, x), atol=1e-4, rtol=1e-4
        )


def test_other_weights_are_refused(tmp_path):
    torch.save({"backbone.body.conv1.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CellpipeError, match="no tensor in .* matches the cellpose model"):
        load_weights(tiny_model(), tmp_path / "other.pth")


# --- preprocessing, sizes, tiles ------------------------------------------------------------


class IdealCPNet(nn.Module):
    """What a perfect CPnet outputs for bright discs on a dark image, at whatever size the image
    comes: (dy, dx) as FLOW_SCALE x the heat flows of each bright component, cell logits +-6,
    the one class's logit; it records the sizes it was shown."""

    stride = 8

    def __init__(self, sure: float = 6.0):
        super().__init__()
        self.register_buffer("diam_labels", torch.tensor([30.0]))
        self.register_buffer("sure", torch.tensor(sure))  # the cell logits' size
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for image in x[:, 0].float().numpy():
            self.seen.append(image.shape)
            cells, _ = ndimage.label(image > 0.5)
            sure = self.sure.item()
            logits = np.where(cells > 0, sure, -sure)[None]
            out.append(np.concatenate([FLOW_SCALE * label_flows(cells), logits, logits]))
        return torch.from_numpy(np.stack(out).astype(np.float32))


def ideal_model(*overrides: str, sure: float = 6.0) -> CellposeModel:
    model = tiny_model(("cell",), "model.cellpose.tile=0", "model.cellpose.min_size=1", *overrides)
    model.net = IdealCPNet(sure)
    return model


def disc_image(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.where(labels > 0, 0.9, 0.1).astype(np.float32))[None]


def test_test_images_are_sized_so_cells_are_diam_mean_wide():
    labels = discs((64, 80), [(16, 16), (16, 50), (46, 30)], 7)  # diameter about 15 px
    image = disc_image(labels)
    diameter = 2 * np.sqrt((labels == 1).sum() / np.pi)
    model = ideal_model()
    scale = CellposeModel.image_scale([model], image, 1.0)
    assert scale == pytest.approx(30 / diameter, rel=0.05)  # first pass at 1.0 (diam_labels 30)
    assert CellposeModel.image_scale([model], image, 0.5) == pytest.approx(scale / 2, rel=0.05)
    assert CellposeModel.image_scale([model], torch.zeros(1, 32, 32), 1.0) == 1.0  # no cell
    by_labels = ideal_model("model.cellpose.size=labels")
    by_labels.learn_training_set(15.0, [])
    assert CellposeModel.image_scale([by_labels], image, 1.0) == 2.0  # 30 / 15, no first pass
    small = ideal_model("model.cellpose.diam_mean=300")
    assert CellposeModel.image_scale([small], image, 1.0) == 2.5  # within zoom_range
    none = ideal_model("model.cellpose.size=none")
    assert CellposeModel.image_scale([none], image, 0.8) == 0.8
    # exemplar_first_pass: the first pass at the exemplars' median size, then the masks' size
    refined = ideal_model("model.cellpose.size=exemplar_first_pass")
    assert CellposeModel.image_scale([refined], image, 1.0, [10.0, 15.0, 60.0]) == pytest.approx(
        scale, rel=0.05
    )
    assert refined.net.seen == [tuple(-(-int(n * 2.0) // 8) * 8 for n in (64, 80))]  # 30 / 15
    assert CellposeModel.image_scale([refined], image, 1.0) == pytest.approx(scale, rel=0.05)
    assert refined.net.seen[-1] == (64, 80)  # no exemplar: at the labels' size
    exemplar = ideal_model("model.cellpose.size=exemplar")
    assert CellposeModel.image_scale([exemplar], image, 1.0, [15.0]) == 2.0  # no first pass
    assert not exemplar.net.seen
    model.net.seen.clear()
    (pred,) = model.predict([image])
    assert pred.shape == (64, 80)
    seen = tuple(-(-int(n * scale) // 8) * 8 for n in (64, 80))  # resized, padded to 8
    assert model.net.seen[-1] == seen
    thresholds = Thresholds(default=model.cfg.thresholds)
    assert map_iou(labels, postprocess_image(pred, thresholds)[0]) > 0.8


def test_input_is_percentile_normalised_grey_and_a_zero_channel():
    rgb = torch.rand(3, 20, 30) * 0.2 + 0.4
    x = cellpose_input(rgb[None])
    assert x.shape == (1, 2, 20, 30) and not x[0, 1].any()
    grey = rgb.mean(0).flatten()
    assert torch.quantile(x[0, 0].flatten(), 0.01) == pytest.approx(0, abs=1e-5)
    assert torch.quantile(x[0, 0].flatten(), 0.99) == pytest.approx(1, abs=1e-5)
    assert torch.corrcoef(torch.stack([x[0, 0].flatten(), grey]))[0, 1] > 0.999


def test_input_is_inverted_where_flagged_and_skewness_tells_dark_cells():
    # fluorescence: a few bright cells on a dark field; phase contrast: dark cells on a bright one
    field = torch.rand(1, 1, 40, 40) * 0.1
    bright = field.clone()
    bright[..., 5:12, 5:12] += 0.8
    dark = 1 - bright
    assert skewness(bright[:, 0]) > 1 and skewness(dark[:, 0]) < -1
    both = torch.cat([bright, dark])
    as_is = cellpose_input(both)[:, 0]
    flagged = cellpose_input(both, torch.tensor([False, True]))[:, 0]
    assert torch.equal(flagged[0], as_is[0])  # bright cells stay
    assert torch.allclose(flagged[1], 1 - as_is[1])  # dark cells turned bright
    assert flagged[1, 8, 8] > flagged[1, 30, 30]
    assert torch.allclose(cellpose_input(both, True)[:, 0], 1 - as_is)


def fluorescence(seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Bright discs on a dark, noisy field, and their labels."""
    rng = np.random.default_rng(seed)
    labels = discs((96, 96), rng.integers(12, 84, size=(6, 2)).tolist(), 6)
    grey = np.where(labels > 0, 0.8, 0.1) + rng.normal(0, 0.03, labels.shape)
    return torch.from_numpy(grey.clip(0, 1).astype(np.float32))[None], labels


def phase_contrast(seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Dark discs, larger than `fluorescence`'s, on a grey field with bright halos around them,
    so that the grey levels are positively skewed although the cells are dark (as grown colonies
    are)."""
    rng = np.random.default_rng(seed)
    labels = discs((96, 96), rng.integers(14, 82, size=(4, 2)).tolist(), 9)
    ring = ndimage.binary_dilation(labels > 0, iterations=4) & (labels == 0)
    grey = np.where(labels > 0, 0.25, np.where(ring, 1.0, 0.45))
    grey = grey + rng.normal(0, 0.03, labels.shape)
    return torch.from_numpy(grey.clip(0, 1).astype(np.float32))[None], labels


def shown_dark(model: CellposeModel, image: torch.Tensor) -> bool:
    return model.cells_dark(image, model.nearest_exemplar(image))


def test_auto_inverts_as_the_nearest_training_image_whatever_the_skewness():
    torch.manual_seed(0)
    model = tiny_model(("cell",), "model.cellpose.invert=auto")
    test_phase, _ = phase_contrast(10)
    assert skewness(test_phase) > 0  # the skewness rule would leave it as it is
    assert not shown_dark(model, test_phase)  # which is what a model without exemplars does
    samples = [fluorescence(1), None, phase_contrast(2), fluorescence(3), phase_contrast(4)]
    samples.append((torch.full((1, 96, 96), 0.5), np.zeros((96, 96), np.int32)))  # no cell
    model.learn_training_set(30.0, samples)
    assert model.exemplar_sizes[:, 0].gt(0).sum() == 4  # unreadable and cell-less skipped
    assert model.exemplar_dark[:4].tolist() == [False, True, False, True]
    assert shown_dark(model, test_phase)
    assert not shown_dark(model, fluorescence(11)[0])
    # the exemplars travel with the weights
    loaded = tiny_model(("cell",), "model.cellpose.invert=auto")
    loaded.load_state_dict(model.state_dict())
    assert shown_dark(loaded, test_phase) and not shown_dark(loaded, fluorescence(11)[0])
    bright = tiny_model(("cell",), "model.cellpose.invert=auto")
    bright.learn_training_set(30.0, [fluorescence(1)])
    # fold models vote: an image is inverted where most find its cells dark
    shown, _ = CellposeModel.image_input([model, bright, loaded], test_phase, 1.0)
    assert torch.equal(shown, 1 - test_phase)
    loaded.load_state_dict(bright.state_dict())
    assert not shown_dark(loaded, test_phase)  # only bright exemplars now
    shown, _ = CellposeModel.image_input([model, bright, loaded], test_phase, 1.0)
    assert torch.equal(shown, test_phase)
    # size: exemplar takes the nearest exemplar's median diameter (the median over models)
    for kind, query in ((phase_contrast, test_phase), (fluorescence, fluorescence(11)[0])):
        areas = np.bincount(kind(2)[1].ravel())[1:]
        want = 30 / median_diameter(areas[areas > 0])
        model.cfg = model.cfg.model_copy(update={"size": "exemplar"})
        assert CellposeModel.image_input([model], query, 1.0)[1] == pytest.approx(want, rel=0.02)
        assert CellposeModel.image_input([model], query, 0.5)[1] == pytest.approx(
            want / 2, rel=0.02
        )
    many = tiny_model(("cell",), "model.cellpose.invert=auto")
    many.learn_training_set(30.0, [phase_contrast(k) for k in range(3 * EXEMPLARS)])
    assert many.exemplar_sizes[:, 0].gt(0).all()


def test_training_crops_are_inverted_where_their_labels_say_cells_are_dark():
    torch.manual_seed(0)
    auto = tiny_model(("cell",), "model.cellpose.invert=auto").train()
    image, labels = phase_contrast(5)
    cells = torch.from_numpy(labels > 0)
    assert auto.crop_dark(image, cells) and not auto.crop_dark(1 - image, cells)
    empty = torch.zeros_like(cells)
    assert auto.crop_dark(image, empty) == bool(skewness(image) < 0)  # no cell: skewness
    targets = [flow_targets(instances(labels, [1] * labels.max()))] * 2
    plain = tiny_model(("cell",)).train()
    plain.load_state_dict(auto.state_dict())
    as_auto = auto([image, 1 - image], targets)
    as_bright = plain([1 - image, 1 - image], targets)
    for name, loss in as_auto.items():
        assert loss.item() == pytest.approx(as_bright[name].item(), rel=1e-4), name


def test_the_model_inverts_as_its_config_says_in_training_and_prediction():
    torch.manual_seed(0)
    inverted = tiny_model(("cell",), "model.cellpose.invert=always")
    plain = tiny_model()
    plain.load_state_dict(inverted.state_dict())
    image = torch.rand(1, 48, 40)
    with torch.no_grad():
        trained_on = inverted.batch_maps([image]), plain.batch_maps([1 - image])
    assert torch.allclose(*trained_on, atol=1e-4)
    assert torch.equal(CellposeModel.image_input([inverted], image, 1.0)[0], 1 - image)
    assert torch.equal(CellposeModel.image_input([plain], image, 1.0)[0], image)
    (shown_inverted,), (shown_plain,) = inverted.predict([image]), plain.predict([1 - image])
    assert np.array_equal(shown_inverted.boxes, shown_plain.boxes)
    assert np.allclose(shown_inverted.scores, shown_plain.scores)


class PointNet(nn.Module):
    """A per-pixel network (a 1x1 convolution): tiles blended must give its whole-image maps."""

    stride = 8

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("tile, overlap", [(32, 0.1), (48, 0.25), (64, 0.5)])
def test_tiles_cover_the_image_and_blend_back(tile, overlap):
    for length in (20, 32, 33, 100, 257):
        starts = tile_starts(length, tile, overlap)
        size = min(tile, length)
        assert starts[0] == 0 and starts[-1] + size == length
        assert all(b - a <= size * (1 - overlap) for a, b in zip(starts, starts[1:]))
    torch.manual_seed(0)
    net = PointNet()
    x = torch.randn(1, 2, 100, 70)
    with torch.no_grad():
        whole = tiled_maps(net, x, 0, overlap)
        tiled = tiled_maps(net, x, tile, overlap)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)
    assert (edge_taper(tile, overlap) > 0).all() and edge_taper(tile, overlap).max() == 1


def test_pretrained_maps_with_tiles_stay_close_to_whole_image_maps():
    torch.manual_seed(0)
    model = tiny_model(("cell",), "model.cellpose.tile=32", "model.cellpose.amp=false")
    labels = discs((70, 90), [(20, 20), (20, 60), (50, 35)], 9)
    image = disc_image(labels)
    tiled = model.image_maps(image, 1.0)
    model.cfg = model.cfg.model_copy(update={"tile": 0})
    whole = model.image_maps(image, 1.0)
    assert tiled.shape == whole.shape == (4, 70, 90)
    assert torch.corrcoef(torch.stack([tiled.flatten(), whole.flatten()]))[0, 1] > 0.8


# --- training, ensembles, zero-shot through the stages ---------------------------------------


def cell_instances(labels, classes):
    _, boxes, crops = instance_boxes_and_crops(labels)
    return SampleInstances(labels.shape, np.asarray(boxes, np.int64), np.asarray(classes), crops)


def test_a_pretrained_start_learns_an_image_with_its_classes(tmp_path):
    torch.manual_seed(0)
    torch.save(cellpose_state([2, 4, 8, 16]), tmp_path / "cellpose")
    labels = discs((48, 64), [(14, 14), (14, 44), (36, 26)], 9)
    image = disc_image(labels)
    image[0][torch.from_numpy(labels == 2)] = 0.6  # class b: dimmer cells
    model = tiny_model(("a", "b"), "model.cellpose.tile=0", "model.cellpose.size=none")
    load_weights(model, tmp_path / "cellpose")
    targets = CellposeModel.target_maker(model.cfg)(cell_instances(labels, [1, 2, 1]))
    # 150 steps: batch norm's running statistics (momentum 0.05) follow by then
    first, last, losses = fit_one_image(model, image, targets, 150)
    assert set(losses) == {"loss_cellprob", "loss_flows", "loss_classes"}
    assert last < first / 3
    model.eval()
    (pred,) = model.predict([image])
    painted, kept = postprocess_image(pred, Thresholds(default=model.cfg.thresholds))
    assert map_iou(labels, painted) > 0.5
    assert sorted(pred.labels[kept].tolist()) == [1, 1, 2]


def test_fold_models_average_their_maps_and_equal_ones_count_once():
    folds = [ideal_model(sure=sure) for sure in (6.0, 0.5)]
    twin = copy.deepcopy(folds[0])
    assert CellposeModel.combine([folds[0], twin]) == [folds[0]]  # zero-shot folds: one model
    (ensemble,) = CellposeModel.combine([folds[0], twin, folds[1]])
    assert isinstance(ensemble, FlowEnsemble) and len(ensemble.members) == 2
    labels = discs((48, 64), [(14, 14), (14, 44), (36, 26)], 9)
    image = disc_image(labels)
    scale = CellposeModel.image_scale(folds, image, 1.0)  # a first pass of the first fold
    assert len(folds[0].net.seen) == 1 and not folds[1].net.seen
    mean = mean_maps(folds, image, scale, ["none"])
    (got,) = ensemble.predict([image])
    want = maps_to_predictions(mean, folds[0].cfg)
    assert len(got) == len(want) == 3
    np.testing.assert_array_equal(got.boxes, want.boxes)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    alone = maps_to_predictions(mean_maps(folds[:1], image, scale, ["none"]), folds[0].cfg)
    assert (got.scores < alone.scores - 0.02).all()  # the unsure member pulls the mean down
    with pytest.raises(CellpipeError, match="cellpose models of one ensemble need one config"):
        CellposeModel.combine([folds[0], tiny_model(("a", "b"))])


CHAIN = [
    "prepare.synthetic.train_images_per_type=2",
    "prepare.synthetic.samples_per_type=2",
    "prepare.synthetic.test_images=2",
    "prepare.synthetic.semi_supervised_images=1",
    "prepare.synthetic.height=96",
    "prepare.synthetic.width=128",
    "convert.livecell=false",
    "folds.n_folds=2",
    *TINY_NET,
    "finetune.solver.eval_period=0",
    "finetune.solver.num_workers=0",
    "finetune.augment.crop=[64,64]",
    "predict.models=[cellpose]",
    "predict.tta=[none]",
]


@pytest.fixture(scope="module")
def zero_shot(tmp_path_factory) -> tuple[Path, dict]:
    """Tiny synthetic data, and cellpose 'trained' for 0 iterations from a cellpose file."""
    work = tmp_path_factory.mktemp("zero-shot")
    state = cellpose_state([2, 4, 8, 16], seed=3)
    torch.save(state, work / "cellpose.pth")
    settings = [f"work_dir={work}", f"finetune.init={work / 'cellpose.pth'}", *CHAIN]
    for command in ("prepare", "convert", "folds", "finetune", "predict"):
        assert cellpipe([command, *settings, "finetune.solver.max_iter=0"]) == 0, command
    return work, state


def test_zero_shot_folds_hold_the_pretrained_weights_and_the_labels_diameter(zero_shot):
    work, state = zero_shot
    coco = json.loads((work / "coco" / "train.json").read_text())
    folds = pd.read_csv(work / "folds.csv")
    for k in (0, 1):
        saved = read_checkpoint(work / "finetune" / "cellpose" / f"fold{k}" / "model_best.pth")
        assert saved["iteration"] == 0
        weights = saved["model"]
        for name, tensor in state.items():
            if not name.startswith("diam_"):
                assert torch.equal(weights[f"net.{name}"], tensor), name
        names = set(folds.loc[folds["fold"] != k, "id"])
        ids = {im["id"] for im in coco["images"] if Path(im["file_name"]).stem in names}
        per_image = [
            median_diameter(
                np.array([a["area"] for a in coco["annotations"] if a["image_id"] == i])
            )
            for i in ids
        ]
        assert weights["net.diam_labels"].item() == pytest.approx(np.median(per_image))
    for split in ("oof", "test"):
        assert len(load_predictions(work / "predictions" / "cellpose" / f"{split}.npz")) > 0


def test_fine_tuning_moves_away_from_the_pretrained_start(zero_shot):
    work, state = zero_shot
    settings = [f"work_dir={work}", f"finetune.init={work / 'cellpose.pth'}", *CHAIN]
    tuned = [*settings, "finetune.solver.max_iter=2", "finetune.folds=[0]"]
    assert cellpipe(["finetune", *tuned, "model.cellpose.invert=auto"]) == 0
    weights = read_checkpoint(work / "finetune" / "cellpose" / "fold0" / "model_best.pth")["model"]
    name = "downsample.down.res_down_0.conv.conv_1.2.weight"
    assert not torch.equal(weights[f"net.{name}"], state[name])
    # invert: auto keeps training images with their polarity (the synthetic cells are dark)
    kept = weights["exemplar_sizes"][:, 0] > 0
    assert kept.any() and weights["exemplar_dark"][kept].all()


def test_pretraining_starts_from_cellpose_weights_and_fine_tuning_from_it(tmp_path):
    state = cellpose_state([2, 4, 8, 16], seed=5)
    torch.save(state, tmp_path / "cellpose.pth")
    livecell = [
        "convert.livecell=true",
        "prepare.synthetic.livecell_train_images=2",
        "prepare.synthetic.livecell_val_images=1",
        "prepare.synthetic.livecell_test_images=0",
        "pretrain.solver.num_workers=0",
        "pretrain.solver.eval_period=0",
        "pretrain.augment.crop=[64,64]",
    ]
    settings = [
        f"work_dir={tmp_path}",
        *CHAIN,
        *livecell,
        # a mapping: each family its own start (the Kaggle config's cellpose beside maskrcnn)
        f"pretrain.init={{cellpose: {tmp_path / 'cellpose.pth'}}}",
        "pretrain.solver.max_iter=0",
        "finetune.init=pretrain",
        "finetune.solver.max_iter=0",
        "finetune.folds=[0]",
    ]
    for command in ("prepare", "convert", "folds", "pretrain", "finetune"):
        assert cellpipe([command, *settings]) == 0, command
    for model in ("pretrain/cellpose/model_final.pth", "finetune/cellpose/fold0/model_best.pth"):
        weights = read_checkpoint(tmp_path / model)["model"]
        for name, tensor in state.items():
            if not name.startswith("diam_"):
                assert torch.equal(weights[f"net.{name}"], tensor), (model, name)
