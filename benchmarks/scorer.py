"""Benchmark: MAP-IoU of 600 Sartorius-size images, cellpipe against three peer algorithms.

Images are 520 x 704 touching cells at the competition's densities: half with 10-120 objects,
a third near 340, the rest 400-800. Predictions are the truth with ragged boundaries, a one-pixel
shift, dropped and merged objects and false-positive blobs. Everything runs on one core.

Scorers, all in this one run (peers are re-implementations of their published algorithms):
- cellpipe labels: `metrics.match_labels` on the two label images;
- cellpipe RLE: `metrics.match_runs` on runs parsed from the Kaggle RLE texts (parsing timed apart);
- cellpose: numba pixel loop into a dense overlap matrix, IoU matrix, then per threshold scipy's
  `linear_sum_assignment` on -(IoU >= t) - IoU / 2n, counting pairs with IoU >= t;
- stardist `matching`: overlap matrix by `np.bincount` of paired labels, IoU in float32, the same
  Hungarian step per threshold;
- notebook: the Kaggle notebook metric, overlap by `np.histogram2d`, `iou > t`, TP = ground-truth
  objects with exactly one match.
Usage: `python benchmarks/scorer.py [--images 600] [--seed 0]`. Prints ms per image at four
densities, totals over the set, ratios, and how far each peer's scores are from cellpipe's.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core for everyone

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pipeline.core import metrics, rle  # noqa: E402

SHAPE = (520, 704)
IOU_THRESHOLDS = np.arange(0.5, 1.0, 0.05)


# --- data ---------------------------------------------------------------------------------------


def cells(rng: np.random.Generator, n: int) -> np.ndarray:
    """n round-ish cells around random centres, each the Voronoi cell of its centre clipped to
    its radius: isolated at low density, touching everywhere at high density."""
    centres = np.zeros(SHAPE, np.int32)
    centres[rng.integers(0, SHAPE[0], n), rng.integers(0, SHAPE[1], n)] = np.arange(1, n + 1)
    distance, (rows, cols) = ndimage.distance_transform_edt(centres == 0, return_indices=True)
    nearest = centres[rows, cols]
    radius = rng.uniform(10, 20) * rng.uniform(0.8, 1.2, n + 1)
    labels = np.where(distance <= radius[nearest], nearest, 0)
    labels[[0, -1], :] = labels[:, [0, -1]] = 0  # some background, always
    return sequential(labels)


def sequential(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n (the peers count objects by the largest label)."""
    values, inverse = np.unique(labels, return_inverse=True)
    return (inverse.reshape(labels.shape) + int(values[0] != 0)).astype(np.int32)


