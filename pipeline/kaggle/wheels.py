"""Wheels for an offline kernel: cellpipe's own, built from this checkout, and those of
requirements the Kaggle image lacks (`kernels.wheels`), for its Python and platforms."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.config import Config
from pipeline.core.errors import CellpipeError

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout the wheel is built from


PIP_TIMEOUT_SECONDS = 1800  # a pip download or wheel build that takes longer has hung


def _pip(args: list[str], what: str) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise CellpipeError(f"{what}: no result after {PIP_TIMEOUT_SECONDS} s") from None
    if done.returncode != 0:
        said = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise CellpipeError(f"{what} failed: {said[-1] if said else f'exit {done.returncode}'}")


def build_cellpipe_wheel(dest: Path) -> None:
    """cellpipe's wheel, built from a clean copy of this source tree (no build isolation)."""
    for needed in ("pyproject.toml", "README.md", "pipeline"):
        if not (SOURCE_ROOT / needed).exists():
            raise CellpipeError(f"no cellpipe source tree at {SOURCE_ROOT} (missing {needed})")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "cellpipe"
        shutil.copytree(
            SOURCE_ROOT / "pipeline",
            src / "pipeline",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(SOURCE_ROOT / name, src / name)
        _pip(
            ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dest), str(src)],
            "building cellpipe's wheel",
        )


def download_wheels(cfg: Config, dest: Path) -> None:
    """Wheels of `kernels.wheels` for the Kaggle image (its Python and platforms), no deps."""
    params = cfg.kernels
    if not params.wheels:
        return
    args = ["download", "--no-deps", "--only-binary=:all:", "--dest", str(dest)]
    args += ["--python-version", params.python_version]
    for platform in params.platforms:
        args += ["--platform", platform]
    for folder in params.find_links:
        args += ["--find-links", str(folder)]
    if params.no_index:
        args.append("--no-index")
    _pip([*args, *params.wheels], f"pip download {' '.join(params.wheels)}")


def detectron2_wheel(cfg: Config) -> Path:
    """The detectron2 wheel to bundle: `kernels.detectron2_wheel`, else the newest one that
    `make detectron2` left in .whl/; a one-line error when there is none."""
    if cfg.kernels.detectron2_wheel is not None:
        if not cfg.kernels.detectron2_wheel.is_file():
            raise CellpipeError(f"missing kernels.detectron2_wheel {cfg.kernels.detectron2_wheel}")
        return cfg.kernels.detectron2_wheel
    built = sorted((SOURCE_ROOT / ".whl").glob("detectron2-*.whl"), key=lambda p: p.stat().st_mtime)
    if not built:
        raise CellpipeError(
            "a kernel uses family detectron2 but there is no detectron2 wheel: build one for the "
            "Kaggle image (docs/kaggle.md: detectron2 on Kaggle) and set kernels.detectron2_wheel"
        )
    return built[-1]
