"""The bash blocks of the project's markdown files, for tests that run documented commands as
written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bash_block(doc: str, containing: str) -> str:
    """The one bash block of `doc` (a markdown file under the repository root) that holds
    `containing`, its continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / doc).read_text(), re.S)
    [block] = [b for b in blocks if containing in b]
    return block.replace("\\\n", " ")
