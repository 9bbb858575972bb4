"""Benchmark: cellpose-style flows of a dense 520x704 label image and the masks recovered from them.

Input: ~400 touching convex cells (`touching_cells` of tests/test_flows.py), their exact flows
times FLOW_SCALE and cell-probability logits of +5 / -5. Everything runs on one core.
Baselines, all in this one run:
- label_flows: the test's plain-numpy reference (`reference_flows`: one whole-array operation
  per diffusion step, per instance, as cellpose's CPU code does with fancy indexing);
- masks_from_flows: cellpose's CPU recipe in numpy/scipy: Euler steps of all points at once with
  `ndimage.map_coordinates` (the test's `reference_follow`), histogram peaks by
  `maximum_filter`, seeds grown by five 3x3 `grey_dilation`s; it has no flow-error check, so
  cellpipe is timed with and without one.
Usage: `python benchmarks/flows.py [--spacing 30] [--repeat 5]`. Prints ms per image, ratios and
the MAP-IoU of each recovery against the truth.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core for everyone

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_flows import reference_flows, reference_follow, touching_cells  # noqa: E402

from pipeline.core.flows import FLOW_SCALE, label_flows, masks_from_flows  # noqa: E402
from pipeline.core.metrics import compact_labels, map_iou  # noqa: E402

SHAPE = (520, 704)


def scipy_masks(cellprob: np.ndarray, flows: np.ndarray, min_size: int = 15) -> np.ndarray:
    """cellpose's CPU mask recovery without the flow-error check, in numpy and scipy."""
    mask = cellprob > 0
    ends = np.rint(reference_follow(flows, mask, 200)).astype(np.intp).T
    hist = np.bincount(np.ravel_multi_index(tuple(ends), mask.shape), minlength=mask.size)
    hist = hist.reshape(mask.shape)
    regions, _ = ndimage.label((hist > 10) & (hist == ndimage.maximum_filter(hist, 5)))
    for _ in range(5):
        grown = ndimage.grey_dilation(regions, size=3)
        regions = np.where((regions == 0) & (hist > 2), grown, regions)
    labels = np.zeros(mask.shape, np.int64)
    labels[mask] = regions[tuple(ends)]
    sizes = np.bincount(labels.ravel())
    drop = (sizes < min_size) | (sizes > 0.4 * mask.size)
    drop[0] = False
    labels[drop[labels]] = 0
    return compact_labels(labels)


def best_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, default=30.0, help="cell spacing in pixels")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    labels = touching_cells(SHAPE, args.spacing, np.random.default_rng(0))
    flows = FLOW_SCALE * label_flows(labels)  # also compiles or loads the numba cache
    cellprob = np.where(labels > 0, 5.0, -5.0).astype(np.float32)
    ours = masks_from_flows(cellprob, flows)
    n_cells = len(np.unique(labels)) - 1
    print(f"label image {SHAPE[0]}x{SHAPE[1]}, {n_cells} cells, {np.count_nonzero(labels)} pixels")

    t = time.perf_counter()
    reference = reference_flows(labels)
    baseline = (time.perf_counter() - t) * 1e3
    ms = best_ms(partial(label_flows, labels), args.repeat)
    rows = [("label_flows vs plain numpy", ms, baseline)]  # (what, cellpipe ms, baseline ms)
    t = time.perf_counter()
    scipy_labels = scipy_masks(cellprob, flows)
    baseline = (time.perf_counter() - t) * 1e3
    for what, flow_threshold in (
        ("masks_from_flows vs scipy", 0.4),
        ("  without the flow check", 0),
    ):
        recover = partial(masks_from_flows, cellprob, flows, flow_threshold=flow_threshold)
        rows.append((what, best_ms(recover, args.repeat), baseline))
    print(f"{'':34} {'cellpipe ms':>11} {'baseline ms':>11} {'ratio':>7}")
    for what, ms, baseline in rows:
        print(f"{what:34} {ms:11.1f} {baseline:11.1f} {baseline / ms:6.1f}x")
    gap = np.abs(reference - flows / FLOW_SCALE).max()
    print(f"largest difference from the reference flows: {gap:.1e}")
    scores = map_iou(labels, ours), map_iou(labels, scipy_labels)
    print("MAP-IoU against the truth: cellpipe {:.3f}, scipy {:.3f}".format(*scores))


if __name__ == "__main__":
    main()
