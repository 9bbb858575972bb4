"""MAP-IoU against a brute-force oracle: per-object masks, IoU matrix, Hungarian matching."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from pipeline.core import rle
from pipeline.core.errors import CellpipeError
from pipeline.core.metrics import (
    IOU_THRESHOLDS,
    ImageMatch,
    MatchTable,
    OverlapError,
    map_iou,
    match_labels,
    match_runs,
    match_stacks,
    stack_runs,
)
from pipeline.core.submission_matching import match_submission

COMPETITION_THRESHOLDS = np.arange(0.5, 1.0, 0.05)  # as Kaggle notebooks write them, in float64


def oracle(true_masks: list[np.ndarray], pred_masks: list[np.ndarray]) -> ImageMatch:
    """Slow reference: IoU of every pair in float64, `iou > t`, maximum one-to-one matching."""
    true_masks = [m for m in true_masks if m.any()]
    pred_masks = [m for m in pred_masks if m.any()]
    iou = np.zeros((len(true_masks), len(pred_masks)))
    for i, t in enumerate(true_masks):
        for j, p in enumerate(pred_masks):
            iou[i, j] = (t & p).sum() / (t | p).sum()
    tp = []
    for threshold in COMPETITION_THRESHOLDS:
        hit = iou > threshold
        rows, cols = linear_sum_assignment(hit, maximize=True)
        tp.append(int(hit[rows, cols].sum()))
    return ImageMatch(np.array(tp), len(true_masks), len(pred_masks))


def masks_of(labels: np.ndarray) -> list[np.ndarray]:
    return [labels == k for k in np.unique(labels) if k != 0]


def assert_same(got: ImageMatch, want: ImageMatch) -> None:
    assert (got.n_true, got.n_pred) == (want.n_true, want.n_pred)
    np.testing.assert_array_equal(got.tp, want.tp)
    assert got.score == pytest.approx(want.score, abs=1e-12)


# --- random label images ------------------------------------------------------------------------


def touching_cells(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    """Voronoi cells of n random seeds (all touching), with some background carved out."""
    seeds = np.zeros(shape, np.int32)
    seeds[rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)] = np.arange(1, n + 1)
    _, (rows, cols) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[rows, cols]
    labels[rng.random(shape) < rng.uniform(0, 0.3)] = 0
    return labels


def perturbed(rng: np.random.Generator, labels: np.ndarray, shift: int = 2) -> np.ndarray:
    """A prediction: shifted, grown or shrunk, with objects dropped, merged, split and added."""
    pred = np.roll(labels, tuple(rng.integers(-shift, shift + 1, 2)), axis=(0, 1))
    if rng.random() < 0.5:
        grown = ndimage.grey_dilation(pred, size=3)
        pred = np.where(pred == 0, grown, pred)
    if rng.random() < 0.5:
        pred[ndimage.grey_erosion(pred, size=3) != pred] = 0
    ids = np.unique(pred)[1:]
    if len(ids):
        drop = rng.choice(ids, size=len(ids) // 5, replace=False)
        pred[np.isin(pred, drop)] = 0
        a, b = rng.choice(ids, size=2)
        pred[pred == b] = a  # merge two objects
        row = rng.integers(0, pred.shape[0])
        split = (pred == a) & (np.arange(pred.shape[0])[:, None] < row)
        pred[split] = pred.max() + 1
    blob = np.zeros_like(pred)
    r, c = rng.integers(0, pred.shape[0] - 4), rng.integers(0, pred.shape[1] - 4)
    blob[r : r + 4, c : c + 4] = 1
    pred[blob > 0] = pred.max() + 1  # a false positive painted over whatever was there
    relabel = np.concatenate([[0], rng.permutation(np.arange(1, pred.max() + 1)) * 7])
    return relabel[pred]  # non-consecutive labels in random order


@pytest.mark.parametrize("seed", range(60))
def test_label_images_match_the_oracle(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(20, 60)), int(rng.integers(20, 70)))
    n = int(rng.integers(1, max(2, shape[0] * shape[1] // 25)))  # up to one object per 25 px
    truth = touching_cells(rng, shape, n)
    pred = perturbed(rng, truth)
    want = oracle(masks_of(truth), masks_of(pred))
    assert_same(match_labels(truth, pred), want)
    assert map_iou(truth, pred) == pytest.approx(want.score, abs=1e-12)
    for order in ("row", "column"):  # RLE-native, both pixel orders, gives the same
        true_runs = rle.parse_runs(list(rle.encode_labels(truth, order).values()), shape)
        pred_runs = rle.parse_runs(list(rle.encode_labels(pred, order).values()), shape)
        assert_same(match_runs(true_runs, pred_runs), want)


def test_dense_image_matches_the_oracle():
    rng = np.random.default_rng(8)
    truth = touching_cells(rng, (90, 120), 300)  # ~36 px per object, touching
    pred = perturbed(rng, truth, shift=1)
    want = oracle(masks_of(truth), masks_of(pred))
    assert want.tp[0] > 100 and want.tp[0] > want.tp[5] > want.tp[9]  # IoUs of every level
    assert_same(match_labels(truth, pred), want)


@settings(max_examples=300, deadline=None)
@given(
    arrays(np.uint8, (5, 6), elements=st.integers(0, 4)),
    arrays(np.uint8, (5, 6), elements=st.integers(0, 4)),
)
def test_any_small_label_images_match_the_oracle(truth, pred):
    want = oracle(masks_of(truth), masks_of(pred))
    assert_same(match_labels(truth, pred), want)
    runs = [rle.parse_runs(list(rle.encode_labels(x).values()), x.shape) for x in (truth, pred)]
    assert_same(match_runs(*runs), want)


# --- thresholds and empty cases -----------------------------------------------------------------


@pytest.mark.parametrize("covered", range(9, 21))
def test_iou_exactly_on_a_threshold_does_not_match(covered):
    truth = np.zeros((1, 20), np.int32)
    truth[0, :] = 1
    pred = np.zeros_like(truth)
    pred[0, :covered] = 1  # IoU = covered / 20: 0.45, 0.50, ..., 1.0
    iou = covered / 20
    got = match_labels(truth, pred)
    np.testing.assert_array_equal(got.tp, (iou > COMPETITION_THRESHOLDS).astype(int))
    np.testing.assert_array_equal(got.tp, (covered > np.arange(10, 20)).astype(int))  # strict


def test_iou_a_hair_above_a_threshold_matches():
    """11000001 / 20000001 > 0.55, though float32 rounds it to 0.55 (stardist's precision)."""
    n = 20_000_001
    truth = np.ones((1, n), np.uint8)
    pred = np.zeros_like(truth)
    pred[0, :11_000_001] = 1
    assert np.float32(11_000_001 / n) == np.float32(0.55)
    np.testing.assert_array_equal(match_labels(truth, pred).tp, [1, 1] + [0] * 8)


def test_thresholds_are_the_competitions():
    np.testing.assert_allclose(IOU_THRESHOLDS, COMPETITION_THRESHOLDS)
    assert len(IOU_THRESHOLDS) == 10


def test_empty_cases():
    empty = np.zeros((4, 4), np.int32)
    one = empty.copy()
    one[1:3, 1:3] = 5
    assert map_iou(empty, empty) == 1.0  # nothing to find, nothing found
    assert map_iou(empty, one) == 0.0  # only false positives
    assert map_iou(one, empty) == 0.0  # only misses
    assert map_iou(one, one) == 1.0
    both_empty = match_labels(empty, empty)
    assert (both_empty.n_true, both_empty.n_pred, both_empty.tp.sum()) == (0, 0, 0)
    assert np.all(both_empty.scores == 1.0)
    np.testing.assert_array_equal(match_labels(one, empty).fn, np.ones(10))
    np.testing.assert_array_equal(match_labels(empty, one).fp, np.ones(10))


def test_label_values_and_dtypes():
    truth = np.zeros((6, 6), np.int64)
    truth[:3] = 10**12  # labels far larger than the pixel count
    truth[3:] = 3
    pred = (truth == 3).astype(bool)
    assert match_labels(truth, pred).tp[0] == 1
    for dtype in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.uint64, ">i4"):
        assert map_iou(pred.astype(dtype), pred.astype(dtype)) == 1.0
    assert map_iou(np.asfortranarray(truth % 7), truth % 7) == 1.0
    no_background = np.ones((3, 3), np.int64) * 2**40
    assert map_iou(no_background, np.ones((3, 3), np.uint8)) == 1.0


