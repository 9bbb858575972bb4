"""How `cellpipe` ends: a user's mistake in one line (exit 2); anything else with its type, whole
message and causes (exit 1), and its traceback with `--debug` or CELLPIPE_DEBUG=1."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_models import newer_torch_file

from pipeline.cli import main as cellpipe
from pipeline.cli import report_unexpected

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


# After its imports, the process may map only 24 MiB more: reading a 48 MiB checkpoint (a .pth, or
# a model-zoo .pkl) then runs out of memory, which is no fault of the file.
OUT_OF_MEMORY = """
import resource, sys
import numpy, torch
import pipeline.cli, pipeline.models, pipeline.models.checkpoints, pipeline.stages.import_weights
with open("/proc/self/status") as f:
    mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (mapped + 24 * 2**20, resource.RLIM_INFINITY))
sys.exit(pipeline.cli.main(sys.argv[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")
@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_running_out_of_memory_is_not_called_a_bad_file(tmp_path, suffix):
    path = tmp_path / f"big{suffix}"
    weights = torch.zeros(12 * 2**20)  # 48 MiB of float32
    if suffix == ".pth":
        torch.save({"model": {"w": weights}}, path)
    else:
        path.write_bytes(pickle.dumps({"model": {"w": weights.numpy()}}))
    done = run("import-weights", str(path), str(tmp_path / "init.pth"), code=OUT_OF_MEMORY)
    assert done.returncode == 1, done.stderr
    assert "cannot read weights" not in done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith("cellpipe import-weights: unexpected error: "), done.stderr
    assert "MemoryError" in first or "can't allocate memory" in first, done.stderr
