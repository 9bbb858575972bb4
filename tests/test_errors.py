"""How `cellpipe` ends: a user's mistake in one line (exit 2); anything else with its type, whole
message and causes (exit 1), and its traceback with `--debug` or CELLPIPE_DEBUG=1."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import UnidentifiedImageError
from test_models import newer_torch_file

from pipeline.cli import main as cellpipe
from pipeline.cli import report_unexpected
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import image_shape, read_image, write_png
from pipeline.core.postprocess import load_tuned
from pipeline.core.predictions import ImagePredictions, load_predictions, save_predictions

REPO = Path(__file__).parents[1]
HINT = "for the traceback, rerun as `cellpipe --debug import-weights ...` or with CELLPIPE_DEBUG=1"


def run(*argv: str, debug_env: str | None = None, code: str | None = None):
    """`python -m pipeline ARGV` (or `python -c CODE ARGV`) as a user runs it; its result."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CELLPIPE_DEBUG", None)
    if debug_env is not None:
        env["CELLPIPE_DEBUG"] = debug_env
    command = [sys.executable, *(["-c", code] if code else ["-m", "pipeline"]), *argv]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def newer(tmp_path) -> Path:
    return newer_torch_file(tmp_path)


def test_help_lists_debug_and_the_exit_codes():
    done = run("--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "--debug" in text and "CELLPIPE_DEBUG=1" in text
    assert (
        "exit codes: 0 done; 2 a mistake in the input" in text and "1 an unexpected error" in text
    )
    command = " ".join(run("validate", "--help").stdout.split())
    assert "[--debug]" in command and "traceback; CELLPIPE_DEBUG=1 does the same" in command


@pytest.mark.parametrize("debug", [[], ["--debug"]])
def test_a_user_mistake_is_one_line_and_exit_2_even_with_debug(tmp_path, debug):
    done = run(*debug, "folds", f"work_dir={tmp_path}", "folds.n_folds=many")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("cellpipe folds: error: config folds.n_folds: ")


def test_an_unexpected_error_says_its_type_and_whole_message_and_exit_1(newer):
    done = run("import-weights", str(newer), str(newer.with_name("init.pth")))
    assert done.returncode == 1, done.stderr
    first, last = done.stderr.strip().splitlines()
    assert first.startswith("cellpipe import-weights: unexpected error: RuntimeError: ")
    assert "Attempted to read a PyTorch file with version 99" in first
    assert "please upgrade PyTorch" in first  # the end of torch's message
    assert last == f"cellpipe import-weights: {HINT}"
    assert "Traceback" not in done.stderr and "cannot read weights" not in done.stderr


@pytest.mark.parametrize(
    "argv_debug, env_debug",
    [(["--debug", "import-weights"], None), (["import-weights", "--debug"], None)]
    + [(["import-weights"], "1"), (["import-weights"], "0")],
)
def test_debug_prints_the_traceback(newer, capsys, monkeypatch, argv_debug, env_debug):
    monkeypatch.delenv("CELLPIPE_DEBUG", raising=False)
    if env_debug is not None:
        monkeypatch.setenv("CELLPIPE_DEBUG", env_debug)
    dest = newer.with_name("init.pth")
    assert cellpipe([*argv_debug, str(newer), str(dest)]) == 1
    err = capsys.readouterr().err
    if env_debug == "0":
        assert "Traceback" not in err and HINT in err
        return
    assert err.startswith("Traceback (most recent call last):") and HINT not in err
    assert "in read_torch_file" in err  # where it was raised, in cellpipe
    assert err.strip().splitlines()[-1].startswith("RuntimeError: [enforce fail")


def test_the_causes_of_an_unexpected_error_are_kept(capsys):
    try:
        try:
            raise OSError(5, "Input/output error")
        except OSError as e:
            raise RuntimeError("reading the shard failed:\nshard 3 of 8") from e
    except RuntimeError as e:
        report_unexpected("predict", e, debug=False)
    err = capsys.readouterr().err.splitlines()
    assert err[:3] == [
        "cellpipe predict: unexpected error: RuntimeError: reading the shard failed:",
        "shard 3 of 8",
        "  from OSError: [Errno 5] Input/output error",
    ]
    assert err[3].startswith("cellpipe predict: for the traceback, rerun as `cellpipe --debug")


# After its imports, the process may map only 24 MiB more: reading a checkpoint (a .pth, or a
# model-zoo .pkl) of 48 MiB, or an image of as many pixels, then runs out of memory, which is no
# fault of the file.
LIMITED = """
import resource, sys
import numpy, PIL.Image, tifffile, torch
import pipeline.cli, pipeline.models, pipeline.models.checkpoints, pipeline.commands.import_weights
with open("/proc/self/status") as f:
    mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (mapped + 24 * 2**20, resource.RLIM_INFINITY))
"""
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux"
)