def predicted(rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    """A plausible model output: ragged edges, a shift, 8% dropped, 3% merged, 5% extra blobs."""
    n = int(truth.max())
    edge = ndimage.maximum_filter(truth, 3) != ndimage.minimum_filter(truth, 3)
    pred = np.where(edge & (rng.random(SHAPE) < 0.35), 0, truth)
    pred = np.roll(pred, tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
    lut = np.arange(n + 1)
    lut[rng.choice(np.arange(1, n + 1), n * 8 // 100, replace=False)] = 0
    pairs = rng.choice(np.arange(1, n + 1), (n * 3 // 100, 2))
    lut[pairs[:, 1]] = lut[pairs[:, 0]]
    pred = lut[pred]
    yy, xx = np.ogrid[-6:7, -6:7]
    disk = yy**2 + xx**2 <= 36
    for k in range(max(1, n // 20)):
        r, c = rng.integers(0, SHAPE[0] - 13), rng.integers(0, SHAPE[1] - 13)
        window = pred[r : r + 13, c : c + 13]
        window[disk & (window == 0)] = n + 1 + k
    return sequential(pred)


def densities(rng: np.random.Generator, count: int) -> np.ndarray:
    half, third = count // 2, count // 3
    return np.concatenate(
        [
            rng.integers(10, 121, half),
            np.clip(rng.normal(340, 25, third), 250, 430).astype(int),
            rng.integers(400, 801, count - half - third),
        ]
    )


# --- peers --------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _pixel_overlap(x, y, nx, ny):  # pragma: no cover - compiled
    overlap = np.zeros((nx + 1, ny + 1), np.uint32)
    for i in range(x.shape[0]):
        overlap[x[i], y[i]] += 1
    return overlap


def _hungarian_tp(iou: np.ndarray, threshold: float) -> int:
    """cellpose / stardist: best assignment favouring IoU >= t, then count those pairs."""
    n = min(iou.shape)
    if n == 0:
        return 0
    hit = iou >= threshold
    rows, cols = linear_sum_assignment(-hit.astype(float) - iou / (2 * n))
    return int(np.count_nonzero(hit[rows, cols]))


def _accuracy(tp: np.ndarray, n_true: int, n_pred: int) -> float:
    return float(metrics.threshold_scores(tp, n_true, n_pred).mean())


def cellpose_style(truth: np.ndarray, pred: np.ndarray) -> float:
    nt, npred = int(truth.max()), int(pred.max())
    overlap = _pixel_overlap(truth.ravel(), pred.ravel(), nt, npred).astype(np.float64)
    area_pred = overlap.sum(axis=0, keepdims=True)
    area_true = overlap.sum(axis=1, keepdims=True)
    iou = np.nan_to_num(overlap / (area_true + area_pred - overlap))[1:, 1:]
    return _accuracy(np.array([_hungarian_tp(iou, t) for t in IOU_THRESHOLDS]), nt, npred)


def stardist_style(truth: np.ndarray, pred: np.ndarray) -> float:
    nt, npred = int(truth.max()), int(pred.max())
    paired = truth.ravel().astype(np.int64) * (npred + 1) + pred.ravel()
    overlap = np.bincount(paired, minlength=(nt + 1) * (npred + 1)).reshape(nt + 1, npred + 1)
    overlap = overlap.astype(np.float32)
    union = overlap.sum(axis=1, keepdims=True) + overlap.sum(axis=0, keepdims=True) - overlap
    iou = (overlap / np.maximum(union, np.float32(1)))[1:, 1:]
    tp = [_hungarian_tp(iou, np.float32(t)) for t in IOU_THRESHOLDS]
    return _accuracy(np.array(tp), nt, npred)


def notebook_style(truth: np.ndarray, pred: np.ndarray) -> float:
    n_true, n_pred = len(np.unique(truth)), len(np.unique(pred))
    inter = np.histogram2d(truth.ravel(), pred.ravel(), bins=(n_true, n_pred))[0]
    area_true = np.histogram(truth, bins=n_true)[0][:, None]
    area_pred = np.histogram(pred, bins=n_pred)[0][None, :]
    union = (area_true + area_pred - inter)[1:, 1:]
    union[union == 0] = 1e-9
    iou = inter[1:, 1:] / union
    scores = []
    for t in IOU_THRESHOLDS:
        matches = iou > t
        tp = np.sum(np.sum(matches, axis=1) == 1)
        fp = np.sum(np.sum(matches, axis=0) == 0)
        fn = np.sum(np.sum(matches, axis=1) == 0)
        scores.append(tp / (tp + fp + fn) if tp + fp + fn else 1.0)
    return float(np.mean(scores))


# --- timing -------------------------------------------------------------------------------------


def timed(fn: Callable, items: list) -> tuple[float, list[float]]:
    """Total seconds of fn over the items, and its results."""
    fn(*items[0])  # compile / warm up
    start = time.perf_counter()
    results = [fn(*item) for item in items]
    return time.perf_counter() - start, results


def median_ms(fn: Callable, item: tuple, repeat: int) -> float:
    """Median milliseconds of one call (robust to a busy machine)."""
    fn(*item)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*item)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=15, help="repeats per density probe")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    counts = densities(rng, args.images)
    pairs = []
    for n in tqdm(counts, desc="generating", unit="image"):
        truth = cells(rng, int(n))
        pairs.append((truth, predicted(rng, truth)))
    texts = [[list(rle.encode_labels(x).values()) for x in pair] for pair in pairs]

    def from_labels(truth, pred):
        return metrics.match_labels(truth, pred).score

    def from_runs(truth_runs, pred_runs):
        return metrics.match_runs(truth_runs, pred_runs).score

    def parse(truth_texts, pred_texts):
        return rle.parse_runs(truth_texts, SHAPE), rle.parse_runs(pred_texts, SHAPE)

    def read_both(truth, pred):
        return int(truth.sum()), int(pred.sum())

    parse_s, runs = timed(parse, texts)
    scorers = {
        "cellpipe labels": (from_labels, pairs),
        "cellpipe RLE": (from_runs, runs),
        "cellpose": (cellpose_style, pairs),
        "stardist": (stardist_style, pairs),
        "notebook": (notebook_style, pairs),
    }

    print(f"{len(pairs)} images {SHAPE[0]}x{SHAPE[1]}, objects per image: ", end="")
    print(f"median {int(np.median(counts))}, max {counts.max()}, total {counts.sum()}")
    probes = [30, 120, 340, 790]
    probe_pairs = []
    for n in probes:
        truth = cells(rng, n)
        pred = predicted(rng, truth)
        probe_pairs.append(
            {
                "labels": (truth, pred),
                "runs": parse(*(list(rle.encode_labels(x).values()) for x in (truth, pred))),
            }
        )
    print(
        "\nms per image at",
        ", ".join(f"{int(p['labels'][0].max())}" for p in probe_pairs),
        "objects:",
    )
    for name, (fn, _) in scorers.items():
        kind = "runs" if name == "cellpipe RLE" else "labels"
        per = [median_ms(fn, p[kind], args.repeat) for p in probe_pairs]
        print(f"  {name:<16}" + "".join(f"{ms:>9.2f}" for ms in per))
    read = [median_ms(read_both, p["labels"], args.repeat) for p in probe_pairs]
    print(f"  {'read both once':<16}" + "".join(f"{ms:>9.2f}" for ms in read))

    print(f"\nall {len(pairs)} images, one core:")
    totals, scores = {}, {}
    for name, (fn, items) in scorers.items():
        totals[name], scores[name] = timed(fn, items)
    print(f"  {'RLE parse':<16}{parse_s:>9.3f} s   (text -> runs, both sides)")
    reference = np.array(scores["cellpipe labels"])
    fastest_peer = min(v for k, v in totals.items() if not k.startswith("cellpipe"))
    for name, seconds in totals.items():
        diff = np.abs(np.array(scores[name]) - reference).max()
        print(
            f"  {name:<16}{seconds:>9.3f} s  {seconds / len(pairs) * 1e3:>8.2f} ms/image"
            f"  x{seconds / totals['cellpipe labels']:>7.2f} of cellpipe labels"
            f"  max |score diff| {diff:.2e}"
        )
    print(f"\nfastest peer / cellpipe labels: {fastest_peer / totals['cellpipe labels']:.1f}x")
    print(f"fastest peer / cellpipe RLE:    {fastest_peer / totals['cellpipe RLE']:.1f}x")
    print(
        f"cellpipe RLE / cellpipe labels: {totals['cellpipe RLE'] / totals['cellpipe labels']:.2f}"
    )
    print(f"mean MAP-IoU of the set: {reference.mean():.4f}")


if __name__ == "__main__":
    main()
