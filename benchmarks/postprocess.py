"""Benchmark: overlap elimination + RLE encoding of 1000 predicted instances on a 520x704 image.

- cellpipe: box-cropped uint8 probabilities -> `postprocess_image` (threshold, greedy by score,
  `mask & ~used` inside each box) -> `rle.encode_labels`;
- notebook: the common Sartorius notebook loop over full-size masks, `mask * (1 - used)` per
  instance and one `rle_encode` each; its (1000, 520, 704) stack is built untimed (the model's
  pasted output), so only the loop is measured.
Usage: `python benchmarks/postprocess.py [--instances 1000] [--repeat 10]`.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from rle import notebook_encode  # benchmarks/rle.py: the notebooks' encoder, the same baseline
from scipy import ndimage
from skimage.segmentation import watershed

from pipeline.core import rle
from pipeline.core.postprocess import ClassThresholds, Thresholds, postprocess_image
from pipeline.core.predictions import ImagePredictions, quantise

SHAPE = (520, 704)


def detections(n: int, seed: int = 0) -> ImagePredictions:
    """n overlapping detections: dense cells, each seen ~3 times with jittered boxes."""
    rng = np.random.default_rng(seed)
    cells = n // 3
    markers = np.zeros(SHAPE, np.int32)
    markers[rng.integers(0, SHAPE[0], cells), rng.integers(0, SHAPE[1], cells)] = np.arange(
        1, cells + 1
    )
    labels = watershed(np.zeros(SHAPE), markers)
    boxes, masks = [], []
    slices = ndimage.find_objects(labels)
    for k in range(n):
        sl = slices[k % cells]
        if sl is None:
            continue
        y0, y1 = (
            max(sl[0].start - rng.integers(0, 4), 0),
            min(sl[0].stop + rng.integers(0, 4), SHAPE[0]),
        )
        x0, x1 = (
            max(sl[1].start - rng.integers(0, 4), 0),
            min(sl[1].stop + rng.integers(0, 4), SHAPE[1]),
        )
        inside = labels[y0:y1, x0:x1] == (k % cells) + 1
        prob = ndimage.gaussian_filter(inside.astype(np.float32), 1.0) * rng.uniform(0.8, 1.0)
        boxes.append([x0, y0, x1, y1])
        masks.append(quantise(prob))
    m = len(boxes)
    return ImagePredictions(
        SHAPE,
        np.array(boxes, np.int32),
        rng.random(m).astype(np.float32),
        np.ones(m, np.int32),
        masks,
    )


def notebook(full: np.ndarray, scores: np.ndarray, min_pixels: int) -> list[str]:
    used = np.zeros(SHAPE, dtype=int)
    out = []
    for i in np.argsort(-scores):
        mask = (full[i] > 127).astype(int)
        mask = mask * (1 - used)
        if mask.sum() >= min_pixels:
            used += mask
            out.append(notebook_encode(mask))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    pred = detections(args.instances)
    thresholds = Thresholds(default=ClassThresholds(score=0.0, mask=0.5, min_area=20))

    def cellpipe() -> list[str]:
        labels, _ = postprocess_image(pred, thresholds)
        return list(rle.encode_labels(labels).values())

    ours = cellpipe()
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        cellpipe()
        times.append(time.perf_counter() - t)
    ours_ms = min(times) * 1e3
    tracemalloc.start()
    cellpipe()
    ours_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()

    full = np.zeros((len(pred), *SHAPE), np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(pred.boxes):
        full[i, y0:y1, x0:x1] = pred.masks[i]
    t = time.perf_counter()
    theirs = notebook(full, pred.scores, 20)
    notebook_ms = (time.perf_counter() - t) * 1e3
    print(
        f"{len(pred)} instances on {SHAPE[0]}x{SHAPE[1]}; kept: cellpipe {len(ours)}, "
        f"notebook {len(theirs)}"
    )
    print(
        f"cellpipe (box crops): {ours_ms:8.2f} ms  peak {ours_peak:.0f} MiB of Python allocations"
    )
    print(f"notebook (full masks): {notebook_ms:8.2f} ms  (+{full.nbytes / 2**20:.0f} MiB stack)")
    print(f"ratio: {notebook_ms / ours_ms:.0f}x faster (target <= 10 ms per image)")


if __name__ == "__main__":
    main()
