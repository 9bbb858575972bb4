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

from pipeline.cli import main as cellpipe
from pipeline.core import pretrained
from pipeline.core.packages import Package

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
