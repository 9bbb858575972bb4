"""Kaggle run-length encoding: encode, decode and validate, numba on the hot loops.

Kaggle RLE is text: space-separated `start length` pairs, starts 1-based, ascending, no pixel twice.
Pixels are numbered along the flattened image. `order="row"` (the default, what Sartorius scores
and every working notebook uses) numbers them row by row, `mask.ravel()`; `order="column"` (DSB
2018) numbers them column by column, `mask.ravel(order="F")`.

COCO RLE (pycocotools) is a different thing: column-major counts that start with a background run,
compressed to a string. `pipeline.core.coco` converts between the two.

Many instances of one image are handled in one pass: their texts are joined into one byte buffer
and parsed, validated and painted by compiled loops, and label images are encoded by one scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import numba
import numpy as np

from pipeline.core.errors import RLEError

Order = Literal["row", "column"]

# Error codes of the parser, with the message each becomes (token is 1-based within its text).
_OK, _NOT_INT, _ODD, _NON_POSITIVE, _UNSORTED, _PAST_END = range(6)
_MESSAGES = {
    _NOT_INT: "token {token} ({value!r}) is not an integer",
    _ODD: "odd number of tokens ({value}): expected start/length pairs",
    _NON_POSITIVE: "token {token} ({value!r}) is not positive: starts are 1-based, lengths >= 1",
    _UNSORTED: "run at token {token} (start {value}) is unsorted or overlaps the run before it",
    _PAST_END: "run at token {token} (start {value}) runs past the image end ({size} pixels)",
}


class Runs(NamedTuple):
    """Runs of several instances: instance i owns starts/lengths[offsets[i]:offsets[i + 1]].

    Starts are 0-based indices into the image flattened in the texts' order.
    """

    starts: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray


def _check_order(order: str) -> None:
    if order not in ("row", "column"):
        raise ValueError(f"order must be 'row' or 'column', not {order!r}")


def _flat(image: np.ndarray, order: Order) -> np.ndarray:
    return image.ravel(order="C" if order == "row" else "F")


def _unflat(flat: np.ndarray, shape: tuple[int, int], order: Order) -> np.ndarray:
    if order == "row":
        return flat.reshape(shape)
    return np.ascontiguousarray(flat.reshape(shape[::-1]).T)


@numba.njit(cache=True, nogil=True)
def _parse(buf, n_texts, size):  # pragma: no cover - compiled
    """Parse texts separated by b'\\n' into runs; returns (starts, lengths, offsets, error...)."""
    n = buf.shape[0]
    capacity = n // 2 + 1  # a run needs at least 4 bytes: "1 1 "
    starts = np.empty(capacity, np.int64)
    lengths = np.empty(capacity, np.int64)
    offsets = np.zeros(n_texts + 1, np.int64)
    n_runs = 0
    text = 0
    token = 0  # tokens seen in this text
    prev_end = 0  # 0-based end (exclusive) of the previous run in this text
    i = 0
    while True:
        # skip spaces; a newline or the buffer end closes the current text
        while i < n and buf[i] == 32:
            i += 1
        if i >= n or buf[i] == 10:
            if token % 2 == 1:
                return starts, lengths, offsets, _ODD, text, token, token
            offsets[text + 1] = n_runs
            text += 1
            token = 0
            prev_end = 0
            if i >= n:
                break
            i += 1
            continue
        token_start = i
        value = 0
        negative = False
        if buf[i] == 45:  # '-'
            negative = True
            i += 1
        digits = 0
        while i < n and 48 <= buf[i] <= 57:
            if value < 10**15:
                value = value * 10 + (buf[i] - 48)
            digits += 1
            i += 1
        if digits == 0 or (i < n and buf[i] != 32 and buf[i] != 10):
            return starts, lengths, offsets, _NOT_INT, text, token + 1, token_start
        if negative or value == 0:
            return starts, lengths, offsets, _NON_POSITIVE, text, token + 1, token_start
        if token % 2 == 0:
            starts[n_runs] = value - 1
        else:
            start = starts[n_runs]
            if start < prev_end:
                return starts, lengths, offsets, _UNSORTED, text, token, start + 1
            if start + value > size:
                return starts, lengths, offsets, _PAST_END, text, token, start + 1
            lengths[n_runs] = value
            prev_end = start + value
            n_runs += 1
        token += 1
    return starts[:n_runs], lengths[:n_runs], offsets, _OK, 0, 0, 0


def parse_runs(texts: Sequence[str], shape: tuple[int, int]) -> Runs:
    """Parse and validate the RLE texts of several instances of one (height, width) image."""
    size = int(shape[0]) * int(shape[1])
    if size <= 0:
        raise RLEError(f"image shape {tuple(shape)} is empty")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RLEError(f"instance {i}: RLE must be text, got {type(text).__name__}")
        if "\n" in text:
            raise RLEError(f"instance {i}: RLE contains a newline")
    data = "\n".join(texts).encode("ascii", errors="replace")
    buf = np.frombuffer(data, dtype=np.uint8)
    starts, lengths, offsets, code, text, token, value = _parse(buf, len(texts), size)
    if code != _OK:
        if code in (_NOT_INT, _NON_POSITIVE):
            value = texts[text].split()[token - 1]
        message = _MESSAGES[code].format(token=token, value=value, size=size)
        raise RLEError(f"invalid RLE: {message}", int(text) if len(texts) > 1 else None)
    return Runs(starts, lengths, offsets)


def validate(text: str, shape: tuple[int, int]) -> None:
    """Raise RLEError unless `text` is a valid Kaggle RLE for an image of `shape`."""
    parse_runs([text], shape)


@numba.njit(cache=True, nogil=True)
def _paint(starts, lengths, offsets, size, overwrite):  # pragma: no cover - compiled
    """Paint instance i as label i+1; returns (flat labels, first overlapping instance or -1)."""
    flat = np.zeros(size, np.int32)
    for inst in range(offsets.shape[0] - 1):
        label = inst + 1
        for r in range(offsets[inst], offsets[inst + 1]):
            s = starts[r]
            for p in range(s, s + lengths[r]):
                if flat[p] != 0 and not overwrite:
                    return flat, inst
                flat[p] = label
    return flat, -1


def decode_labels(
    texts: Sequence[str],
    shape: tuple[int, int],
    order: Order = "row",
    overlap: Literal["raise", "last"] = "raise",
) -> np.ndarray:
    """Label image (int32) of an image's instances: instance i gets label i+1, background 0.

    Overlapping instances raise RLEError, or with overlap="last" the later instance wins.
    """
    _check_order(order)
    runs = parse_runs(texts, shape)
    size = int(shape[0]) * int(shape[1])
    flat, clash = _paint(runs.starts, runs.lengths, runs.offsets, size, overlap == "last")
    if clash >= 0:
        raise RLEError("overlaps an earlier instance of the same image", int(clash))
    return _unflat(flat, (int(shape[0]), int(shape[1])), order)


def decode(text: str, shape: tuple[int, int], order: Order = "row") -> np.ndarray:
    """Boolean (height, width) mask of one RLE text."""
    return decode_labels([text], shape, order) > 0


@numba.njit(cache=True, nogil=True)
def _paint_stack(starts, lengths, offsets, size):  # pragma: no cover - compiled
    n = offsets.shape[0] - 1
    stack = np.zeros((n, size), np.bool_)
    for inst in range(n):
        for r in range(offsets[inst], offsets[inst + 1]):
            stack[inst, starts[r] : starts[r] + lengths[r]] = True
    return stack


def decode_stack(texts: Sequence[str], shape: tuple[int, int], order: Order = "row") -> np.ndarray:
    """Boolean (n, height, width) stack, one plane per instance; overlaps allowed."""
    _check_order(order)
    runs = parse_runs(texts, shape)
    h, w = int(shape[0]), int(shape[1])
    stack = _paint_stack(runs.starts, runs.lengths, runs.offsets, h * w)
    if order == "row":
        return stack.reshape(len(texts), h, w)
    return np.ascontiguousarray(stack.reshape(len(texts), w, h).transpose(0, 2, 1))


@numba.njit(cache=True, nogil=True)
def _label_runs(flat, n_labels):  # pragma: no cover - compiled
    """Runs of every label 1..n_labels in one scan: (starts 0-based, lengths, offsets by label)."""
    counts = np.zeros(n_labels + 2, np.int64)
    prev = 0
    for i in range(flat.shape[0]):
        v = flat[i]
        if v != prev:
            if v > 0:
                counts[v + 1] += 1
            prev = v
    bounds = np.cumsum(counts)  # label v owns runs bounds[v]..bounds[v + 1]
    fill = bounds[:-1].copy()
    starts = np.empty(bounds[-1], np.int64)
    lengths = np.empty(bounds[-1], np.int64)
    prev = 0
    for i in range(flat.shape[0]):
        v = flat[i]
        if v != prev:
            if prev > 0:
                lengths[fill[prev] - 1] = i - starts[fill[prev] - 1]
            if v > 0:
                starts[fill[v]] = i
                fill[v] += 1
            prev = v
    if prev > 0:
        lengths[fill[prev] - 1] = flat.shape[0] - starts[fill[prev] - 1]
    return starts, lengths, bounds[1:]  # instance i (label i + 1): offsets[i]..offsets[i + 1]


@numba.njit(cache=True, nogil=True)
def _format_runs(starts, lengths, offsets):  # pragma: no cover - compiled
    """ASCII text of every instance's runs in one buffer; text k is buf[ends[k-1]:ends[k]]."""
    n = offsets.shape[0] - 1
    buf = np.empty(starts.shape[0] * 2 * 21 + 1, np.uint8)
    ends = np.zeros(n + 1, np.int64)
    digits = np.empty(20, np.uint8)
    pos = 0
    for inst in range(n):
        first = True
        for r in range(offsets[inst], offsets[inst + 1]):
            for value in (starts[r] + 1, lengths[r]):
                if not first:
                    buf[pos] = 32
                    pos += 1
                first = False
                k = 0
                while True:
                    digits[k] = 48 + value % 10
                    value //= 10
                    k += 1
                    if value == 0:
                        break
                for j in range(k - 1, -1, -1):
                    buf[pos] = digits[j]
                    pos += 1
        ends[inst + 1] = pos
    return buf[:pos], ends


