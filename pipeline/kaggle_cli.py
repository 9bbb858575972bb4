"""Run the real `kaggle` command-line client, turning its failures into one-line errors.

A subprocess reads its environment afresh (the client's Python API fixes its endpoint when first
imported), can be bounded in time, and is exactly what a user would run by hand.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.core.errors import CellpipeError

UNREACHABLE = re.compile(
    r"Max retries exceeded|Failed to resolve|NameResolution|Connection refused|"
    r"timed out|ConnectionError|ProxyError"
)


def credentials_present() -> bool:
    """Whether the client would find credentials (environment, kaggle.json or access_token)."""
    if os.environ.get("KAGGLE_API_TOKEN") or (
        os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")
    ):
        return True
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    return (folder / "kaggle.json").is_file() or (folder / "access_token").is_file()


def kaggle_executable() -> str:
    """The `kaggle` script of this environment (beside its Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "kaggle"
    found = str(beside) if beside.is_file() else shutil.which("kaggle")
    if found is None:
        raise CellpipeError("the kaggle client is not installed (pip install kaggle)")
    return found


def explain(output: str, what: str, hint_403: str) -> CellpipeError:
    """One line saying why a kaggle command failed, from what it printed."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if re.search(r"\b40[13]\b", output):
        return CellpipeError(f"Kaggle refused to {what}: {hint_403}")
    if re.search(r"\b404\b", output):
        return CellpipeError(f"Kaggle cannot {what}: not found (404)")
    if UNREACHABLE.search(output):
        return CellpipeError(f"cannot reach Kaggle to {what} (no network?)")
    return CellpipeError(f"kaggle failed to {what}: {lines[-1] if lines else 'no output'}")


def run_kaggle(
    args: list[str],
    what: str,
    hint_403: str = "check your credentials",
    timeout: float = 7200,
    show_output: bool = False,
) -> str:
    """Run `kaggle ARGS`; return what it printed. `what` completes "failed to ..." messages."""
    if not credentials_present():
        raise CellpipeError(
            "no Kaggle credentials: put kaggle.json in ~/.kaggle (or set KAGGLE_USERNAME and "
            "KAGGLE_KEY, or KAGGLE_API_TOKEN)"
        )
    try:
        done = subprocess.run(
            [kaggle_executable(), *args],
            stdout=None if show_output else subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CellpipeError(f"kaggle took over {timeout:.0f} s to {what}; stopped") from None
    output = (done.stdout or "") + (done.stderr or "")
    if done.returncode != 0:
        raise explain(output, what, hint_403)
    return output