@pytest.mark.parametrize(
    ("truth", "pred", "message"),
    [
        (np.zeros((3, 3), np.int32), np.zeros((3, 4), np.int32), "differ in shape"),
        (np.zeros((3, 3), np.int32), -np.ones((3, 3), np.int32), "labels must be >= 0"),
        (np.zeros((3, 3), np.int32), np.zeros((3, 3), np.float32), "integer labels"),
        (np.zeros((3, 3, 1), np.int32), np.zeros((3, 3, 1), np.int32), "2-D label image"),
    ],
)
def test_bad_label_images(truth, pred, message):
    with pytest.raises(ValueError, match=message):
        match_labels(truth, pred)


# --- overlapping masks (stacks, RLE) ------------------------------------------------------------


def random_stack(rng, shape, n, size=(3, 12)) -> np.ndarray:
    stack = np.zeros((n, *shape), bool)
    for plane in stack:
        h, w = rng.integers(*size, 2)
        r, c = rng.integers(0, shape[0] - h), rng.integers(0, shape[1] - w)
        plane[r : r + h, c : c + w] = True
    return stack


def jitter(rng, stack) -> np.ndarray:
    out = np.stack([np.roll(m, tuple(rng.integers(-1, 2, 2)), axis=(0, 1)) for m in stack])
    return out[rng.permutation(len(out))]


