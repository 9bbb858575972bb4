"""Where a result came from: the git commit of the code, a digest of the config."""

from __future__ import annotations

import hashlib
import json
import subprocess
from typing import Any


def git_commit() -> str | None:
    """The current commit, with `+dirty` when tracked files changed; None outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, or git hangs
        return None
    return commit + ("+dirty" if dirty else "")


def config_hash(config: dict[str, Any]) -> str:
    """Short digest of a resolved config (as JSON data)."""
    text = json.dumps(config, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
