"""Credentials are never uploaded: by file name or suffix, or by text inside a file (zips too)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core.errors import CellpipeError

SECRET_NAMES = ("kaggle.json", "access_token", ".env", "credentials.json")
SECRET_SUFFIXES = (".pem",)
# spelled so that this file, which goes into the wheel, does not hold the text it looks for
SECRET_TEXT = tuple(f"{name}=".encode() for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN"))


def _is_secret_name(name: str) -> bool:
    base = Path(name).name
    return base in SECRET_NAMES or base.startswith(".env.") or base.endswith(SECRET_SUFFIXES)


def _chunks(stream: Any, size: int = 1 << 22) -> Iterator[bytes]:
    tail = b""
    while block := stream.read(size):
        yield tail + block
        tail = block[-32:]  # a pattern split across two blocks is still seen


def _has_secret_text(stream: Any) -> bool:
    return any(p in chunk for chunk in _chunks(stream) for p in SECRET_TEXT)


def find_credentials(folder: Path) -> list[str]:
    """Files under `folder`, and members of its zips (wheels, checkpoints), holding credentials."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        where = str(path.relative_to(folder))
        if _is_secret_name(path.name):
            found.append(where)
            continue
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    with zf.open(member) as f:
                        if _is_secret_name(member) or _has_secret_text(f):
                            found.append(f"{where}:{member}")
            continue
        with open(path, "rb") as f:
            if _has_secret_text(f):
                found.append(where)
    return found


def refuse_credentials(folder: Path) -> None:
    """A one-line error when anything under `folder` looks like a credential."""
    found = find_credentials(folder)
    if found:
        more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
        raise CellpipeError(
            f"refusing to upload credentials: {found[0]}{more} "
            "(kaggle.json, access_token, .env, *.pem, or a file setting KAGGLE_KEY)"
        )