def overlaps(stack: np.ndarray) -> bool:
    return bool((stack.sum(axis=0) > 1).any())


@pytest.mark.parametrize("seed", range(40))
def test_overlapping_stacks_match_the_oracle(seed):
    """Overlaps in ground truth only, in predictions only, and on both sides."""
    rng = np.random.default_rng(seed)
    truth = random_stack(rng, (30, 30), int(rng.integers(1, 14)))
    pred = jitter(rng, truth)
    if seed % 3 == 0:  # predictions without overlaps: the label-image path's rule applies
        labels = np.zeros(truth.shape[1:], np.int32)
        for k, m in enumerate(pred):
            labels[m] = k + 1
        pred = np.stack(masks_of(labels)) if labels.any() else pred[:0]
    assert_same(match_stacks(truth, pred), oracle(list(truth), list(pred)))
    assert_same(match_stacks(pred, truth), oracle(list(pred), list(truth)))


def test_overlapping_truth_is_matched_one_to_one():
    """One prediction matching two overlapping ground-truth masks counts once, the other is FN."""
    truth = np.zeros((2, 1, 10), bool)
    truth[0, 0, :8] = True
    truth[1, 0, 1:9] = True
    pred = truth[:1, :, :].copy()
    got = match_stacks(truth, pred)
    assert overlaps(truth)
    assert (got.tp[0], got.fp[0], got.fn[0]) == (1, 0, 1)
    assert_same(got, oracle(list(truth), list(pred)))


def test_maximum_matching_beats_greedy_when_both_sides_overlap():
    """Greedy best-IoU pairing finds 1 match here; the maximum matching finds 2."""
    truth = np.zeros((2, 1, 12), bool)
    truth[0, 0, 0:10] = True  # g0
    truth[1, 0, 0:7] = True  # g1, inside g0
    pred = np.zeros((2, 1, 12), bool)
    pred[0, 0, 0:9] = True  # p0: IoU 0.9 with g0, 0.78 with g1
    pred[1, 0, 0:12] = True  # p1: IoU 0.83 with g0 only
    got = match_stacks(truth, pred)
    assert got.tp[0] == 2
    assert_same(got, oracle(list(truth), list(pred)))


def test_overlapping_predictions_in_runs_are_an_error():
    truth = rle.parse_runs(["1 4"], (2, 4))
    pred = rle.parse_runs(["1 2", "5 2", "2 1"], (2, 4))
    with pytest.raises(OverlapError) as err:
        match_runs(truth, pred)
    assert sorted(err.value.pair) == [0, 2]
    assert match_runs(truth, pred, allow_pred_overlap=True).n_pred == 3