@linux_only
@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_running_out_of_memory_is_not_called_a_bad_weights_file(tmp_path, suffix):
    path = tmp_path / f"big{suffix}"
    weights = torch.zeros(12 * 2**20)  # 48 MiB of float32
    if suffix == ".pth":
        torch.save({"model": {"w": weights}}, path)
    else:
        path.write_bytes(pickle.dumps({"model": {"w": weights.numpy()}}))
    code = LIMITED + "sys.exit(pipeline.cli.main(sys.argv[1:]))"
    done = run("import-weights", str(path), str(tmp_path / "init.pth"), code=code)
    assert done.returncode == 1, done.stderr
    assert "cannot read weights" not in done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith("cellpipe import-weights: unexpected error: "), done.stderr
    assert "MemoryError" in first or "can't allocate memory" in first, done.stderr


@linux_only
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_running_out_of_memory_is_not_called_a_bad_image(tmp_path, suffix):
    path = tmp_path / f"big{suffix}"
    write_image(path, np.zeros((7000, 7000), np.uint8))  # 47 MiB of pixels, a small file
    code = LIMITED + "pipeline.core.fileio.read_image(sys.argv[1])"
    done = run(str(path), code=code)
    assert done.returncode == 1 and "MemoryError" in done.stderr.splitlines()[-1], done.stderr
    assert "cannot read image" not in done.stderr


def write_image(path: Path, pixels: np.ndarray) -> bytes:
    """A PNG, or a zlib-compressed TIFF, of `pixels`; its bytes."""
    if path.suffix == ".tif":
        tifffile.imwrite(path, pixels, compression="zlib")
    else:
        write_png(path, pixels)
    return path.read_bytes()


def flip_bytes(data: bytes, start: int, count: int = 64) -> bytes:
    return (
        data[:start] + bytes(b ^ 0xFF for b in data[start : start + count]) + data[start + count :]
    )


# a damaged image file: its bytes from a good one, what the decoder raises, what the line says
DAMAGED_IMAGES = {
    "truncated png": (
        ".png",
        lambda good: good[: len(good) // 2],
        OSError,
        "image file is truncated",
    ),
    "damaged png": (
        ".png",
        lambda good: flip_bytes(good, len(good) // 2),
        OSError,
        "data stream contents when reading image file",
    ),
    "text as png": (
        ".png",
        lambda good: b"not an image",
        UnidentifiedImageError,
        "cannot identify image file",
    ),
    "truncated tiff": (
        ".tif",
        lambda good: good[:-100],
        zlib.error,
        "Error -5 while decompressing",
    ),
    "empty tiff": (".tif", lambda good: b"", tifffile.TiffFileError, "not a TIFF file"),
}


@pytest.mark.parametrize("kind", DAMAGED_IMAGES)
def test_a_damaged_image_is_one_line_with_its_cause(tmp_path, kind):
    suffix, make, raised, said = DAMAGED_IMAGES[kind]
    rng = np.random.default_rng(0)
    good = write_image(tmp_path / f"good{suffix}", rng.integers(0, 255, (64, 80), np.uint8))
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(make(good))
    with pytest.raises(CellpipeError, match=f"^cannot read image {path}: .*{said}") as caught:
        read_image(path)
    assert type(caught.value.__cause__) is raised
    if kind.startswith(("text", "empty")):  # the header too
        with pytest.raises(CellpipeError, match=f"^cannot read image {path}: "):
            image_shape(path)


def test_a_config_that_is_not_yaml_says_where(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  family: maskrcnn\n bad: [1, 2\n")
    assert cellpipe(["models", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"cellpipe models: error: config {config}: not valid YAML (line 3, column 2: "
        "expected <block end>, but found '<block mapping start>' while parsing a block mapping "
        "from line 1)\n"
    )
    config.write_bytes(b"model: {family: maskrcnn}\n# \xff\n")
    assert cellpipe(["models", "--config", str(config)]) == 2
    assert "not UTF-8 text (byte 28)" in capsys.readouterr().err


@pytest.mark.parametrize("keep", [0, 100])  # an empty file; a truncated one
def test_a_damaged_predictions_file_is_one_line_with_its_cause(tmp_path, keep):
    boxes = np.array([[0, 0, 4, 3]], np.int32)
    masks = [np.full((3, 4), 200, np.uint8)]
    one = ImagePredictions((8, 8), boxes, np.ones(1, np.float32), np.ones(1, np.int32), masks)
    save_predictions(tmp_path / "oof.npz", {"a": one})
    assert load_predictions(tmp_path / "oof.npz")["a"].boxes.tolist() == boxes.tolist()
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes((tmp_path / "oof.npz").read_bytes()[:keep])
    with pytest.raises(CellpipeError, match="not a cellpipe predictions file") as caught:
        load_predictions(damaged)
    assert type(caught.value.__cause__) is (EOFError if keep == 0 else zipfile.BadZipFile)


def test_a_thresholds_file_that_is_not_json_is_one_line(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text('{"weights": {"maskrcnn": 1.0}, ')
    with pytest.raises(CellpipeError, match=r"thresholds\.json: not valid JSON \(Expecting"):
        load_tuned(path)
