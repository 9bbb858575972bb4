"""Fold split: grouped by sample, stratified by class, deterministic."""

import numpy as np
import pandas as pd
import pytest

from pipeline.core.errors import CellpipeError
from pipeline.core.splits import assign_folds, coco_folds, fold_table


def image_table(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for cell_type, n_samples in (("shsy5y", 9), ("astro", 7), ("cort", 11)):
        for s in range(n_samples):
            for k in range(int(rng.integers(2, 6))):
                rows.append(
                    {
                        "id": f"{cell_type}{s}_{k}",
                        "cell_type": cell_type,
                        "sample_id": f"{cell_type}-s{s}",
                        "instances": int(rng.integers(1, 50)),
                    }
                )
    return pd.DataFrame(rows)


def test_groups_stay_together_and_classes_spread():
    images = image_table()
    folds = assign_folds(images, 5, 42, "cell_type", "sample_id")
    assert set(folds) == set(range(5))
    assert (images.assign(fold=folds).groupby("sample_id")["fold"].nunique() == 1).all()
    per_class = images.assign(fold=folds).groupby("cell_type")["fold"].nunique()
    assert (per_class == 5).all()  # every class appears in every fold


def test_deterministic_by_seed():
    images = image_table()
    a = assign_folds(images, 5, 1, "cell_type", "sample_id")
    b = assign_folds(images, 5, 1, "cell_type", "sample_id")
    c = assign_folds(images, 5, 2, "cell_type", "sample_id")
    pd.testing.assert_series_equal(a, b)
    assert not a.equals(c)


def test_bad_requests_are_one_line_errors():
    images = image_table()
    with pytest.raises(CellpipeError, match="cannot split 27 sample_id groups into 28 folds"):
        assign_folds(images, 28, 0, "cell_type", "sample_id")
    with pytest.raises(CellpipeError, match="no column 'plate'"):
        assign_folds(images, 3, 0, "plate", "sample_id")


def test_fold_table_totals():
    images = image_table()
    table = fold_table(
        images.assign(fold=assign_folds(images, 3, 0, "cell_type", "sample_id")), "cell_type"
    )
    assert table.loc["total", ("images", "astro")] == (images["cell_type"] == "astro").sum()
    assert table.loc["total", "instances"].sum() == images["instances"].sum()


def test_coco_without_metadata_is_one_class_and_each_image_its_own_group():
    coco = {
        "images": [{"id": 7 + k, "file_name": f"train/im{k}.png"} for k in range(4)],
        "annotations": [{"image_id": 7}] * 3 + [{"image_id": 9}],
    }
    table = coco_folds(coco, 2, 0, "cell_type", "sample_id")
    assert list(table.columns) == ["id", "fold", "cell_type", "sample_id", "instances"]
    assert table["id"].tolist() == ["im0", "im1", "im2", "im3"]
    assert table["sample_id"].tolist() == table["id"].tolist()
    assert set(table["cell_type"]) == {"cell"}
    assert table["instances"].tolist() == [3, 0, 1, 0]
    assert sorted(table["fold"].value_counts().tolist()) == [2, 2]
