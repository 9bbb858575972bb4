"""COCO conversion: pixel-exact both ways against pycocotools, and every reader's error paths."""

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pipeline.core import coco, rle
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import write_png, write_tiff


def instance_stacks(max_side: int = 20, max_instances: int = 6):
    """Random (n, h, w) stacks of non-empty masks; instances may overlap each other."""
    dims = st.tuples(
        st.integers(1, max_instances), st.integers(1, max_side), st.integers(1, max_side)
    )
    stacks = dims.flatmap(lambda d: arrays(np.bool_, d))
    return stacks.filter(lambda s: s.reshape(len(s), -1).any(axis=1).all())


def frame(stack: np.ndarray, order: str, image_id: str = "img0") -> pd.DataFrame:
    n, h, w = stack.shape
    return pd.DataFrame(
        {
            "id": image_id,
            "annotation": [rle.encode(m, order) for m in stack],
            "width": w,
            "height": h,
            "cell_type": ["astro", "cort"][n % 2],
            "sample_id": "s0",
        }
    )


@settings(max_examples=150, deadline=None)
@given(stack=instance_stacks(), order=st.sampled_from(("row", "column")))
def test_csv_to_coco_equals_pycocotools_and_back(stack, order):
    df = frame(stack, order)
    result = coco.csv_to_coco(df, order=order)
    assert len(result["annotations"]) == len(stack)
    for mask, ann in zip(stack, result["annotations"]):
        expected = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert ann["segmentation"]["counts"] == expected["counts"].decode()
        assert ann["segmentation"]["size"] == list(mask.shape)
        assert ann["area"] == int(mask.sum())
        assert ann["bbox"] == mask_utils.toBbox(expected).tolist()
        assert ann["iscrowd"] == 0
    back = coco.coco_to_csv(result, order=order)
    assert back["annotation"].tolist() == df["annotation"].tolist()
    assert back.columns.tolist() == df.columns.tolist()
    pd.testing.assert_frame_equal(
        back[["id", "width", "height", "cell_type", "sample_id"]],
        df[["id", "width", "height", "cell_type", "sample_id"]],
    )


def test_images_metadata_and_categories():
    stack = np.zeros((2, 5, 7), bool)
    stack[0, 1, 1:3] = stack[1, 4, 6] = True
    df = pd.concat([frame(stack, "row", "aaa"), frame(stack[:1], "row", "bbb")])
    result = coco.csv_to_coco(df)
    assert [c["name"] for c in result["categories"]] == ["astro", "cort"]
    first, second = result["images"]
    assert first == {
        "id": 1,
        "file_name": "train/aaa.png",
        "height": 5,
        "width": 7,
        "cell_type": "astro",
        "sample_id": "s0",
    }
    assert second["cell_type"] == "cort"
    assert [a["category_id"] for a in result["annotations"]] == [1, 1, 2]
    json.dumps(result)  # plain JSON types only


def test_empty_annotation_rows_give_images_without_instances():
    df = pd.DataFrame({"id": ["a"], "annotation": [""], "width": [4], "height": [3]})
    result = coco.csv_to_coco(df)
    assert len(result["images"]) == 1 and result["annotations"] == []
    assert result["categories"] == [{"id": 1, "name": "cell", "supercategory": "cell"}]


def test_bad_rle_names_the_image():
    df = pd.DataFrame({"id": ["a", "b"], "annotation": ["1 2", "1 2 3"], "width": 4, "height": 3})
    with pytest.raises(CellpipeError, match="image b: invalid RLE: odd number of tokens"):
        coco.csv_to_coco(df)


def write_csv(tmp_path, text):
    path = tmp_path / "train.csv"
    path.write_text(text)
    return path


def test_read_kaggle_csv_checks(tmp_path):
    ok = coco.read_kaggle_csv(write_csv(tmp_path, "id,annotation,width,height\na,1 2,4,3\n"))
    assert ok["width"].tolist() == [4]
    with pytest.raises(CellpipeError, match="missing column"):
        coco.read_kaggle_csv(write_csv(tmp_path, "id,annotation,width\na,1 2,4\n"))
    with pytest.raises(CellpipeError, match=r"row 3: height 'x' is not a size"):
        coco.read_kaggle_csv(
            write_csv(tmp_path, "id,annotation,width,height\na,1 2,4,3\na,1,4,x\n")
        )
    with pytest.raises(CellpipeError, match="different width/height"):
        coco.read_kaggle_csv(
            write_csv(tmp_path, "id,annotation,width,height\na,1 2,4,3\na,1 1,5,3\n")
        )
    with pytest.raises(CellpipeError, match="missing file"):
        coco.read_kaggle_csv(tmp_path / "nope.csv")


def test_check_image_sizes(tmp_path):
    write_png(tmp_path / "train" / "a.png", np.zeros((3, 4), np.uint8))
    images = [{"id": 1, "file_name": "train/a.png", "height": 3, "width": 4}]
    coco.check_image_sizes({"images": images}, tmp_path)
    with pytest.raises(CellpipeError, match="image is 3x4 .* say 4x3"):
        coco.check_image_sizes({"images": [{**images[0], "height": 4, "width": 3}]}, tmp_path)
    with pytest.raises(CellpipeError, match="missing image"):
        coco.check_image_sizes({"images": [{**images[0], "file_name": "train/b.png"}]}, tmp_path)


