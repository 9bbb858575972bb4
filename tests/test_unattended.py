"""An unattended run never hangs: `pretrain` with loader workers, beside a CPU hog on every core,
exits soon after its last iteration, and stops with a checkpoint on SIGTERM or Ctrl-C sent to its
whole process group, every time. Each case runs 10 times, every other one with Python's cyclic
garbage collector off: a loader iterator left to the collector is then never shut down before
exit, which made the hang of issue 19 intermittent (it depended on when the collector ran).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_data import tiny_coco, write_coco

from pipeline.models.checkpoints import read_checkpoint

# one xdist worker runs them all (make test: --dist loadgroup), so one set of hogs loads the cores
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cpu_hog")]
RUNS = 10
EXIT_AFTER_LAST_ITERATION_S = 30  # the bound: a run ends this soon after its work
RUN_LIMIT_S = 240  # longer than this, a run has hung: it is killed and the test fails


@pytest.fixture(scope="module")
def cpu_hog() -> Iterator[None]:
    """A busy-looping process on every core for the module's tests."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(timeout=30)


def pretrain_workspace(root: Path, max_iter: int) -> list[str]:
    """A tiny LIVECell-like dataset and flow_unet config; the `cellpipe pretrain` command line."""
    data, work = root / "data", root / "work"
    coco = tiny_coco(data, n_images=4, categories=("A172",))
    write_coco(work / "coco" / "livecell_train.json", coco)
    write_coco(work / "coco" / "livecell_val.json", coco)
    write_coco(work / "coco" / "train.json", coco)
    config = {
        "model": {"family": "flow_unet", "flow_unet": {"channels": [8, 16]}},
        "predict": {"models": ["flow_unet"]},
        "pretrain": {
            "augment": {"crop": [64, 64]},
            "val_max_images": 2,
            "solver": {
                "max_iter": max_iter,
                "ims_per_batch": 2,
                "optimizer": "adamw",
                "base_lr": 0.001,
                "warmup_iters": 0,
                "eval_period": 0,
                "checkpoint_period": 1000,
                "log_period": 1,
                "num_workers": 2,
                "device": "cpu",
            },
        },
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(config))
    return ["pretrain", "-c", str(root / "cfg.yaml"), f"work_dir={work}", f"data_dir={data}"]


def cellpipe(args: list[str], collector: bool) -> list[str]:
    """`python -m pipeline ARGS`, with or without the cyclic garbage collector."""
    run = "import gc, runpy; gc.{}(); runpy.run_module('pipeline', run_name='__main__')"
    return [sys.executable, "-c", run.format("enable" if collector else "disable"), *args]


def start(command: list[str], root: Path) -> subprocess.Popen:
    """The command in its own process group (as a container's, a job's or a terminal's)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = open(root / "log.txt", "w")  # noqa: SIM115 (closed with the process below)
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    log.close()
    return process


def finish(process: subprocess.Popen, root: Path, timeout: float = RUN_LIMIT_S) -> int:
    """The exit code; a run still going after `timeout` is killed, with its log, and fails."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        tail = (root / "log.txt").read_text()[-2000:]
        pytest.fail(f"the run hung (killed after {timeout:.0f} s); its output:\n{tail}")


def run_folder(root: Path) -> Path:
    return root / "work" / "pretrain" / "flow_unet"


def logged_iterations(root: Path) -> int:
    log = run_folder(root) / "metrics.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def test_pretrain_with_workers_exits_soon_after_its_last_iteration(tmp_path, cpu_hog):
    for attempt in range(RUNS):
        root = tmp_path / f"run{attempt}"
        process = start(cellpipe(pretrain_workspace(root, 4), collector=attempt % 2 == 0), root)
        code = finish(process, root)
        ended = time.time()
        assert code == 0, (root / "log.txt").read_text()[-2000:]
        # the log's last line is written after the last iteration (and its validation)
        work_done = (run_folder(root) / "metrics.jsonl").stat().st_mtime
        assert ended - work_done <= EXIT_AFTER_LAST_ITERATION_S, f"run {attempt}"
        assert read_checkpoint(run_folder(root) / "model_final.pth")["iteration"] == 4
        assert read_checkpoint(run_folder(root) / "checkpoint.pth")["iteration"] == 4


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_process_group_stops_pretrain_with_a_checkpoint(tmp_path, cpu_hog, stop):
    for attempt in range(RUNS):
        root = tmp_path / f"run{attempt}"
        command = cellpipe(pretrain_workspace(root, 100000), collector=attempt % 2 == 0)
        process = start(command, root)
        deadline = time.monotonic() + RUN_LIMIT_S
        while logged_iterations(root) < 2 and process.poll() is None:
            assert time.monotonic() < deadline, "no training iteration logged"
            time.sleep(0.1)
        os.killpg(process.pid, stop)
        code = finish(process, root, timeout=60)
        log = (root / "log.txt").read_text()
        assert code == 130, log[-2000:]
        assert "killed by signal" not in log  # the workers outlived the signal
        checkpoint = read_checkpoint(run_folder(root) / "checkpoint.pth")
        assert checkpoint["iteration"] >= 2, f"run {attempt}"
