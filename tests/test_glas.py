"""GlaS object metrics against a brute-force reference and hand-computed cases."""

import numpy as np
import pytest
from scipy.spatial.distance import directed_hausdorff

from pipeline.core.glas import GlasImage, glas_image, glas_summary, hausdorff


def reference(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The GlaS definitions written out over per-object masks and pixel coordinate sets."""
    gs = [truth == k for k in np.unique(truth) if k]
    ss = [pred == k for k in np.unique(pred) if k]
    overlap = np.array([[(g & s).sum() for s in ss] for g in gs]).reshape(len(gs), len(ss))

    def hd(a, b):
        pa, pb = np.argwhere(a), np.argwhere(b)
        return max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0])

    def side(own, other, ov):
        dice, dist = [], []
        for i, obj in enumerate(own):
            if len(other) and ov[i].max() > 0:
                j = int(np.argmax(ov[i]))
                dice.append(2 * ov[i, j] / (obj.sum() + other[j].sum()))
                dist.append(hd(obj, other[j]))
            else:
                dice.append(0.0)
                dist.append(min((hd(obj, o) for o in other), default=np.hypot(*truth.shape)))
        w = np.array([o.sum() for o in own], float)
        return (w @ dice / w.sum(), w @ dist / w.sum()) if len(own) else None

    tp = (
        sum(
            1
            for j in range(len(ss))
            if overlap[:, j].max(initial=0) * 2 > gs[np.argmax(overlap[:, j])].sum()
        )
        if len(gs)
        else 0
    )
    fp, fn = len(ss) - tp, len(gs) - tp
    halves = [h for h in (side(gs, ss, overlap), side(ss, gs, overlap.T)) if h is not None]
    return {
        "object_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "object_dice": float(np.mean([h[0] for h in halves])) if halves else 1.0,
        "object_hausdorff": float(np.mean([h[1] for h in halves])) if halves else 0.0,
        "count": min(len(gs), len(ss)) / max(len(gs), len(ss)) if gs or ss else 1.0,
    }


def blobs(rng, shape, n):
    labels = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        h, w = rng.integers(2, 9, 2)
        r, c = rng.integers(0, shape[0] - h), rng.integers(0, shape[1] - w)
        labels[r : r + h, c : c + w] = k  # later blobs cover earlier ones, some vanish
    return labels


@pytest.mark.parametrize("seed", range(25))
def test_matches_the_reference(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(12, 40)), int(rng.integers(12, 40)))
    truth = blobs(rng, shape, int(rng.integers(0, 12)))
    pred = blobs(rng, shape, int(rng.integers(0, 12))) if seed % 4 == 0 else np.roll(truth, 2, 1)
    pred = np.where(rng.random(shape) < 0.1, 0, pred)  # holes: objects split, shapes rough
    got = glas_image(truth, pred).summary()
    want = reference(truth, pred)
    assert got == pytest.approx(want, abs=1e-9)


def test_hand_computed_square():
    truth = np.zeros((10, 10), np.int32)
    truth[2:6, 2:6] = 1  # 16 px
    pred = np.roll(truth, 1, axis=1) * 9  # 12 px overlap
    got = glas_image(truth, pred).summary()
    assert got == pytest.approx(
        {"object_f1": 1.0, "object_dice": 0.75, "object_hausdorff": 1.0, "count": 1.0}
    )
    assert glas_image(truth.astype(np.int64) * 10**12, pred).summary() == got  # huge labels


def test_half_coverage_is_not_a_true_positive():
    truth = np.zeros((2, 8), np.int32)
    truth[0, :4] = 1
    pred = np.zeros_like(truth)
    pred[0, :2] = 1  # exactly 50% of the ground-truth object
    image = glas_image(truth, pred)
    assert (image.tp, image.n_pred, image.n_true) == (0, 1, 1)
    assert image.summary()["object_f1"] == 0.0


def test_empty_cases():
    empty = np.zeros((3, 4), np.int32)
    one = empty.copy()
    one[0, 0] = 1
    assert glas_image(empty, empty).summary() == {
        "object_f1": 1.0,
        "object_dice": 1.0,
        "object_hausdorff": 0.0,
        "count": 1.0,
    }
    lonely = glas_image(empty, one).summary()
    assert lonely == {"object_f1": 0.0, "object_dice": 0.0, "object_hausdorff": 5.0, "count": 0.0}
    assert glas_summary([]) == {k: pytest.approx(np.nan, nan_ok=True) for k in lonely}


def test_pooling_weights_objects_over_the_whole_set():
    big = np.zeros((20, 20), np.int32)
    big[:10, :10] = 1  # 100 px, perfect
    small = np.zeros((20, 20), np.int32)
    small[0, :4] = 1  # 4 px, missed
    images = [glas_image(big, big), glas_image(small, np.zeros_like(small))]
    pooled = glas_summary(images)
    # truth half: (100 * 1 + 4 * 0) / 104; prediction half: 1
    assert pooled["object_dice"] == pytest.approx((100 / 104 + 1) / 2)
    assert pooled["object_f1"] == pytest.approx(2 / 3)
    assert pooled["count"] == pytest.approx(0.5)
    assert isinstance(images[0], GlasImage)


def test_hausdorff_of_masks():
    a = np.zeros((5, 9), bool)
    b = a.copy()
    a[0, 0] = True
    b[3, 4] = True
    b[0, 0] = True
    assert hausdorff(a, b) == 5.0
