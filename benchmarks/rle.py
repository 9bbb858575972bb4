"""Benchmark: encode every instance of a dense label image to Kaggle RLE and decode back.

Baselines, all in this one run:
- pycocotools: `mask.encode` of each instance's Fortran-ordered mask (its fastest use here; a
  whole (H, W, N) stack is slower) and `mask.decode` of all back to a stack, painted;
- notebook: the plain-numpy `rle_encode` / `rle_decode` copied across Kaggle notebooks, one full
  mask per instance.
Usage: `python benchmarks/rle.py [--objects 340] [--repeat 20]`. Prints ms per image and ratios.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
from pycocotools import mask as mask_utils
from skimage.segmentation import watershed

from pipeline.core import rle


def dense_labels(n_objects: int, shape=(520, 704), seed: int = 0) -> np.ndarray:
    """Touching cells: a watershed of random seeds, with some background between clusters."""
    rng = np.random.default_rng(seed)
    markers = np.zeros(shape, np.int32)
    markers[rng.integers(0, shape[0], n_objects), rng.integers(0, shape[1], n_objects)] = np.arange(
        1, n_objects + 1
    )
    labels = watershed(np.zeros(shape), markers)
    background = np.hypot(*np.mgrid[: shape[0], : shape[1]] - np.array(shape)[:, None, None] / 2)
    labels[(background % 90) < 8] = 0  # rings of background so runs start and stop
    return labels.astype(np.int32)


def notebook_encode(mask: np.ndarray) -> str:
    pixels = np.concatenate([[0], mask.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def notebook_decode(text: str, shape) -> np.ndarray:
    s = text.split()
    starts, lengths = (np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2]))
    starts -= 1
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, starts + lengths):
        img[lo:hi] = 1
    return img.reshape(shape)


def notebook_round_trip(labels):
    ids = np.unique(labels)[1:]

    def encode():
        return [notebook_encode((labels == k).astype(np.uint8)) for k in ids]

    def decode(texts):
        out = np.zeros(labels.shape, np.int32)
        for k, text in enumerate(texts, start=1):
            out[notebook_decode(text, labels.shape) > 0] = k
        return out

    return encode, decode


def pycocotools_round_trip(labels):
    ids = np.unique(labels)[1:]
    fortran_labels = np.asfortranarray(labels)  # its fastest use: one Fortran mask per instance

    def encode():
        return [mask_utils.encode((fortran_labels == k).astype(np.uint8, order="F")) for k in ids]

    def decode(objs):
        stack = mask_utils.decode(objs)
        out = np.zeros(labels.shape, np.int32)
        for k in range(stack.shape[2]):
            out[stack[..., k] > 0] = k + 1
        return out

    return encode, decode


def cellpipe_round_trip(labels):
    def encode():
        return list(rle.encode_labels(labels).values())

    def decode(texts):
        return rle.decode_labels(texts, labels.shape)

    return encode, decode


def best_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=340)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    labels = dense_labels(args.objects)
    n = len(np.unique(labels)) - 1
    print(f"label image {labels.shape[0]}x{labels.shape[1]}, {n} objects")
    results = {}
    for name, build in (
        ("cellpipe", cellpipe_round_trip),
        ("pycocotools", pycocotools_round_trip),
        ("notebook", notebook_round_trip),
    ):
        encode, decode = build(labels)
        encoded = encode()  # warm-up (numba compiles or loads its cache)
        decoded = decode(encoded)
        assert (decoded > 0).sum() == (labels > 0).sum(), name
        repeat = args.repeat if name == "cellpipe" else max(3, args.repeat // 4)
        decode_once = partial(decode, encoded)
        results[name] = (best_ms(encode, repeat), best_ms(decode_once, repeat))
    ours_enc, ours_dec = results["cellpipe"]
    print(f"{'':12} {'encode ms':>10} {'decode ms':>10} {'encode x':>9} {'decode x':>9}")
    for name, (enc, dec) in results.items():
        print(f"{name:12} {enc:10.2f} {dec:10.2f} {enc / ours_enc:9.1f} {dec / ours_dec:9.1f}")
    worst = min(
        results[b][i] / results["cellpipe"][i] for b in ("pycocotools", "notebook") for i in (0, 1)
    )
    print(f"cellpipe is at least {worst:.0f}x faster than both baselines (target 20x)")


if __name__ == "__main__":
    main()
