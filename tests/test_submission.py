"""Submission CSV: writing, reading, and every rejection a Kaggle validator would make."""

import numpy as np
import pandas as pd
import pytest

from pipeline.core import rle
from pipeline.core.errors import CellpipeError
from pipeline.core.submission import (
    read_submission,
    sample_order,
    validate_submission,
    write_submission,
)

SHAPES = {"a": (4, 5), "b": (3, 3)}


def test_write_read_validate_round_trip(tmp_path):
    labels = np.zeros((4, 5), np.int32)
    labels[0, :2], labels[2:, 3:] = 1, 2
    texts = list(rle.encode_labels(labels).values())
    frame = write_submission(tmp_path / "s.csv", {"a": texts, "b": []})
    assert frame.values.tolist() == [["a", texts[0]], ["a", texts[1]], ["b", ""]]
    back = read_submission(tmp_path / "s.csv")
    assert validate_submission(back, SHAPES) == {"a": texts, "b": []}
    assert (tmp_path / "s.csv").read_text().splitlines()[-1] == "b,"


def frame(rows):
    return pd.DataFrame(rows, columns=["id", "predicted"])


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["a", "1 2"], ["c", "1 1"], ["b", ""]], "line 3: unknown image id 'c'"),
        ([["a", "1 2"], ["a", "2 2"], ["b", ""]], "line 3 (a): overlaps an earlier instance"),
        ([["a", "1 2"], ["a", "19 3"], ["b", ""]], "line 3 (a): invalid RLE: run at token 1"),
        ([["b", "1 2 3"], ["a", ""]], "line 2 (b): invalid RLE: odd number of tokens"),
        ([["a", "3 1 1 1"], ["b", ""]], "line 2 (a): invalid RLE: run at token 3 (start 1) is"),
        ([["a", "1 2"], ["a", ""], ["b", ""]], "line 3: empty prediction for a"),
        ([["a", "1 2"]], "no row for 1 image(s), e.g. 'b'"),
    ],
)
def test_rejections_name_the_line(rows, message):
    with pytest.raises(CellpipeError) as err:
        validate_submission(frame(rows), SHAPES)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_images_allowed_when_scoring():
    assert validate_submission(frame([["a", "1 2"]]), SHAPES, require_all=False) == {
        "a": ["1 2"],
        "b": [],
    }


def test_read_errors(tmp_path):
    with pytest.raises(CellpipeError, match="missing submission file"):
        read_submission(tmp_path / "none.csv")
    (tmp_path / "cols.csv").write_text("id,annotation\na,1 2\n")
    with pytest.raises(CellpipeError, match="columns must be id,predicted"):
        read_submission(tmp_path / "cols.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CellpipeError, match="not a readable CSV"):
        read_submission(tmp_path / "empty.csv")


def test_rows_follow_the_sample_then_the_images_it_lacks(tmp_path):
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("id,predicted\nc,\nb,1 1\nb,\n")
    shapes = {"a": (2, 2), "b": (2, 2), "c": (2, 2), "d": (2, 2)}
    assert sample_order(sample, shapes, tmp_path / "test") == ["c", "b", "a", "d"]
    with pytest.raises(CellpipeError, match=r"names 'c', which is not in .*test$"):
        sample_order(sample, {"b": (2, 2)}, tmp_path / "test")