def test_stack_runs_round_trip():
    rng = np.random.default_rng(0)
    stack = random_stack(rng, (9, 11), 5, size=(1, 6))
    runs = stack_runs(stack)
    texts = rle.format_runs(runs)
    np.testing.assert_array_equal(rle.decode_stack(texts, (9, 11)), stack)


# --- tables and submissions ---------------------------------------------------------------------


def test_table_summary_per_class_and_threshold():
    a = np.zeros((4, 4), np.int32)
    a[:2, :2] = 1
    a[2:, 2:] = 2
    half = a.copy()
    half[2:, 3] = 0  # object 2 at IoU 0.5: never matches
    matches = {"x": match_labels(a, a), "y": match_labels(a, half), "z": match_labels(a, a * 0)}
    table = MatchTable.from_matches(matches, {"x": "astro", "y": "astro", "z": "cort"})
    assert table.ids == ["x", "y", "z"]
    np.testing.assert_allclose(table.image_scores, [1.0, 1 / 3, 0.0])
    summary = table.summary()
    assert summary["score"] == pytest.approx(4 / 9)
    assert summary["per_class"] == {"astro": pytest.approx(2 / 3), "cort": 0.0}
    first = summary["per_threshold"][0]
    assert (first["threshold"], first["tp"], first["fp"], first["fn"]) == (0.5, 3, 1, 3)
    assert summary["n_true"] == 6 and summary["n_pred"] == 4


def truth_frame(images: dict[str, np.ndarray], cell_type: str = "astro") -> pd.DataFrame:
    rows = []
    for image_id, labels in images.items():
        for text in rle.encode_labels(labels).values():
            h, w = labels.shape
            rows.append([image_id, text, w, h, cell_type])
    return pd.DataFrame(rows, columns=["id", "annotation", "width", "height", "cell_type"])


def submission_frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["id", "predicted"])


@pytest.fixture
def truth():
    rng = np.random.default_rng(3)
    return truth_frame(
        {"a": touching_cells(rng, (20, 30), 12), "b": touching_cells(rng, (15, 15), 5)}
    )


def test_submission_scores_like_label_images(truth):
    rng = np.random.default_rng(4)
    a_true = rle.decode_labels(truth[truth.id == "a"]["annotation"].tolist(), (20, 30))
    a_pred = perturbed(rng, a_true)
    rows = [["a", t] for t in rle.encode_labels(a_pred).values()] + [["a", ""]]
    table, empty = match_submission(submission_frame(rows), truth)
    assert table.ids == ["a", "b"] and empty == ["b"]  # b has no row: an empty prediction
    assert table.image_scores[0] == pytest.approx(map_iou(a_true, a_pred))
    assert table.image_scores[1] == 0.0
    only_a, _ = match_submission(submission_frame(rows), truth, image_ids={"a"})
    assert only_a.ids == ["a"] and only_a.classes == ["astro"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["a", "1 2"], ["c", "1 1"]], "line 3: unknown image id 'c'"),
        (
            [["a", "1 2"], ["a", "5 3"], ["a", "2 1"]],
            "line 4 (a): overlaps the prediction on line 2",
        ),
        (
            [["a", "1 2"], ["a", "600 2"]],
            "line 3: invalid RLE: run at token 1 (start 600) runs past",
        ),
        ([["b", "1 2 3"]], "line 2: invalid RLE: odd number of tokens"),
        ([["b", "1 x"]], "line 2: invalid RLE: token 2 ('x') is not an integer"),
        ([["b", "3 1 1 1"]], "line 2: invalid RLE: run at token 3 (start 1) is unsorted"),
    ],
)
def test_bad_submissions_name_the_line(truth, rows, message):
    with pytest.raises(CellpipeError) as err:
        match_submission(submission_frame(rows), truth)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_fold_image_is_an_error(truth):
    with pytest.raises(CellpipeError, match="image 'zz' is not in the truth"):
        match_submission(submission_frame([]), truth, image_ids={"a", "zz"})


def test_truth_may_overlap_itself():
    truth = pd.DataFrame(
        [["a", "1 6", 4, 2, "cort"], ["a", "3 6", 4, 2, "cort"]],
        columns=["id", "annotation", "width", "height", "cell_type"],
    )
    table, _ = match_submission(submission_frame([["a", "1 6"]]), truth)
    assert table.tp[0, 0] == 1 and table.n_true[0] == 2
