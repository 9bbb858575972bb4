"""Family `cellpose`: pretrained weights fetched from a stub package index by real pip, the CPnet
against a cellpose-style reference written here, the scellseg key map, preprocessing, training,
prediction and zero-shot use."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.cli import main as cellpipe
from pipeline.config import load_config
from pipeline.core import pretrained
from pipeline.core.errors import CellpipeError
from pipeline.core.packages import Package
from pipeline.models import build_model
from pipeline.models.cellpose import CellposeModel
from pipeline.models.checkpoints import load_weights

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
    loaded = len(stored)  # every tensor of the file; new: the class head (and scellseg's diameters)
    assert summary.endswith(f"{loaded} of {own} tensors")
    assert own - loaded == (2 if layout == "cellpose" else 4)
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


def test_other_weights_are_refused(tmp_path):
    torch.save({"backbone.body.conv1.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CellpipeError, match="no tensor in .* matches the cellpose model"):
        load_weights(tiny_model(), tmp_path / "other.pth")
