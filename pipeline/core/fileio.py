"""File helpers shared by every stage: atomic writes, image reading, content digests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import CellpipeError, full_message

TIFF_SUFFIXES = (".tif", ".tiff")


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: Path | str, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path | str, obj: Any) -> None:
    """Write JSON atomically (compact separators: COCO files with 100k annotations stay small)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


def read_json(path: Path | str) -> Any:
    """Read JSON, with a one-line error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise CellpipeError(f"missing file: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CellpipeError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    except UnicodeDecodeError as e:
        raise CellpipeError(f"{path}: not valid JSON (not UTF-8 text at byte {e.start})") from e


# what PIL and tifffile raise for a truncated, damaged or foreign file (tried on truncations and
# byte flips of PNG, JPEG, BMP and TIFF files: OSError, TiffFileError (a ValueError), zlib.error);
# anything else (MemoryError, a bug) is no fault of the file and goes on
UNREADABLE_IMAGE = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)


def _unreadable_image(path: Path, error: BaseException) -> CellpipeError:
    return CellpipeError(f"cannot read image {path}: {full_message(error)}")


def read_image(path: Path | str) -> np.ndarray:
    """Read an 8- or 16-bit PNG/TIFF/BMP/JPEG as stored: (H, W) grey or (H, W, C) colour."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise CellpipeError(f"missing image: {path}")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            image = tifffile.imread(path)
        else:
            with Image.open(path) as im:
                image = np.asarray(im)
    except (*UNREADABLE_IMAGE, Image.DecompressionBombError) as e:
        raise _unreadable_image(path, e) from e
    if image.ndim not in (2, 3) or image.size == 0:
        raise CellpipeError(f"{path}: expected a 2-D image, got shape {image.shape}")
    return image


def read_image_checked(path: Path | str, shape: tuple[int, int]) -> np.ndarray:
    """`read_image`, with a one-line error unless it has the (height, width) recorded for it."""
    pixels = read_image(path)
    if pixels.shape[:2] != tuple(shape):
        raise CellpipeError(
            f"{path} is {pixels.shape[0]}x{pixels.shape[1]} but was {shape[0]}x{shape[1]} "
            "when converted (rerun `cellpipe convert`)"
        )
    return pixels


def image_shape(path: Path | str) -> tuple[int, int]:
    """(height, width) of an image file, read from its header where the format allows."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise CellpipeError(f"missing image: {path}")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                height, width = tif.pages[0].shape[:2]
        else:
            with Image.open(path) as im:
                width, height = im.size
    except (*UNREADABLE_IMAGE, Image.DecompressionBombError) as e:
        raise _unreadable_image(path, e) from e
    return int(height), int(width)


def write_png(path: Path | str, image: np.ndarray) -> None:
    """Write a uint8 or uint16 grey image (or uint8 RGB) as PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def write_tiff(path: Path | str, image: np.ndarray) -> None:
    """Write an image as TIFF, atomically."""
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, image)


def file_digest(path: Path | str) -> str:
    """SHA-256 of a file's bytes, or of a folder's (relative name, size, modification time)
    listing: an image replaced by another of the same name and size still changes it."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                stat = p.stat()
                h.update(f"{p.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return h.hexdigest()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