def format_runs(runs: Runs) -> list[str]:
    """RLE texts of instances given as runs (0-based starts)."""
    buf, ends = _format_runs(runs.starts, runs.lengths, runs.offsets)
    data = buf.tobytes()
    return [data[ends[i] : ends[i + 1]].decode("ascii") for i in range(len(ends) - 1)]


def as_label_image(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """A 2-D integer label image (bool as uint8), C-contiguous in native byte order."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D label image, got shape {labels.shape}")
    if labels.dtype == np.bool_:
        return np.ascontiguousarray(labels).view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: expected integer labels, got {labels.dtype}")
    return np.ascontiguousarray(labels, dtype=labels.dtype.newbyteorder("="))


def _nonnegative(labels: np.ndarray) -> np.ndarray:
    labels = as_label_image(labels)
    if labels.size and labels.min() < 0:  # the compiled scan indexes by label
        raise ValueError("labels must be >= 0")
    return labels


def label_runs(labels: np.ndarray, order: Order = "row") -> Runs:
    """Runs of every label 1..max of a label image; instance i is label i + 1 (maybe empty)."""
    _check_order(order)
    labels = _nonnegative(labels)
    n_labels = int(labels.max()) if labels.size else 0
    return Runs(*_label_runs(_flat(labels, order), n_labels))


def encode_labels(labels: np.ndarray, order: Order = "row") -> dict[int, str]:
    """RLE text of every label > 0 of a label image, in ascending label order."""
    runs = label_runs(labels, order)
    texts = format_runs(runs)
    return {int(i) + 1: texts[i] for i in np.flatnonzero(np.diff(runs.offsets))}


def encode(mask: np.ndarray, order: Order = "row") -> str:
    """RLE text of one 2-D mask (nonzero = foreground); an empty mask gives ''."""
    _check_order(order)
    mask = _nonnegative(mask)
    return format_runs(Runs(*_label_runs(_flat(mask != 0, order).view(np.uint8), 1)))[0]
