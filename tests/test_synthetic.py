"""The embedded synthetic dataset: the competition's layout, valid data, the classes' character."""

import hashlib

import numpy as np
import pandas as pd
import pytest
from pycocotools.coco import COCO

from pipeline.config import SyntheticConfig
from pipeline.core import rle
from pipeline.core.coco import read_kaggle_csv
from pipeline.core.fileio import image_shape, read_image
from pipeline.core.synthetic import write_dataset

COLUMNS = [
    "id",
    "annotation",
    "width",
    "height",
    "cell_type",
    "plate_time",
    "sample_date",
    "sample_id",
    "elapsed_timedelta",
]
CONFIG = SyntheticConfig(
    train_images_per_type=2,
    samples_per_type=2,
    test_images=2,
    semi_supervised_images=2,
    livecell_train_images=2,
    livecell_val_images=1,
    livecell_test_images=1,
    height=260,
    width=352,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic")
    write_dataset(path, CONFIG, progress=False)
    return path


def test_layout(root):
    names = {p.name for p in root.iterdir()}
    assert names >= {
        "train",
        "test",
        "train.csv",
        "sample_submission.csv",
        "train_semi_supervised",
        "LIVECell_dataset_2021",
    }
    train = pd.read_csv(root / "train.csv")
    assert train.columns.tolist() == COLUMNS
    assert train["id"].str.fullmatch(r"[0-9a-f]{12}").all()
    assert len(list((root / "train").glob("*.png"))) == train["id"].nunique() == 6
    sample = pd.read_csv(root / "sample_submission.csv")
    assert sample.columns.tolist() == ["id", "predicted"]
    assert sorted(sample["id"]) == sorted(p.stem for p in (root / "test").glob("*.png"))
    assert len(list((root / "train_semi_supervised").glob("*.png"))) == 2
    for split in ("train", "val", "test"):
        assert (
            root / "LIVECell_dataset_2021/annotations/LIVECell" / f"livecell_coco_{split}.json"
        ).is_file()


def test_every_mask_is_valid_and_inside(root):
    train = read_kaggle_csv(root / "train.csv")
    assert train["id"].nunique() == 6
    for image_id, rows in train.groupby("id"):
        shape = (int(rows["height"].iloc[0]), int(rows["width"].iloc[0]))
        assert image_shape(root / "train" / f"{image_id}.png") == shape == (260, 352)
        stack = rle.decode_stack(rows["annotation"].tolist(), shape)
        assert stack.reshape(len(stack), -1).any(axis=1).all()  # no empty mask
        assert rows["sample_id"].nunique() == 1 and rows["cell_type"].nunique() == 1


def test_class_character(root):
    train = read_kaggle_csv(root / "train.csv")
    train["area"] = [sum(map(int, t.split()[1::2])) for t in train["annotation"]]
    per_image = train.groupby(["cell_type", "id"]).size().groupby("cell_type").mean()
    assert per_image["shsy5y"] > per_image["cort"]  # shsy5y the densest
    mean_area = train.groupby("cell_type")["area"].mean()
    assert mean_area.idxmax() == "astro"  # astro the largest


def test_some_ground_truth_masks_overlap(root):
    train = read_kaggle_csv(root / "train.csv")
    overlapping = 0
    for _, rows in train.groupby("id"):
        stack = rle.decode_stack(rows["annotation"].tolist(), (260, 352))
        overlapping += int((stack.sum(axis=0) > 1).any())
    assert overlapping > 0


def test_images_look_like_phase_contrast(root):
    paths = sorted((root / "train").glob("*.png"))[:3]
    assert len(paths) == 3
    for path in paths:
        image = read_image(path)
        assert image.dtype == np.uint8 and image.ndim == 2
        assert 60 < image.mean() < 200 and image.std() > 3  # mid-grey, textured


def test_livecell_polygons_rasterise(root):
    api = COCO(str(root / "LIVECell_dataset_2021/annotations/LIVECell/livecell_coco_train.json"))
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == ["cell"]
    assert len(api.imgs) == 2 and api.anns
    for ann in list(api.anns.values())[:50]:
        mask = api.annToMask(ann)
        assert mask.sum() > 0 and abs(int(mask.sum()) - ann["area"]) <= 0.5 * ann["area"] + 10
    for image in api.imgs.values():
        folder = "livecell_train_val_images"
        assert image_shape(root / "LIVECell_dataset_2021/images" / folder / image["file_name"]) == (
            image["height"],
            image["width"],
        )


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_deterministic_by_seed(root, tmp_path):
    write_dataset(tmp_path / "again", CONFIG, progress=False)
    assert digest(tmp_path / "again") == digest(root)
    write_dataset(tmp_path / "other", CONFIG.model_copy(update={"seed": 1}), progress=False)
    assert digest(tmp_path / "other") != digest(root)