def test_livecell_polygons_to_rle(tmp_path):
    root = tmp_path / "LIVECell_dataset_2021"
    image_dir = root / "images" / "livecell_train_val_images"
    write_tiff(image_dir / "A172" / "A172_Phase_A7_1_00d00h00m_1.tif", np.zeros((30, 40), np.uint8))
    write_tiff(image_dir / "BV2_Phase_B4_1_00d00h00m_2.tif", np.zeros((30, 40), np.uint8))
    square = [10.0, 5.0, 20.0, 5.0, 20.0, 15.0, 10.0, 15.0]
    raw = {
        "images": [
            {"id": 7, "file_name": "A172_Phase_A7_1_00d00h00m_1.tif", "height": 30, "width": 40},
            {"id": 9, "file_name": "BV2_Phase_B4_1_00d00h00m_2.tif", "height": 30, "width": 40},
        ],
        # some LIVECell releases key annotations by id
        "annotations": {
            "1": {"id": 1, "image_id": 7, "segmentation": [square], "category_id": 1},
            "2": {"id": 2, "image_id": 9, "segmentation": [[1.0, 1.0, 2.0, 2.0]], "category_id": 1},
            "3": {
                "id": 3,
                "image_id": 9,
                "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]],
                "category_id": 1,
            },
        },
        "categories": [{"id": 1, "name": "cell"}],
    }
    path = tmp_path / "livecell.json"
    path.write_text(json.dumps(raw))
    result = coco.read_livecell(path, image_dir, tmp_path)
    assert [c["name"] for c in result["categories"]] == ["A172", "BV2"]
    assert result["images"][0]["file_name"] == (
        "LIVECell_dataset_2021/images/livecell_train_val_images/A172/A172_Phase_A7_1_00d00h00m_1.tif"
    )
    assert [a["image_id"] for a in result["annotations"]] == [1, 2]  # degenerate polygon dropped
    expected = mask_utils.decode(mask_utils.frPyObjects([square], 30, 40))[..., 0]
    out = tmp_path / "out.json"
    out.write_text(json.dumps(result))
    api = COCO(str(out))
    np.testing.assert_array_equal(api.annToMask(api.anns[1]), expected)
    assert api.anns[1]["area"] == expected.sum()


def test_label_images_glas_layout(tmp_path):
    folder = tmp_path / "glas"
    labels = np.zeros((12, 15), np.uint16)
    labels[1:4, 1:5] = 3
    labels[6:11, 8:14] = 300
    write_png(folder / "train_1.png", np.zeros((12, 15, 3), np.uint8))
    write_png(folder / "train_1_anno.png", labels)
    result = coco.label_images_to_coco(folder, folder, tmp_path)
    assert [im["file_name"] for im in result["images"]] == ["glas/train_1.png"]
    masks = [
        mask_utils.decode({**a["segmentation"], "counts": a["segmentation"]["counts"].encode()})
        for a in result["annotations"]
    ]
    np.testing.assert_array_equal(masks[0], labels == 3)
    np.testing.assert_array_equal(masks[1], labels == 300)


def test_label_images_errors(tmp_path):
    (tmp_path / "labels").mkdir()
    write_png(tmp_path / "images" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(CellpipeError, match="no label image for"):
        coco.label_images_to_coco(tmp_path / "images", tmp_path / "labels", tmp_path)
    write_png(tmp_path / "labels" / "a.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(CellpipeError, match="label image is 5x4 but a.png is 4x4"):
        coco.label_images_to_coco(tmp_path / "images", tmp_path / "labels", tmp_path)
    with pytest.raises(CellpipeError, match="missing folder"):
        coco.label_images_to_coco(tmp_path / "nope", tmp_path / "labels", tmp_path)


def test_instance_masks_dsb_layout(tmp_path):
    sample = tmp_path / "stage1_train" / "abc"
    write_png(sample / "images" / "abc.png", np.zeros((6, 8, 4), np.uint8))
    first = np.zeros((6, 8), np.uint8)
    first[0:2, 0:3] = 255
    second = np.zeros((6, 8), np.uint8)
    second[5, 7] = 255
    write_png(sample / "masks" / "m1.png", first)
    write_png(sample / "masks" / "m2.png", second)
    result = coco.instance_masks_to_coco(tmp_path / "stage1_train", tmp_path)
    assert result["images"][0]["file_name"] == "stage1_train/abc/images/abc.png"
    assert [a["area"] for a in result["annotations"]] == [6, 1]
    write_png(sample / "masks" / "m3.png", np.zeros((3, 3), np.uint8))
    with pytest.raises(CellpipeError, match="mask is 3x3 but the image is 6x8"):
        coco.instance_masks_to_coco(tmp_path / "stage1_train", tmp_path)
    with pytest.raises(CellpipeError, match="no <id>/images"):
        coco.instance_masks_to_coco(sample / "masks", tmp_path)


def test_images_with_hundreds_of_instances():
    """pycocotools' area() breaks on 256+ RLEs at once: conversion must not."""
    labels = np.arange(1, 21 * 21 + 1).reshape(21, 21)
    texts = list(rle.encode_labels(labels).values())
    df = pd.DataFrame({"id": "dense", "annotation": texts, "width": 21, "height": 21})
    result = coco.csv_to_coco(df)
    assert len(result["annotations"]) == 441
    assert all(a["area"] == 1 for a in result["annotations"])
