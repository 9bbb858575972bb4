"""Overlays of predicted and true outlines, the score histogram, `cellpipe overlay` and
`cellpipe score --overlays`."""

import json

import numpy as np
import pandas as pd
from PIL import Image
from test_stages_data import make_competition

from pipeline.cli import main
from pipeline.core import rle
from pipeline.core.overlays import (
    BOTH_COLOUR,
    PREDICTED_COLOUR,
    TRUE_COLOUR,
    label_image,
    outline_overlay,
    score_histogram,
)


def test_outlines_are_coloured_by_who_drew_them():
    truth = np.zeros((12, 12), np.int32)
    truth[2:7, 2:7] = 1
    predicted = np.zeros_like(truth)
    predicted[2:7, 4:9] = 1  # the same rows, shifted right by two columns
    image = np.tile(np.linspace(0, 255, 12, dtype=np.uint8), (12, 1))
    out = outline_overlay(image, truth, predicted)
    assert out.shape == (12, 12, 3) and out.dtype == np.uint8
    assert tuple(out[4, 2]) == TRUE_COLOUR  # left edge of the truth only
    assert tuple(out[4, 8]) == PREDICTED_COLOUR  # right edge of the prediction only
    assert tuple(out[2, 5]) == BOTH_COLOUR  # the shared top edge
    assert out[10, 10, 0] == out[10, 10, 1] == out[10, 10, 2]  # elsewhere the image, in grey


def test_label_image_paints_rle_rows_in_order():
    labels = np.zeros((6, 7), np.int32)
    labels[1:3, 1:4] = 1
    labels[3:6, 4:7] = 2
    texts = list(rle.encode_labels(labels).values())
    assert np.array_equal(label_image([*texts, ""], labels.shape) > 0, labels > 0)
    assert len(np.unique(label_image(texts, labels.shape))) == 3


def test_histogram_has_a_row_per_class():
    small = score_histogram({"a": [0.1, 0.15]})
    tall = score_histogram({"a": [0.1, 0.15], "b": [0.9]})
    assert small.ndim == 3 and tall.shape[0] > small.shape[0]
    high = score_histogram({"a": [0.9, 0.95]})
    assert high.shape == small.shape and (high != small).any()  # the bars follow the scores


def test_score_overlays_show_the_worst_images(tmp_path, capsys):
    truth = make_competition(tmp_path / "data")
    settings = [f"work_dir={tmp_path / 'w'}", f"data_dir={tmp_path / 'data'}", "score.record=false"]
    submission = truth.rename(columns={"annotation": "predicted"})[["id", "predicted"]]
    missed = "astro00"  # its rows left out: scored as empty, the worst astro image
    submission = submission[submission["id"] != missed]
    submission.to_csv(tmp_path / "oof.csv", index=False)
    args = ["score", "--submission", str(tmp_path / "oof.csv"), "--overlays", "1", *settings]
    assert main(args) == 0
    out = tmp_path / "w" / "scores" / "oof_overlays"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["astro_0.000_astro00.png", "cort_1.000_cort00.png", "histogram.png"]
    worst = np.asarray(Image.open(out / "astro_0.000_astro00.png"))
    assert (worst == TRUE_COLOUR).all(axis=2).any()  # the cells it missed, in green
    assert not (worst == PREDICTED_COLOUR).all(axis=2).any()
    perfect = np.asarray(Image.open(out / "cort_1.000_cort00.png"))
    assert (perfect == BOTH_COLOUR).all(axis=2).any()
    assert not (perfect == TRUE_COLOUR).all(axis=2).any()

    report = tmp_path / "w" / "scores" / "oof.json"
    assert json.loads(report.read_text())["per_image"]
    assert (
        main(["overlay", str(report), "--worst", "2", "--output", str(tmp_path / "o"), *settings])
        == 0
    )
    assert len(list((tmp_path / "o").glob("astro_*.png"))) == 2
    capsys.readouterr()
    assert main(["overlay", str(tmp_path / "none.json"), *settings]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing score report" in err
    assert pd.read_csv(tmp_path / "oof.csv")["id"].nunique() == 11
