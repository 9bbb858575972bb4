"""Kaggle RLE: round trips on random masks in both pixel orders, oracles, and every error path."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.core import rle
from pipeline.core.errors import RLEError

ORDERS = ("row", "column")


def reference_encode(mask: np.ndarray, order: str) -> str:
    """The plain-numpy encoder of the Kaggle notebooks, as an independent oracle."""
    flat = mask.ravel(order="C" if order == "row" else "F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [0]]))) + 1
    edges[1::2] -= edges[::2]
    return " ".join(map(str, edges))


def masks(max_side: int = 24):
    """Random masks including empty, full, single pixels and border pixels."""
    shapes = st.tuples(st.integers(1, max_side), st.integers(1, max_side))
    return shapes.flatmap(lambda s: arrays(np.bool_, s))


def label_images(max_side: int = 24, max_label: int = 12):
    shapes = st.tuples(st.integers(1, max_side), st.integers(1, max_side))
    return shapes.flatmap(lambda s: arrays(np.int32, s, elements=st.integers(0, max_label)))


@settings(max_examples=300, deadline=None)
@given(mask=masks(), order=st.sampled_from(ORDERS))
def test_encode_matches_reference_and_decodes_back(mask, order):
    text = rle.encode(mask, order)
    assert text == reference_encode(mask, order)
    np.testing.assert_array_equal(rle.decode(text, mask.shape, order), mask)


@settings(max_examples=200, deadline=None)
@given(labels=label_images(), order=st.sampled_from(ORDERS))
def test_label_image_round_trip(labels, order):
    texts = rle.encode_labels(labels, order)
    assert sorted(texts) == sorted(set(np.unique(labels).tolist()) - {0})
    for label, text in texts.items():
        assert text == reference_encode(labels == label, order)
    decoded = rle.decode_labels(list(texts.values()), labels.shape, order)
    relabel = np.zeros(labels.max() + 1, np.int32)
    relabel[list(texts)] = np.arange(1, len(texts) + 1)
    np.testing.assert_array_equal(decoded, relabel[labels])
    stack = rle.decode_stack(list(texts.values()), labels.shape, order)
    for k, label in enumerate(texts):
        np.testing.assert_array_equal(stack[k], labels == label)


def test_parse_runs_gives_zero_based_runs_per_instance():
    runs = rle.parse_runs(["1 2 5 1", "", "10 3"], (3, 4))
    np.testing.assert_array_equal(runs.starts, [0, 4, 9])
    np.testing.assert_array_equal(runs.lengths, [2, 1, 3])
    np.testing.assert_array_equal(runs.offsets, [0, 2, 2, 3])


def test_whitespace_is_tolerated_and_adjacent_runs_are_valid():
    np.testing.assert_array_equal(rle.decode("  1 2   3 1 ", (1, 4)), [[1, 1, 1, 0]])


def test_dense_image_round_trip():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 300, size=(52, 70)).astype(np.int32)
    texts = rle.encode_labels(labels)
    decoded = rle.decode_labels(list(texts.values()), labels.shape)
    assert len(np.unique(decoded)) == len(np.unique(labels))
    np.testing.assert_array_equal(decoded > 0, labels > 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3", "odd number of tokens"),
        ("1 x", "token 2 ('x') is not an integer"),
        ("1.5 2", "is not an integer"),
        ("1 2a", "is not an integer"),
        ("0 2", "token 1 ('0') is not positive"),
        ("3 0", "token 2 ('0') is not positive"),
        ("-3 2", "is not positive"),
        ("5 1 2 1", "unsorted or overlaps"),
        ("1 3 2 1", "unsorted or overlaps"),
        ("11 3", "runs past the image end (12 pixels)"),
        ("13 1", "runs past the image end"),
    ],
)
def test_validation_errors_are_one_line(text, message):
    with pytest.raises(RLEError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        rle.validate(text, (3, 4))
    assert "\n" not in str(err.value)


def test_error_names_the_instance():
    with pytest.raises(RLEError, match="instance 1: invalid RLE: odd number"):
        rle.parse_runs(["1 2", "4 1 6"], (3, 4))


def test_non_text_and_newlines_are_rejected():
    with pytest.raises(RLEError, match="must be text"):
        rle.parse_runs([float("nan")], (3, 4))
    with pytest.raises(RLEError, match="newline"):
        rle.parse_runs(["1 2\n3 1"], (3, 4))


def test_empty_shape_is_rejected():
    with pytest.raises(RLEError, match="empty"):
        rle.validate("", (0, 4))


def test_overlapping_instances_raise_or_last_wins():
    with pytest.raises(RLEError, match="instance 1: overlaps an earlier"):
        rle.decode_labels(["1 3", "3 2"], (2, 3))
    labels = rle.decode_labels(["1 3", "3 2"], (2, 3), overlap="last")
    np.testing.assert_array_equal(labels, [[1, 1, 2], [2, 0, 0]])


def test_bad_arguments():
    with pytest.raises(ValueError, match="order"):
        rle.encode(np.ones((2, 2), bool), order="diagonal")
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.ones((2, 2, 2), bool))
    with pytest.raises(ValueError, match=">= 0"):
        rle.encode_labels(np.full((2, 2), -1))
    with pytest.raises(ValueError, match="integer labels"):
        rle.encode_labels(np.ones((2, 2), np.float32))
